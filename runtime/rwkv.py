"""RWKV's mixers, as generated code builds them. RWKV-4's time mixing and RWKV's channel mixing
(Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era"; laid out as Hugging Face's
RwkvSelfAttention and RwkvFeedForward, one parameter per HF tensor); RWKV-7's time mixing and
channel mixing (Peng et al. 2025; laid out as flash-linear-attention's RWKV7Attention and
RWKV7FeedForward) around the generalised delta rule core of runtime/gated_linear.py. All read the
previous token's input (the token shift); the cache keeps it, and each recurrence's state, so a
cached decode equals the full forward.

RWKV-4's WKV recurrence runs in the numerically stable form of the reference implementation (and
of Hugging Face's CPU path): numerator and denominator are kept scaled by e^{-m} with m their
running maximum exponent, so no exponential overflows, token by token. `wkv4_chunked` is the same
function a chunk at a time (one log-sum-exp per output within a chunk, a loop over chunks), which
the time mixing runs for prefill on GPUs; both are differentiated by autograd."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlang.spec.errors import ArchError

from .context import Context
from .gated_linear import RWKV7

# The running maximum's value before the first token: e^{m} is 0 in float32 and m + w stays finite.
_EMPTY_MAX = -1e38


def _empty_state(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The WKV state before the first token: no numerator, no denominator, an empty maximum."""
    zeros = k.new_zeros(k.shape[0], k.shape[2], dtype=torch.float32)
    return zeros, zeros, torch.full_like(zeros, _EMPTY_MAX)


def wkv4(time_decay: torch.Tensor, time_first: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
         mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The WKV recurrence over k, v (B, T, C) with decay w = -exp(time_decay) and bonus u = time_first (C,):

        wkv_t = (a_{t-1} + e^{u + k_t} v_t) / (b_{t-1} + e^{u + k_t}),
        a_t = e^{w} a_{t-1} + e^{k_t} v_t,  b_t = e^{w} b_{t-1} + e^{k_t},

    with a, b held as (num, den) · e^{max}. `state` (num, den, max), each (B, C) float32, continues a
    sequence; `mask` (B, T) bool marks real tokens: a padding token leaves the state as it is and
    reads 0. Returns wkv (B, T, C) in k's dtype and the new state."""
    b, t, c = k.shape
    num, den, top = state if state is not None else _empty_state(k)
    w = -torch.exp(time_decay.float())  # (C,)
    u = time_first.float()
    outputs = []
    for i in range(t):
        kt, vt = k[:, i].float(), v[:, i].float()
        m = torch.maximum(top, kt + u)  # the output's common exponent
        e1, e2 = torch.exp(top - m), torch.exp(kt + u - m)
        out = (e1 * num + e2 * vt) / (e1 * den + e2)  # (B, C)
        m_next = torch.maximum(top + w, kt)  # the state's
        e1, e2 = torch.exp(top + w - m_next), torch.exp(kt - m_next)
        new = (e1 * num + e2 * vt, e1 * den + e2, m_next)
        if mask is not None:
            keep = mask[:, i, None]
            out = torch.where(keep, out, torch.zeros_like(out))
            new = tuple(torch.where(keep, n, o) for n, o in zip(new, (num, den, top)))
        num, den, top = new
        outputs.append(out)
    return torch.stack(outputs, dim=1).to(k.dtype), (num, den, top)


def wkv4_chunked(time_decay: torch.Tensor, time_first: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 chunk: int = 16) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`wkv4`, `chunk` tokens at a time (no padding mask). Within a chunk, output j sums the carried
    state decayed j times, tokens i < j decayed j - 1 - i times and token j with the bonus: every
    term is e^{exponent} times v (or 1), so each output takes one maximum over its exponents (a
    log-sum-exp) instead of a running one; the chunk's end state likewise. The same function as the
    recurrence up to rounding, with a loop over chunks instead of tokens."""
    b, t, c = k.shape
    num, den, top = state if state is not None else _empty_state(k)
    w = -torch.exp(time_decay.float())  # (C,)
    u = time_first.float()
    outputs = []
    for start in range(0, t, chunk):
        kc, vc = k[:, start:start + chunk].float(), v[:, start:start + chunk].float()  # (B, L, C)
        n = kc.shape[1]
        steps = torch.arange(n, device=k.device, dtype=torch.float32)
        gap = (steps[:, None] - 1 - steps[None, :])[None, :, :, None] * w  # (1, L, L, C): (j - 1 - i) · w
        pairs = gap + kc[:, None]  # (B, L, L, C): token i as output j sees it
        diagonal = torch.eye(n, dtype=torch.bool, device=k.device)[None, :, :, None]
        before = torch.ones(n, n, dtype=torch.bool, device=k.device).tril(-1)[None, :, :, None]
        pairs = torch.where(diagonal, (u + kc)[:, None], torch.where(before, pairs, float("-inf")))
        carried = top[:, None] + steps[None, :, None] * w  # (B, L, C): the state decayed j times
        m = torch.maximum(pairs.amax(2), carried)
        weights, old = torch.exp(pairs - m[:, :, None]), torch.exp(carried - m)
        outputs.append(((weights * vc[:, None]).sum(2) + old * num[:, None]) / (weights.sum(2) + old * den[:, None]))
        ends = (n - 1 - steps)[None, :, None] * w + kc  # (B, L, C): token i decayed to the chunk's last token
        carried_end = top + n * w
        m_end = torch.maximum(ends.amax(1), carried_end)
        weights, old = torch.exp(ends - m_end[:, None]), torch.exp(carried_end - m_end)
        num, den, top = (weights * vc).sum(1) + old * num, weights.sum(1) + old * den, m_end
    return torch.cat(outputs, dim=1).to(k.dtype), (num, den, top)


def _shifted(x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """Each token's predecessor's input (B, T, C): `previous` (B, C) before the first, else zeros."""
    first = previous[:, None].to(x.dtype) if previous is not None else torch.zeros_like(x[:, :1])
    return torch.cat((first, x[:, :-1]), dim=1)


def _real_tokens(ctx: Context | None, t: int) -> torch.Tensor | None:
    """(B, T) True for the real tokens of this forward, or None when there is no padding mask."""
    if ctx is None or ctx.attention_mask is None:
        return None
    return ctx.attention_mask[:, -t:].bool()


def _lerp(x: torch.Tensor, shifted: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """x · μ + x' · (1 - μ), written as Hugging Face writes it (the same rounding)."""
    return x * mix + shifted * (1 - mix)


def _past(ctx: Context | None, key: str) -> dict | None:
    return ctx.cache.get(key) if ctx is not None and ctx.cache is not None else None


def _token_shift(x: torch.Tensor, ctx: Context | None, past: dict | None):
    """(x, x', real tokens): the padded tokens zeroed first (a left-padded row's first real token
    then sees zeros, as at a sequence's start), x' each token's predecessor's input."""
    real = _real_tokens(ctx, x.shape[1])
    if real is not None:
        x = x.masked_fill(~real[..., None], 0)
    return x, _shifted(x, past["shift"] if past else None), real


def _keep_shift(ctx: Context | None, key: str, x: torch.Tensor, shifted: torch.Tensor, real, **state) -> None:
    """Cache the last real input of this forward (and the mixer's other state) under `key`."""
    if ctx is None or ctx.cache is None:
        return
    last = x[:, -1] if real is None else torch.where(real[:, -1:], x[:, -1], shifted[:, -1])
    ctx.cache.put(key, shift=last, **state)


class _TokenShift(nn.Module):
    """What RWKV-4's two mixers share: the cache key of their token shift."""
    left_padding_exact = True  # padded tokens neither shift into the first real token nor enter the state

    def __init__(self, cache_key: str):
        super().__init__()
        self.cache_key = cache_key

    def _shift(self, x: torch.Tensor, ctx: Context | None, past: dict | None):
        return _token_shift(x, ctx, past)

    def _past(self, ctx: Context | None) -> dict | None:
        return _past(ctx, self.cache_key)


class RWKV4TimeMix(_TokenShift):
    """x (B, T, d_model) → (B, T, d_model): k, v, r = key, value, receptance of lerp(x', x, μ_k / μ_v /
    μ_r) (d_model → dim, no biases); output(sigmoid(r) ⊙ wkv4(k, v)).

    Parameters, Hugging Face's names (its time_mix_* are (1, 1, d_model)): time_decay, time_first (dim,),
    time_mix_key, time_mix_value, time_mix_receptance (d_model,), key, value, receptance (dim, d_model),
    output (d_model, dim). Cache per sequence: the last input (d_model, the input's dtype) and the
    WKV numerator, denominator and maximum (3 · dim, float32)."""

    def __init__(self, d_model: int, dim: int, *, chunk: int = 16, form: str = "auto", cache_key: str = ""):
        super().__init__(cache_key)
        if form not in ("auto", "chunked", "recurrent"):
            raise ArchError(f"form must be auto, chunked or recurrent, not {form!r}")
        self.d_model, self.dim, self.chunk, self.form = d_model, dim, chunk, form
        ramp = torch.arange(d_model) / d_model  # the reference initialisation's channel ramp
        self.time_decay = nn.Parameter(-5 + 8 * (torch.arange(dim) / max(dim - 1, 1)) ** 0.7)
        self.time_first = nn.Parameter(torch.full((dim,), 0.3).log())
        self.time_mix_key = nn.Parameter(ramp.clone())
        self.time_mix_value = nn.Parameter(ramp + 0.3)
        self.time_mix_receptance = nn.Parameter(ramp.sqrt())
        self.key = nn.Parameter(torch.empty(dim, d_model))
        self.value = nn.Parameter(torch.empty(dim, d_model))
        self.receptance = nn.Parameter(torch.empty(dim, d_model))
        self.output = nn.Parameter(torch.empty(d_model, dim))
        for p in (self.key, self.value, self.receptance, self.output):
            nn.init.normal_(p, std=0.02)

    def state_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        return self.d_model * torch.finfo(dtype).bits // 8 + 3 * self.dim * 4

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        past = self._past(ctx)
        x, shifted, real = self._shift(x, ctx, past)
        k = F.linear(_lerp(x, shifted, self.time_mix_key), self.key)  # (B, T, dim)
        v = F.linear(_lerp(x, shifted, self.time_mix_value), self.value)
        r = torch.sigmoid(F.linear(_lerp(x, shifted, self.time_mix_receptance), self.receptance))
        state = (past["num"], past["den"], past["max"]) if past else None
        # The chunked form does chunk times the element-wise work in 1/chunk of the steps: about ten
        # times slower than the token loop on CPU (T 256, dim 768), it is for GPUs, where the
        # token loop's cost is its kernel launches.
        chunked = self.form == "auto" and k.is_cuda and real is None and k.shape[1] > 1
        if self.form == "chunked" or chunked:
            wkv, (num, den, top) = wkv4_chunked(self.time_decay, self.time_first, k, v, state, self.chunk)
        else:  # single tokens, and padded rows: a padding token must neither decay nor write the state
            wkv, (num, den, top) = wkv4(self.time_decay, self.time_first, k, v, state, real)
        _keep_shift(ctx, self.cache_key, x, shifted, real, num=num, den=den, max=top)
        return F.linear(r * wkv, self.output)  # (B, T, d_model)


class RWKVChannelMix(_TokenShift):
    """x (B, T, d_model) → (B, T, d_model): k, r = lerp(x', x, μ_k / μ_r);
    sigmoid(receptance(r)) ⊙ value(relu(key(k))²), no biases.

    Parameters, Hugging Face's names: time_mix_key, time_mix_receptance (d_model,), key (hidden, d_model),
    receptance (d_model, d_model), value (d_model, hidden). Cache per sequence: the last input
    (d_model, the input's dtype), under the layer's key + "/channel_mix" (the layer's time mixing
    holds the layer's own key)."""

    def __init__(self, d_model: int, hidden: int, *, cache_key: str = ""):
        super().__init__(f"{cache_key}/channel_mix")
        self.d_model, self.hidden = d_model, hidden
        ramp = torch.arange(d_model) / d_model
        self.time_mix_key = nn.Parameter(ramp.clone())
        self.time_mix_receptance = nn.Parameter(ramp.clone())
        self.key = nn.Parameter(torch.empty(hidden, d_model))
        self.receptance = nn.Parameter(torch.empty(d_model, d_model))
        self.value = nn.Parameter(torch.empty(d_model, hidden))
        for p in (self.key, self.receptance, self.value):
            nn.init.normal_(p, std=0.02)

    def state_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        return self.d_model * torch.finfo(dtype).bits // 8

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        past = self._past(ctx)
        x, shifted, real = self._shift(x, ctx, past)
        k = torch.square(torch.relu(F.linear(_lerp(x, shifted, self.time_mix_key), self.key)))  # (B, T, hidden)
        r = torch.sigmoid(F.linear(_lerp(x, shifted, self.time_mix_receptance), self.receptance))
        _keep_shift(ctx, self.cache_key, x, shifted, real)
        return r * F.linear(k, self.value)  # (B, T, d_model)


# Where the first RWKV-7 layer leaves its value for the value-residual layers after it (ctx.tables
# lives for one forward; every use of a layer sees the same dict).
V_FIRST = "rwkv7_v_first"


class RWKV7TimeMix(RWKV7):
    """RWKV-7's time mixing, laid out as flash-linear-attention's RWKV7Attention (one parameter per
    tensor; its (1, 1, d) lerp weights flat here). x (B, T, d_model) → (B, T, d_model):

    with δ = x' - x, six lerps x_◦ = x + δ ⊙ μ_◦ (◦ = r, w, k, v, a, g); r, k, v = r_proj, k_proj, v_proj
    of theirs; the decay logits w0 + w2(tanh(w1 x_w)), the in-context rate logits a0 + a2(a1 x_a), the
    gate g2(sigmoid(g1 x_g)); with `value_rank` (the value residual) v ← lerp(v, v_first,
    sigmoid(v0 + v2(v1 x_v))) with v_first the stack's first layer's v; without it this layer's v
    is left for the layers after it. The core (`RWKV7`: κ̂, k̃, the generalised delta rule, the group
    norm with eps head_dim · norm_eps, the bonus, the gate), then o_proj.

    Cache per sequence: the core's state (heads · head_dim² float32) under the layer's key, and the
    last input (d_model, the input's dtype) under key + "/shift"."""

    def __init__(self, d_model: int, heads: int, *, decay_rank: int, a_rank: int, value_rank: int | None,
                 gate_rank: int, norm_eps: float = 1e-5, chunk: int = 64, form: str = "auto", cache_key: str = ""):
        head_dim = d_model // heads
        super().__init__(heads, head_dim, chunk=chunk, form=form, norm_eps=head_dim * norm_eps, cache_key=cache_key)
        self.d_model, self.value_rank = d_model, value_rank
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            setattr(self, name, nn.Parameter(torch.full((d_model,), 0.5)))
        for name in ("r_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, name, nn.Parameter(torch.empty(d_model, d_model)))
        ranks = {"w": decay_rank, "a": a_rank, "v": value_rank, "g": gate_rank}
        for name, rank in ranks.items():
            if rank is None:
                continue
            setattr(self, f"{name}1", nn.Parameter(torch.empty(rank, d_model)))
            setattr(self, f"{name}2", nn.Parameter(torch.zeros(d_model, rank)))
            if name != "g":
                setattr(self, f"{name}0", nn.Parameter(torch.zeros(d_model)))
        for name, p in self.named_parameters():
            if p.dim() == 2 and name[1:] != "2":
                nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        shift_key = f"{self.cache_key}/shift"
        x, shifted, real = _token_shift(x, ctx, _past(ctx, shift_key))
        delta = shifted - x
        xr, xw, xk, xv, xa, xg = (torch.addcmul(x, delta, mu) for mu in
                                  (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r, k, v = F.linear(xr, self.r_proj), F.linear(xk, self.k_proj), F.linear(xv, self.v_proj)  # (B, T, d)
        w_logits = F.linear(torch.tanh(F.linear(xw, self.w1)), self.w2, self.w0)
        a_logits = F.linear(F.linear(xa, self.a1), self.a2, self.a0)
        gate = F.linear(torch.sigmoid(F.linear(xg, self.g1)), self.g2)
        if self.value_rank is None:
            if ctx is not None:
                ctx.tables[V_FIRST] = v
        else:
            v_first = ctx.tables.get(V_FIRST) if ctx is not None else None
            if v_first is None:
                raise ArchError("an RWKV-7 layer with a value residual runs after the stack's first RWKV-7 layer, "
                                "which leaves its value in ctx.tables; none was left in this forward")
            v = torch.lerp(v, v_first, torch.sigmoid(F.linear(F.linear(xv, self.v1), self.v2, self.v0)))
        if real is not None:  # a padding token writes nothing into the state
            v = v * real[..., None]
        o = super().forward(r, w_logits, k, v, a_logits, gate, ctx=ctx)  # (B, T, d)
        _keep_shift(ctx, shift_key, x, shifted, real)
        return F.linear(o, self.o_proj)  # (B, T, d_model)


class RWKV7ChannelMix(nn.Module):
    """RWKV-7's channel mixing, flash-linear-attention's RWKV7FeedForward: x (B, T, d_model) →
    value(relu(key(x + (x' - x) ⊙ x_k))²), no biases. Parameters: x_k (d_model,), key (hidden, d_model),
    value (d_model, hidden). Cache: the last input (d_model), under the layer's key + "/channel_mix"."""
    left_padding_exact = True  # padded tokens do not shift into the first real token

    def __init__(self, d_model: int, hidden: int, *, cache_key: str = ""):
        super().__init__()
        self.cache_key = f"{cache_key}/channel_mix"
        self.x_k = nn.Parameter(torch.full((d_model,), 0.5))
        self.key = nn.Parameter(torch.empty(hidden, d_model))
        self.value = nn.Parameter(torch.empty(d_model, hidden))
        for p in (self.key, self.value):
            nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        x, shifted, real = _token_shift(x, ctx, _past(ctx, self.cache_key))
        k = torch.square(torch.relu(F.linear(x.addcmul(shifted - x, self.x_k), self.key)))  # (B, T, hidden)
        _keep_shift(ctx, self.cache_key, x, shifted, real)
        return F.linear(k, self.value)  # (B, T, d_model)
