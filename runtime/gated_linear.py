"""The gated linear-attention family: per head a (dk x dv) state S_t = decay_t ⊙ S_{t-1} + update_t
read as o_t = S_t^T q_t. Retention, GLA and Gated DeltaNet differ only in decay and update. Long
inputs run the chunked form (`kernels/reference.py: gated_linear_chunked`, or on CUDA the Triton
kernel `kernels/gated_linear.py`, through `kernels/dispatch.py`), single tokens the
recurrent step; both leave the same cache entry (the state in float32, plus the conv window), so a
cached decode equals the full forward.

Projections live outside, as for `LinearAttention`: the modules take q, k, v (B, T, heads * dim)
and their gate inputs, and return (B, T, heads * dv) before the output projection. Gated DeltaNet
keeps its short causal conv and its gate parameters (A_log, dt_bias) inside: the published layer
convolves the projected q/k/v and derives decay and β from them in one piece, and its cache holds the
conv window beside the state.

Cost per token and head (dk x dv state; FLOPs counting a multiply-add as 2), recurrent step:
Retention, GLA 5·dk·dv; Gated DeltaNet 7·dk·dv; RWKV-7 9·dk·dv. Chunked (chunk L):
2·L·(dk + dv) + 4·dk·dv, plus 2·L·dk for the pairwise decays of GLA and RWKV-7, plus for the
delta rules 2·L·dk (the k k^T system), L·(dk + dv) (the triangular solve) and 2·dk·dv (the state read).
State bytes per sequence: heads·dk·dv·4 (float32), plus Gated DeltaNet's conv window."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlang.kernels import dispatch, reference
from archlang.spec.errors import ArchError

from .context import Context

FORMS = ("auto", "chunked", "recurrent")


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, n, -1).transpose(1, 2)  # (B, n, T, d)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)  # (B, T, h*d)


def _padding(ctx: Context | None, t: int) -> torch.Tensor | None:
    """(B, 1, T, 1) 1 for real tokens of this forward, or None when there is no padding mask."""
    if ctx is None or ctx.attention_mask is None:
        return None
    return ctx.attention_mask[:, -t:][:, None, :, None]


def _short_conv(mixed: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None, past: dict | None):
    """The causal depthwise conv + silu over q, k, v (B, T, conv_dim) of Gated DeltaNet and KDA,
    continuing the cached window; padding tokens enter as zeros, as the zero padding before the
    start. Returns the conv output (B, conv_dim, T) and the window it read."""
    if mask is not None:
        mixed = mixed * mask[:, 0]
    mixed = mixed.transpose(1, 2)  # (B, conv_dim, T)
    size = weight.shape[-1]
    window = F.pad(mixed, (size - 1, 0)) if past is None else torch.cat((past["conv"], mixed), dim=2)
    return F.silu(F.conv1d(window, weight, groups=mixed.shape[1])), window


def _scan(form: str, chunk: int, q, k, v, log_decay, beta, state, scale=None):
    """The chunked form for prefill and training, the recurrent step for decoding (or as forced);
    q is scaled by `scale` (default dk^-0.5)."""
    if form == "recurrent" or (form == "auto" and q.shape[2] == 1):
        return reference.gated_linear_recurrent(q, k, v, log_decay, beta, state, scale=scale)
    return dispatch.gated_linear_chunked(q, k, v, log_decay, beta, state, scale=scale, chunk=chunk)


def _gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over each head's dv channels, then × silu(gate) (FLA's FusedRMSNormGated, HF's
    Qwen3NextRMSNormGated): normalised in float32, weighted in the input dtype."""
    dtype = x.dtype
    y = x.float()
    y = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
    if weight is not None:
        y = weight * y
    return (y * F.silu(gate.float())).to(dtype)


class _GatedLinear(nn.Module):
    """What the kinds share: the cache entry, the chunk size, the form override and the output norm."""

    def __init__(self, heads: int, key_dim: int, value_dim: int, *, chunk: int, form: str, cache_key: str,
                 output_gate: bool, norm_affine: bool, norm_eps: float):
        super().__init__()
        if form not in FORMS:
            raise ArchError(f"form must be one of {FORMS}, not {form!r}")
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.chunk, self.form, self.cache_key = chunk, form, cache_key
        self.output_gate, self.norm_eps = output_gate, norm_eps
        self.norm_weight = nn.Parameter(torch.ones(value_dim)) if output_gate and norm_affine else None

    def state_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Cache bytes per sequence: heads · dk · dv · 4 (the state is float32 whatever the input dtype)."""
        return self.heads * self.key_dim * self.value_dim * 4

    def _past(self, ctx: Context | None) -> dict[str, torch.Tensor] | None:
        return ctx.cache.get(self.cache_key) if ctx is not None and ctx.cache is not None else None

    def _previous_shard(self, shards, inputs: tuple[torch.Tensor, ...], conv_inputs=None, conv_size=1):
        """Under context parallelism, what the previous rank's shard leaves, as a cache entry: its
        last conv inputs (with `conv_inputs` (B, T, conv_dim)) and its end state. `inputs` are q, k, v."""
        past = {}
        if conv_inputs is not None:
            past["conv"] = shards.conv_history(conv_inputs.transpose(1, 2), conv_size - 1)
            inputs = (past["conv"],)
        shape = (inputs[0].shape[0], self.heads, self.key_dim, self.value_dim)
        dtype = torch.promote_types(inputs[-1].dtype, torch.float32)  # the dtype the scans accumulate in
        past["state"] = shards.state_from_previous(self, inputs, shape, dtype)
        return past

    def _finish(self, o: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        if self.output_gate:
            if gate is None:
                raise ArchError(f"{type(self).__name__} with an output gate needs `gate` (B, T, heads * value_dim)")
            o = _gated_rms_norm(o, _heads(gate, self.heads), self.norm_weight, self.norm_eps)
        return _merge(o)


class Retention(_GatedLinear):
    """RetNet's multi-scale retention (Sun et al. 2023): a fixed decay γ_h = 1 - 2^(-5-h) per head,
    update k_t v_t^T, q scaled by dk^-0.5. Positions (xPos / rotary) are the caller's: q and k come
    in rotated or not. With `output_gate` the heads are RMS-normalised (without weight, as
    torchscale's group norm) and gated by swish(gate), gate (B, T, heads * value_dim)."""
    left_padding_exact = True  # a padded token neither decays nor writes the state

    def __init__(self, heads: int, key_dim: int, value_dim: int, *, chunk: int = 64, form: str = "auto",
                 output_gate: bool = False, norm_eps: float = 1e-6, cache_key: str = ""):
        super().__init__(heads, key_dim, value_dim, chunk=chunk, form=form, cache_key=cache_key,
                         output_gate=output_gate, norm_affine=False, norm_eps=norm_eps)
        gamma = 1 - torch.pow(2.0, -5.0 - torch.arange(heads, dtype=torch.float64))
        self.register_buffer("log_gamma", gamma.log().float(), persistent=False)  # (H,)

    def forward(self, q, k, v, *, gate: torch.Tensor | None = None, ctx: Context | None = None) -> torch.Tensor:
        q, k, v = (_heads(x, self.heads) for x in (q, k, v))  # (B, H, T, d)
        b, _, t, _ = q.shape
        log_decay = self.log_gamma[None, :, None].expand(b, self.heads, t)  # (B, H, T)
        mask = _padding(ctx, t)
        if mask is not None:  # a padding token neither decays nor writes the state
            k, log_decay = k * mask, log_decay * mask[..., 0]
        past = self._past(ctx)
        shards = ctx.tables.get("context_parallel") if ctx is not None else None
        if shards is not None:  # context parallelism: continue the previous rank's shard as a cache
            past = self._previous_shard(shards, (q, k, v))
        o, state = _scan(self.form, self.chunk, q, k, v, log_decay, None, past["state"] if past else None)
        if ctx is not None and ctx.cache is not None:
            ctx.cache.put(self.cache_key, state=state)
        if shards is not None:
            o = shards.state_to_next(o, state)
        return self._finish(o, gate)


class GLA(_GatedLinear):
    """Gated linear attention (Yang et al. 2024): a data-dependent decay per key dimension
    α_t = sigmoid(gate_logits_t)^(1/τ), τ = `gate_logit_normalizer`, update k_t v_t^T, q scaled by
    dk^-0.5. `gate_logits` (B, T, heads * key_dim) is the output of the (low-rank) gate projection.
    With `output_gate` (the published layer) each head is RMS-normalised with a weight and gated
    by swish(gate) (B, T, heads * value_dim)."""
    left_padding_exact = True  # a padded token neither decays nor writes the state

    def __init__(self, heads: int, key_dim: int, value_dim: int, *, gate_logit_normalizer: float = 16.0,
                 chunk: int = 64, form: str = "auto", output_gate: bool = True, norm_eps: float = 1e-5,
                 cache_key: str = ""):
        super().__init__(heads, key_dim, value_dim, chunk=chunk, form=form, cache_key=cache_key,
                         output_gate=output_gate, norm_affine=True, norm_eps=norm_eps)
        self.gate_logit_normalizer = gate_logit_normalizer

    def forward(self, q, k, v, gate_logits, *, gate: torch.Tensor | None = None,
                ctx: Context | None = None) -> torch.Tensor:
        q, k, v = (_heads(x, self.heads) for x in (q, k, v))  # (B, H, T, d)
        log_decay = F.logsigmoid(_heads(gate_logits, self.heads).float()) / self.gate_logit_normalizer  # (B, H, T, dk)
        mask = _padding(ctx, q.shape[2])
        if mask is not None:
            k, log_decay = k * mask, log_decay * mask
        past = self._past(ctx)
        shards = ctx.tables.get("context_parallel") if ctx is not None else None
        if shards is not None:  # context parallelism: continue the previous rank's shard as a cache
            past = self._previous_shard(shards, (q, k, v))
        o, state = _scan(self.form, self.chunk, q, k, v, log_decay, None, past["state"] if past else None)
        if ctx is not None and ctx.cache is not None:
            ctx.cache.put(self.cache_key, state=state)
        if shards is not None:
            o = shards.state_to_next(o, state)
        return self._finish(o, gate)


class GatedDeltaNet(_GatedLinear):
    """Gated DeltaNet (Yang et al. 2025; Qwen3-Next's linear attention):
    S_t = α_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T with one gate per value head
    α_t = exp(-exp(A_log) · softplus(a_t + dt_bias)), β_t = sigmoid(b_t).

    q, k (B, T, key_heads * key_dim) and v (B, T, value_heads * value_dim) are the projections before
    the short causal depthwise conv (`conv_size` taps, no bias, then silu); q and k are then
    L2-normalised and each serves value_heads / key_heads consecutive value heads. a, b (B, T,
    value_heads); gate (B, T, value_heads * value_dim) gates the weighted RMSNorm of each head.

    Cache per sequence: state value_heads · key_dim · value_dim · 4 bytes (float32) plus the conv window
    (2 · key_heads · key_dim + value_heads · value_dim) · (conv_size - 1) · itemsize bytes (the input dtype)."""
    left_padding_exact = True  # a padded token neither decays nor writes the state

    def __init__(self, key_heads: int, value_heads: int, key_dim: int, value_dim: int, *, conv_size: int = 4,
                 chunk: int = 64, form: str = "auto", norm_eps: float = 1e-6, cache_key: str = ""):
        if value_heads % key_heads:
            raise ArchError(f"value_heads ({value_heads}) must be a multiple of key_heads ({key_heads})")
        super().__init__(value_heads, key_dim, value_dim, chunk=chunk, form=form, cache_key=cache_key,
                         output_gate=True, norm_affine=True, norm_eps=norm_eps)
        self.key_heads, self.conv_size = key_heads, conv_size
        self.conv_dim = 2 * key_heads * key_dim + value_heads * value_dim
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, 1, conv_size))
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))  # nn.Conv1d's default
        self.A_log = nn.Parameter(torch.empty(value_heads).uniform_(1, 16).log())
        self.dt_bias = nn.Parameter(torch.ones(value_heads))

    def state_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Cache bytes per sequence: value_heads · key_dim · value_dim · 4
        + conv_dim · (conv_size - 1) · itemsize."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return super().state_bytes() + self.conv_dim * (self.conv_size - 1) * itemsize

    def forward(self, q, k, v, a, b, gate, *, ctx: Context | None = None) -> torch.Tensor:
        t = q.shape[1]
        past = self._past(ctx)
        mask = _padding(ctx, t)
        mixed = torch.cat((q, k, v), dim=-1)  # (B, T, conv_dim)
        shards = ctx.tables.get("context_parallel") if ctx is not None else None
        if shards is not None:  # context parallelism: continue the previous rank's shard as a cache
            past = self._previous_shard(shards, (q, k, v), mixed, self.conv_size)
        conv, window = _short_conv(mixed, self.conv_weight, mask, past)  # (B, conv_dim, T)
        q, k, v = conv.transpose(1, 2).split([q.shape[-1], k.shape[-1], v.shape[-1]], dim=-1)
        q, k = (_heads(x, self.key_heads) for x in (q, k))  # (B, Hk, T, dk)
        q, k = (x * torch.rsqrt(x.float().pow(2).sum(-1, keepdim=True) + 1e-6).to(x.dtype) for x in (q, k))
        group = self.heads // self.key_heads
        q, k = q.repeat_interleave(group, dim=1), k.repeat_interleave(group, dim=1)  # (B, Hv, T, dk)
        v = _heads(v, self.heads)  # (B, Hv, T, dv)
        beta = torch.sigmoid(b.float()).transpose(1, 2)  # (B, Hv, T)
        log_decay = (-self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)).transpose(1, 2)  # (B, Hv, T)
        if mask is not None:  # a padding token neither decays nor writes the state
            beta, log_decay = beta * mask[:, :, :, 0], log_decay * mask[:, :, :, 0]
        o, state = _scan(self.form, self.chunk, q, k, v, log_decay, beta, past["state"] if past else None)
        if ctx is not None and ctx.cache is not None:
            ctx.cache.put(self.cache_key, state=state, conv=window[:, :, -(self.conv_size - 1):])
        if shards is not None:
            o = shards.state_to_next(o, state)
        return self._finish(o, gate)


class RWKV7(_GatedLinear):
    """RWKV-7 "Goose" time mixing's core (Peng et al. 2025): the generalised delta rule
    S_t = diag(w_t) S_{t-1} + b_t (a_t^T S_{t-1}) + k̃_t v_t^T with a = -κ̂, b = κ̂ ⊙ a_rate, read by the
    receptance r unscaled, then a GroupNorm per head, the bonus (r ⊙ k̃ ⊙ r_k summed per head) · v, and
    × gate.

    Inputs, all (B, T, heads * head_dim) after token shift and the projections (the v-residual
    mixing too): r, w_logits (w0 + the decay LoRA; log w = -e^-0.5 · sigmoid), k, v, a_logits
    (a0 + the in-context-rate LoRA; a_rate = sigmoid), gate (the output LoRA's result, applied as is).
    κ̂ = normalise(k ⊙ k_k) per head and k̃ = k ⊙ (1 + (a_rate - 1) ⊙ k_a) are made here from the
    layer's own k_k, k_a."""
    left_padding_exact = True  # a padded token neither decays nor writes the state

    def __init__(self, heads: int, head_dim: int, *, chunk: int = 64, form: str = "auto", norm_eps: float = 64e-5,
                 cache_key: str = ""):
        super().__init__(heads, head_dim, head_dim, chunk=chunk, form=form, cache_key=cache_key,
                         output_gate=False, norm_affine=False, norm_eps=norm_eps)
        width = heads * head_dim
        self.k_k = nn.Parameter(torch.full((width,), 0.85))
        self.k_a = nn.Parameter(torch.ones(width))
        self.r_k = nn.Parameter(torch.zeros(heads, head_dim))
        self.norm_weight = nn.Parameter(torch.ones(width))
        self.norm_bias = nn.Parameter(torch.zeros(width))

    def forward(self, r, w_logits, k, v, a_logits, gate, *, ctx: Context | None = None) -> torch.Tensor:
        bsz, t, width = r.shape
        a_rate = torch.sigmoid(a_logits)
        kk = F.normalize(_heads(k * self.k_k, self.heads), dim=-1)  # κ̂ (B, H, T, d)
        k = k * (1 + (a_rate - 1) * self.k_a)  # k̃
        r_h, k_h, v_h = (_heads(x, self.heads) for x in (r, k, v))  # (B, H, T, d)
        log_decay = -math.exp(-0.5) * torch.sigmoid(_heads(w_logits, self.heads).float())  # (B, H, T, d)
        a, b = -kk, kk * _heads(a_rate, self.heads)
        mask = _padding(ctx, t)
        if mask is not None:  # a padding token neither decays nor writes the state
            k_h, b, log_decay = k_h * mask, b * mask, log_decay * mask
        past = self._past(ctx)
        state = past["state"] if past else None
        if self.form == "recurrent" or (self.form == "auto" and t == 1):
            o, state = reference.generalized_delta_recurrent(r_h, k_h, v_h, log_decay, a, b, state)
        else:
            o, state = reference.generalized_delta_chunked(r_h, k_h, v_h, log_decay, a, b, state, chunk=self.chunk)
        if ctx is not None and ctx.cache is not None:
            ctx.cache.put(self.cache_key, state=state)
        o = F.group_norm(_merge(o).reshape(bsz * t, width), self.heads, self.norm_weight, self.norm_bias,
                         self.norm_eps).view(bsz, t, width)
        bonus = (r_h * k_h * self.r_k[:, None]).sum(-1, keepdim=True) * v_h  # (B, H, T, d)
        return (o + _merge(bonus)) * gate


class KDA(_GatedLinear):
    """Kimi Delta Attention (Kimi Team 2025; Kimi Linear's linear attention): Gated DeltaNet with one
    decay per key channel, S_t = (I - β_t k_t k_t^T) Diag(α_t) S_{t-1} + β_t k_t v_t^T, read as
    o_t = S_t^T q_t / sqrt(head_dim), with α_t = exp(-exp(A_log) · softplus(f_t + dt_bias)) per channel
    and β_t = sigmoid(b_t) per head.

    That is the generalised delta rule of `kernels/reference.py`, S_t = Diag(α_t) S_{t-1} +
    b_t (a_t^T S_{t-1}) + k'_t v_t^T, with a_t = -β_t (α_t ⊙ k_t), b_t = k_t and k'_t = β_t k_t
    (-β k k^T Diag(α) S = k ((-β α ⊙ k)^T S)), so both forms (chunked, recurrent) are its.

    q, k, v (B, T, heads * head_dim) are the projections before the short causal depthwise conv
    (`conv_size` taps, no bias, then silu), q and k then L2-normalised; f (B, T, heads * head_dim) is
    the decay projection's output, b (B, T, heads) the β logits, gate (B, T, heads * head_dim) the
    output gate's logits: each head's output is RMS-normalised (a weight) and × sigmoid(gate).

    Cache per sequence: state heads · head_dim² · 4 bytes (float32) plus the conv window
    3 · heads · head_dim · (conv_size - 1) · itemsize bytes (the input dtype)."""
    left_padding_exact = True  # a padded token neither decays nor writes the state

    def __init__(self, heads: int, head_dim: int, *, conv_size: int = 4, chunk: int = 64, form: str = "auto",
                 norm_eps: float = 1e-6, cache_key: str = ""):
        super().__init__(heads, head_dim, head_dim, chunk=chunk, form=form, cache_key=cache_key,
                         output_gate=True, norm_affine=True, norm_eps=norm_eps)
        self.conv_size, self.conv_dim = conv_size, 3 * heads * head_dim
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, 1, conv_size))
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))  # nn.Conv1d's default
        self.A_log = nn.Parameter(torch.empty(heads).uniform_(1, 16).log())
        self.dt_bias = nn.Parameter(torch.ones(heads * head_dim))

    def state_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Cache bytes per sequence: heads · head_dim² · 4 + conv_dim · (conv_size - 1) · itemsize."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return super().state_bytes() + self.conv_dim * (self.conv_size - 1) * itemsize

    def forward(self, q, k, v, f, b, gate, *, ctx: Context | None = None) -> torch.Tensor:
        t = q.shape[1]
        past = self._past(ctx)
        mask = _padding(ctx, t)
        mixed = torch.cat((q, k, v), dim=-1)  # (B, T, conv_dim)
        shards = ctx.tables.get("context_parallel") if ctx is not None else None
        if shards is not None:  # context parallelism: continue the previous rank's shard as a cache
            past = self._previous_shard(shards, (q, k, v), mixed, self.conv_size)
        conv, window = _short_conv(mixed, self.conv_weight, mask, past)  # (B, conv_dim, T)
        q, k, v = (_heads(x, self.heads) for x in conv.transpose(1, 2).chunk(3, dim=-1))  # (B, H, T, dk)
        # L2-normalised in float32, as the rule runs (Hugging Face and flash-linear-attention alike)
        q, k = (x.float() * torch.rsqrt(x.float().pow(2).sum(-1, keepdim=True) + 1e-6) for x in (q, k))
        log_decay = -self.A_log.float().exp()[:, None, None] * F.softplus(_heads(f.float() + self.dt_bias, self.heads))
        beta = torch.sigmoid(b.float()).transpose(1, 2)[..., None]  # (B, H, T, 1)
        if mask is not None:  # a padding token neither decays nor writes the state
            beta, log_decay = beta * mask, log_decay * mask
        read, write = -beta * log_decay.exp() * k, beta * k  # a_t and k'_t of the generalised rule
        scale, state = self.key_dim ** -0.5, past["state"] if past else None
        if self.form == "recurrent" or (self.form == "auto" and t == 1):
            o, state = reference.generalized_delta_recurrent(q, write, v, log_decay, read, k, state, scale=scale)
        else:
            o, state = reference.generalized_delta_chunked(q, write, v, log_decay, read, k, state, scale=scale,
                                                           chunk=self.chunk)
        if ctx is not None and ctx.cache is not None:
            ctx.cache.put(self.cache_key, state=state, conv=window[:, :, -(self.conv_size - 1):])
        if shards is not None:
            o = shards.state_to_next(o, state)
        o = o.float()  # the gated norm runs in float32 (Hugging Face's KimiLinearRMSNormGated)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.norm_eps) * self.norm_weight.float()
        o = o * torch.sigmoid(_heads(gate, self.heads).float())
        return _merge(o.to(v.dtype))
