"""RWKV-4's time mixing and RWKV's channel mixing, as generated code builds them (Peng et al. 2023,
"RWKV: Reinventing RNNs for the Transformer Era"; laid out as Hugging Face's RwkvSelfAttention and
RwkvFeedForward, one parameter per HF tensor). Both read the previous token's input (the token
shift); the cache keeps it, and the time mixing's WKV state, so a cached decode equals the full
forward.

The WKV recurrence runs in the numerically stable form of the reference implementation (and of
Hugging Face's CPU path): numerator and denominator are kept scaled by e^{-m} with m their running
maximum exponent, so no exponential overflows. It is a loop over tokens, differentiated by autograd
through the loop; there is no chunked form yet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .context import Context

# The running maximum's value before the first token: e^{m} is 0 in float32 and m + w stays finite.
_EMPTY_MAX = -1e38


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
    if state is None:
        zeros = k.new_zeros(b, c, dtype=torch.float32)
        state = (zeros, zeros, torch.full_like(zeros, _EMPTY_MAX))
    num, den, top = state
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


class _TokenShift(nn.Module):
    """What both mixers share: the padded tokens zeroed before the shift (a left-padded row's first
    real token sees zeros, as at a sequence's start) and the last input kept in the cache."""

    def __init__(self, cache_key: str):
        super().__init__()
        self.cache_key = cache_key

    def _shift(self, x: torch.Tensor, ctx: Context | None, past: dict | None):
        real = _real_tokens(ctx, x.shape[1])
        if real is not None:
            x = x.masked_fill(~real[..., None], 0)
        return x, _shifted(x, past["shift"] if past else None), real

    def _past(self, ctx: Context | None) -> dict | None:
        return ctx.cache.get(self.cache_key) if ctx is not None and ctx.cache is not None else None


class RWKV4TimeMix(_TokenShift):
    """x (B, T, d_model) → (B, T, d_model): k, v, r = key, value, receptance of lerp(x', x, μ_k / μ_v /
    μ_r) (d_model → dim, no biases); output(sigmoid(r) ⊙ wkv4(k, v)).

    Parameters, Hugging Face's names (its time_mix_* are (1, 1, d_model)): time_decay, time_first (dim,),
    time_mix_key, time_mix_value, time_mix_receptance (d_model,), key, value, receptance (dim, d_model),
    output (d_model, dim). Cache per sequence: the last input (d_model, the input's dtype) and the
    WKV numerator, denominator and maximum (3 · dim, float32)."""

    def __init__(self, d_model: int, dim: int, *, cache_key: str = ""):
        super().__init__(cache_key)
        self.d_model, self.dim = d_model, dim
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
        wkv, (num, den, top) = wkv4(self.time_decay, self.time_first, k, v, state, real)
        if ctx is not None and ctx.cache is not None:
            last = x[:, -1] if real is None else torch.where(real[:, -1:], x[:, -1], shifted[:, -1])
            ctx.cache.put(self.cache_key, shift=last, num=num, den=den, max=top)
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
        if ctx is not None and ctx.cache is not None:
            last = x[:, -1] if real is None else torch.where(real[:, -1:], x[:, -1], shifted[:, -1])
            ctx.cache.put(self.cache_key, shift=last)
        return r * F.linear(k, self.value)  # (B, T, d_model)
