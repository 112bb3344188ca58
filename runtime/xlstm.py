"""xLSTM's matrix-memory cell, mLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory";
the layer of xLSTM-7B, laid out as Hugging Face's xLSTMLayer). Per head a (key_dim x value_dim)
memory C, a normaliser n (key_dim) and the max-state m that keeps the exponential input gate
finite:

    m_t = max(log σ(f_t) + m_{t-1}, i_t)
    C_t = exp(log σ(f_t) + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t v_t^T
    n_t = exp(log σ(f_t) + m_{t-1} - m_t) n_{t-1} + exp(i_t - m_t) k_t
    h_t = C_t^T q̃_t / (max(|n_t · q̃_t|, exp(-m_t)) + eps),    q̃_t = q_t / sqrt(key_dim)

from C = 0, n = 0, m = 0. C and n are stored scaled by exp(-m), so m cancels in h except in the
lower bound exp(-m_t) of the denominator, which is why m belongs to the state. Long inputs run
the chunked form (`mlstm_chunked`), single tokens the recurrent step (`mlstm_recurrent`); both
compute the same m_t (the running maximum of the log-gates), hence the same function, and leave
the same cache entry (C, n, m in float32), so a cached decode equals the full forward.

Cost per token and head (FLOPs, multiply-add = 2), recurrent step: 5·dk·dv for C (decay, write,
read) and 5·dk for n. State bytes per sequence: heads · (dk·dv + dk + 1) · 4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlang.spec.errors import ArchError

from .context import Context

FORMS = ("auto", "chunked", "recurrent")

# The input gate's log of a padding token: it writes nothing (exp underflows to 0) and, being
# finite, never makes the max-state's differences NaN.
_NO_WRITE = -1e30


def _acc(v: torch.Tensor) -> torch.dtype:
    """The state's dtype: float32 at least (float64 inputs stay float64, for tests of the forms)."""
    return torch.promote_types(v.dtype, torch.float32)


def _initial(q: torch.Tensor, v: torch.Tensor, state) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C, n, m) in the accumulation dtype: the given state, or zeros (m = 0 too, as xLSTM starts)."""
    acc = _acc(v)
    if state is not None:
        return tuple(s.to(acc) for s in state)
    bsz, heads, _, dk = q.shape
    dv = v.shape[-1]
    return (q.new_zeros(bsz, heads, dk, dv, dtype=acc), q.new_zeros(bsz, heads, dk, dtype=acc),
            q.new_zeros(bsz, heads, dtype=acc))


def mlstm_recurrent(q, k, v, i, f, state=None, eps: float = 1e-6):
    """The mLSTM one token at a time. q, k (B, H, T, dk); v (B, H, T, dv); i, f (B, H, T) the gates'
    pre-activations (f before its log-sigmoid); state (C (B, H, dk, dv), n (B, H, dk), m (B, H)) or
    None for zeros. Returns (h (B, H, T, dv) in v's dtype, the final state in float32 at least)."""
    acc = _acc(v)
    c, n, m = _initial(q, v, state)
    scale = q.shape[-1] ** -0.5
    log_f = F.logsigmoid(f.to(acc))
    i = i.to(acc)
    outs = []
    for t in range(q.shape[2]):
        q_t, k_t, v_t = q[:, :, t].to(acc) * scale, k[:, :, t].to(acc), v[:, :, t].to(acc)
        m_new = torch.maximum(log_f[:, :, t] + m, i[:, :, t])  # (B, H)
        decay = torch.exp(log_f[:, :, t] + m - m_new)[..., None]
        write = torch.exp(i[:, :, t] - m_new)[..., None]
        c = decay[..., None] * c + write[..., None] * (k_t[..., :, None] * v_t[..., None, :])  # (B, H, dk, dv)
        n = decay * n + write * k_t  # (B, H, dk)
        m = m_new
        num = (q_t[..., None, :] @ c).squeeze(-2)  # (B, H, dv)
        den = torch.maximum((q_t * n).sum(-1, keepdim=True).abs(), torch.exp(-m)[..., None]) + eps
        outs.append(num / den)
    h = torch.stack(outs, dim=2) if outs else v.new_zeros(v.shape)
    return h.to(v.dtype), (c, n, m)


def mlstm_chunked(q, k, v, i, f, state=None, eps: float = 1e-6, chunk: int = 64):
    """The same function as `mlstm_recurrent`, `chunk` tokens at a time (the training and prefill
    form; the last chunk may be shorter). Within a chunk, with b_t the cumulative log σ(f) from the
    chunk's start, token t reads token s ≤ t with log-weight b_t - b_s + i_s and the carried state
    with b_t + m_prev; m_t is the maximum of these, which is exactly the recurrent max-state, so
    every exponent is ≤ 0 and the denominator's bound exp(-m_t) is the recurrent one."""
    bsz, heads, t, dk = q.shape
    acc = _acc(v)
    c, n, m = _initial(q, v, state)
    scale = dk ** -0.5
    log_f = F.logsigmoid(f.to(acc))
    i = i.to(acc)
    outs = []
    for start in range(0, t, chunk):
        end = min(start + chunk, t)
        length = end - start
        q_c = q[:, :, start:end].to(acc) * scale  # (B, H, L, dk)
        k_c, v_c = k[:, :, start:end].to(acc), v[:, :, start:end].to(acc)
        b = log_f[:, :, start:end].cumsum(-1)  # (B, H, L)
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        log_d = (b[..., :, None] - b[..., None, :] + i[:, :, None, start:end]).masked_fill(~causal, float("-inf"))
        from_state = b + m[..., None]  # (B, H, L)
        m_t = torch.maximum(from_state, log_d.amax(-1))  # (B, H, L)
        weights = (q_c @ k_c.transpose(-1, -2)) * torch.exp(log_d - m_t[..., None])  # (B, H, L, L)
        q_state = q_c * torch.exp(from_state - m_t)[..., None]  # reads the carried state
        num = q_state @ c + weights @ v_c  # (B, H, L, dv)
        den = (q_state @ n[..., None]).squeeze(-1) + weights.sum(-1)  # (B, H, L)
        den = torch.maximum(den.abs(), torch.exp(-m_t)) + eps
        outs.append(num / den[..., None])
        m_end = m_t[..., -1]  # the state's max at the chunk's last token
        carry = torch.exp(b[..., -1] + m - m_end)  # (B, H)
        k_end = k_c * torch.exp(b[..., -1:] - b + i[:, :, start:end] - m_end[..., None])[..., None]
        c = carry[..., None, None] * c + k_end.transpose(-1, -2) @ v_c
        n = carry[..., None] * n + k_end.sum(-2)
        m = m_end
    h = torch.cat(outs, dim=2) if outs else v.new_zeros(v.shape)
    return h.to(v.dtype), (c, n, m)


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, n, -1).transpose(1, 2)  # (B, n, T, d)


class MLSTMLayer(nn.Module):
    """The mLSTM layer of xLSTM-7B (Hugging Face's xLSTMLayer), x (B, T, d_model) → (B, T, d_model):

    q_proj, k_proj (heads · key_dim), v_proj and the output gate ogate_proj (heads · value_dim);
    per head an input gate igate_proj and a forget gate fgate_proj (with biases), each soft-capped,
    gate_softcap · tanh(x / gate_softcap) (none: uncapped); the mLSTM cell; a LayerNorm over each
    head's value_dim channels (no affine of its own, in float32, `norm_eps`) then one weight over all
    heads · value_dim channels (norm_weight); × sigmoid(ogate); out_proj. No biases but the gates'.

    `denominator_eps` is the cell's eps (h = num / (max(|n·q|, exp(-m)) + eps)). `chunk` is the
    chunked form's length: the same function at any value. `form` forces the chunked or the
    recurrent form (tests compare them).

    With `ctx.attention_mask`, a padding token neither decays nor writes the state (its forget
    gate is 1, its input gate 0): a left-padded row computes what it computes alone."""
    left_padding_exact = True  # a padded token neither decays nor writes the memory

    def __init__(self, d_model: int, heads: int, key_dim: int, value_dim: int, *, gate_softcap: float | None = 15.0,
                 norm_eps: float = 1e-6, denominator_eps: float = 1e-6, chunk: int = 64, form: str = "auto",
                 cache_key: str = ""):
        super().__init__()
        if form not in FORMS:
            raise ArchError(f"form must be one of {FORMS}, not {form!r}")
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.gate_softcap, self.norm_eps, self.denominator_eps = gate_softcap, norm_eps, denominator_eps
        self.chunk, self.form, self.cache_key = chunk, form, cache_key
        keys, values = heads * key_dim, heads * value_dim
        self.q_proj = nn.Parameter(torch.empty(keys, d_model))
        self.k_proj = nn.Parameter(torch.empty(keys, d_model))
        self.v_proj = nn.Parameter(torch.empty(values, d_model))
        self.ogate_proj = nn.Parameter(torch.empty(values, d_model))
        self.igate_proj = nn.Parameter(torch.zeros(heads, d_model))
        self.igate_bias = nn.Parameter(torch.full((heads,), -10.0))  # xLSTM's initialisation: write little at first
        self.fgate_proj = nn.Parameter(torch.zeros(heads, d_model))
        self.fgate_bias = nn.Parameter(torch.linspace(3.0, 6.0, heads))  # and forget slowly
        self.norm_weight = nn.Parameter(torch.ones(values))
        self.out_proj = nn.Parameter(torch.empty(d_model, values))
        for p in (self.q_proj, self.k_proj, self.v_proj, self.ogate_proj, self.out_proj):
            nn.init.normal_(p, std=0.02)

    def state_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Cache bytes per sequence: heads · (key_dim · value_dim + key_dim + 1) · 4 (float32)."""
        return self.heads * (self.key_dim * self.value_dim + self.key_dim + 1) * 4

    def _gate(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        g = F.linear(x, weight, bias)  # (B, T, H)
        if self.gate_softcap is not None:
            g = self.gate_softcap * torch.tanh(g / self.gate_softcap)
        return g.transpose(1, 2)  # (B, H, T)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        bsz, t, _ = x.shape
        q, k = _heads(F.linear(x, self.q_proj), self.heads), _heads(F.linear(x, self.k_proj), self.heads)  # (B, H, T, dk)
        v = _heads(F.linear(x, self.v_proj), self.heads)  # (B, H, T, dv)
        o = F.linear(x, self.ogate_proj)  # (B, T, H·dv)
        i = self._gate(x, self.igate_proj, self.igate_bias)  # (B, H, T)
        f = self._gate(x, self.fgate_proj, self.fgate_bias)
        if ctx is not None and ctx.attention_mask is not None:  # padding: forget gate 1, input gate 0
            pad = ctx.attention_mask[:, None, -t:] == 0  # (B, 1, T)
            i = i.float().masked_fill(pad, _NO_WRITE)
            f = f.float().masked_fill(pad, float("inf"))  # log σ(inf) = 0: no decay
        cache = ctx.cache if ctx is not None else None
        past = cache.get(self.cache_key) if cache is not None else None
        state = (past["C"], past["n"], past["m"]) if past is not None else None
        if self.form == "recurrent" or (self.form == "auto" and t == 1):
            h, (c, n, m) = mlstm_recurrent(q, k, v, i, f, state, self.denominator_eps)
        else:
            h, (c, n, m) = mlstm_chunked(q, k, v, i, f, state, self.denominator_eps, chunk=self.chunk)
        if cache is not None:
            cache.put(self.cache_key, C=c, n=n, m=m)
        h = h.transpose(1, 2).float()  # (B, T, H, dv)
        h = F.layer_norm(h, (self.value_dim,), eps=self.norm_eps).to(x.dtype).reshape(bsz, t, -1)  # per head
        h = h * self.norm_weight * torch.sigmoid(o)  # (B, T, H·dv)
        return F.linear(h, self.out_proj)  # (B, T, C)


# ----------------------------------------------------------------------------- sLSTM


def slstm_recurrent(pre, recurrent, bias, heads: int, state=None):
    """The sLSTM cell one token at a time (Beck et al. 2024, eqs. 8-17; the recurrence is its only
    form: h_{t-1} enters every gate, so no parallel or chunked form exists).

    pre (B, T, 4, D): the gates' input terms [i, f, z, o] (W x_t); recurrent (4, heads, dh, dh): the
    block-diagonal recurrent weights, gate g of head j reading h_{t-1}[j] as h @ recurrent[g, j];
    bias (4, D); state (c, n, m, h) each (B, D), or None for zeros. Per channel:

        ĩ, f̃, z̃, õ = pre_t + R h_{t-1} + b
        m_t = max(log σ(f̃) + m_{t-1}, ĩ)                      (the stabiliser)
        c_t = e^(log σ(f̃) + m_{t-1} - m_t) c_{t-1} + e^(ĩ - m_t) tanh(z̃)
        n_t = e^(log σ(f̃) + m_{t-1} - m_t) n_{t-1} + e^(ĩ - m_t)
        h_t = σ(õ) c_t / n_t

    m scales c and n alike, so h does not depend on it. Returns (h (B, T, D) in pre's dtype, the
    final state in float32 at least)."""
    bsz, t, _, d = pre.shape
    acc = torch.promote_types(pre.dtype, torch.float32)
    dh = d // heads
    if state is None:
        c, n, m, h = (pre.new_zeros(bsz, d, dtype=acc) for _ in range(4))
    else:
        c, n, m, h = (s.to(acc) for s in state)
    r, b = recurrent.to(acc), bias.to(acc)
    outs = []
    for s in range(t):
        rec = torch.einsum("bjd,gjde->bgje", h.view(bsz, heads, dh), r).reshape(bsz, 4, d)  # (B, 4, D)
        i, f, z, o = (pre[:, s].to(acc) + rec + b).unbind(1)  # (B, D) each
        log_f = F.logsigmoid(f) + m
        m_new = torch.maximum(log_f, i)
        f_act, i_act = torch.exp(log_f - m_new), torch.exp(i - m_new)
        c = f_act * c + i_act * torch.tanh(z)
        n = f_act * n + i_act
        m = m_new
        h = torch.sigmoid(o) * c / n
        outs.append(h)
    y = torch.stack(outs, dim=1) if outs else pre.new_zeros(bsz, 0, d, dtype=acc)
    return y.to(pre.dtype), (c, n, m, h)


class SLSTMLayer(nn.Module):
    """xLSTM's sLSTM layer (Beck et al. 2024, the scalar-memory cell with exponential gating and
    block-diagonal recurrent weights), x (B, T, d_model) → (B, T, d_model), laid out as the xlstm
    package's sLSTMLayer: a causal depthwise conv of `conv_size` taps (with a bias; 0: none) and
    swish feeds the input and forget gates, x itself the cell input z and the output gate; the
    gates' input weights in_proj (4 · d_model, d_model) rows [i; f; z; o] (the paper's W, dense),
    recurrent (4, heads, d_model / heads, d_model / heads) (R, one block per head and gate), bias
    (4 · d_model); the cell (`slstm_recurrent`); a LayerNorm per head (in float32, `norm_eps`, no
    affine of its own) then one weight over d_model (norm_weight).

    The cell is recurrent only (h_{t-1} enters every gate): prefill and decoding both run it token
    by token. The cache holds c, n, m and h per channel in float32 and the conv window, so a cached
    decode equals the full forward. A padding token leaves the state as it was and enters the conv
    as zero."""
    left_padding_exact = True  # a padded token leaves the state as it was

    def __init__(self, d_model: int, heads: int, *, conv_size: int = 4, norm_eps: float = 1e-6, cache_key: str = ""):
        super().__init__()
        if d_model % heads:
            raise ArchError(f"slstm: heads ({heads}) must divide d_model ({d_model})")
        self.d_model, self.heads, self.conv_size = d_model, heads, conv_size
        self.norm_eps, self.cache_key = norm_eps, cache_key
        dh = d_model // heads
        if conv_size:
            self.conv_weight = nn.Parameter(torch.empty(d_model, 1, conv_size))
            self.conv_bias = nn.Parameter(torch.zeros(d_model))
            nn.init.kaiming_uniform_(self.conv_weight, a=5 ** 0.5)  # nn.Conv1d's default
        else:
            self.conv_weight = self.conv_bias = None
        self.in_proj = nn.Parameter(torch.empty(4 * d_model, d_model))
        self.recurrent = nn.Parameter(torch.zeros(4, heads, dh, dh))
        self.bias = nn.Parameter(torch.zeros(4 * d_model))
        self.norm_weight = nn.Parameter(torch.ones(d_model))
        nn.init.normal_(self.in_proj, std=0.02)

    def state_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Cache bytes per sequence: 4 · d_model · 4 (c, n, m, h in float32) plus the conv window
        (conv_size - 1) · d_model · itemsize."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 16 * self.d_model + max(self.conv_size - 1, 0) * self.d_model * itemsize

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        bsz, t, d = x.shape
        cache = ctx.cache if ctx is not None else None
        past = cache.get(self.cache_key) if cache is not None else None
        real = ctx.attention_mask[:, -t:].to(x.dtype) if ctx is not None and ctx.attention_mask is not None else None
        entry = {}
        gate_in = x
        if self.conv_size:
            u = (x if real is None else x * real[..., None]).transpose(1, 2)  # (B, D, T); padding enters as zero
            window = F.pad(u, (self.conv_size - 1, 0)) if past is None else torch.cat((past["conv"], u), dim=2)
            gate_in = F.silu(F.conv1d(window, self.conv_weight, self.conv_bias, groups=d)).transpose(1, 2)
            entry["conv"] = window[:, :, window.shape[2] - (self.conv_size - 1):]
        w_if, w_zo = self.in_proj.split(2 * d, dim=0)
        pre = torch.cat((F.linear(gate_in, w_if), F.linear(x, w_zo)), dim=-1).view(bsz, t, 4, d)  # (B, T, 4, D)
        state = (past["c"], past["n"], past["m"], past["h"]) if past is not None else None
        if real is None:
            y, (c, n, m, h) = slstm_recurrent(pre, self.recurrent, self.bias.view(4, d), self.heads, state)
        else:  # token by token: a padding token keeps the state it found
            if state is None:
                state = tuple(x.new_zeros(bsz, d, dtype=torch.promote_types(x.dtype, torch.float32)) for _ in range(4))
            outs = []
            for s in range(t):
                y_s, new = slstm_recurrent(pre[:, s:s + 1], self.recurrent, self.bias.view(4, d), self.heads, state)
                keep = real[:, s, None] > 0  # (B, 1)
                state = tuple(torch.where(keep, a, b) for a, b in zip(new, state))
                outs.append(y_s)
            y, (c, n, m, h) = torch.cat(outs, dim=1), state
        if cache is not None:
            cache.put(self.cache_key, c=c, n=n, m=m, h=h, **entry)
        y = F.layer_norm(y.float().view(bsz, t, self.heads, -1), (d // self.heads,), eps=self.norm_eps)  # per head
        return y.reshape(bsz, t, d).to(x.dtype) * self.norm_weight  # (B, T, D)
