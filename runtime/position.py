"""Position encodings: RoPE tables (with linear, NTK, YaRN, Llama 3, LongRoPE and dynamic NTK
scaling), sinusoidal and
learned absolute positions, ALiBi slopes, and T5's bucketed relative bias."""

from __future__ import annotations

import math

import torch
from torch import nn

from archlang.kernels import dispatch


def rope_inv_freq(dim: int, theta: float, scaling: dict | None, *, context: int | None = None,
                  long: bool = False) -> tuple[torch.Tensor, float]:
    """Inverse frequencies of the rotary embedding, and the factor cos/sin are multiplied by.

    For "longrope", `long` picks the long factors (RopeTable does, per forward); `context` is the
    extended context, which gives the factor when the dict has none. "dynamic" gives the
    unscaled frequencies here: its base depends on the sequence length (see `dynamic_ntk_inv_freq`).
    """
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq, 1.0
    kind = scaling["kind"]
    if kind == "dynamic":
        return inv_freq, 1.0
    if kind == "longrope":
        return _longrope(exponents, theta, scaling, context, long)
    factor = scaling["factor"]
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind == "ntk":  # NTK-aware: stretch the base so the lowest frequency interpolates by `factor`
        base = theta * factor ** (dim / (dim - 2))
        return 1.0 / (base**exponents), 1.0
    if kind == "llama3":
        old = scaling["original_context"]
        low_wavelen = old / scaling["low_freq_factor"]
        high_wavelen = old / scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - scaling["low_freq_factor"]) / (scaling["high_freq_factor"] - scaling["low_freq_factor"])
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        old = scaling["original_context"]

        def correction_dim(rotations: float) -> float:
            return (dim * math.log(old / (rotations * 2 * math.pi))) / (2 * math.log(theta))

        low, high = correction_dim(scaling["beta_fast"]), correction_dim(scaling["beta_slow"])
        if scaling.get("truncate", True):  # whole dimensions; gpt-oss keeps the exact bounds
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        extrapolation = 1 - ramp
        inv = (inv_freq / factor) * (1 - extrapolation) + inv_freq * extrapolation

        def mscale(s: float, m: float = 1.0) -> float:
            return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

        if scaling.get("mscale") and scaling.get("mscale_all_dim"):
            attention_factor = mscale(factor, scaling["mscale"]) / mscale(factor, scaling["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
        return inv, attention_factor
    raise ValueError(f"unknown rope scaling {kind!r}")


def _longrope(exponents: torch.Tensor, theta: float, scaling: dict, context: int | None,
              long: bool) -> tuple[torch.Tensor, float]:
    """Phi-3's LongRoPE (HF `_compute_longrope_parameters`): a rescale factor per frequency,
    short ones within the original context and long ones beyond it, and an attention factor
    sqrt(1 + ln(factor) / ln(original context)) unless given."""
    old = scaling["original_context"]
    factor = scaling.get("factor") or (context / old if context else 1.0)
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(old))
    ext = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float32)
    if ext.shape != exponents.shape:
        raise ValueError(f"longrope factors need {exponents.shape[0]} entries (rotary dim / 2), got {ext.shape[0]}")
    return 1.0 / (ext * theta**exponents), attention_factor


def dynamic_ntk_inv_freq(dim: int, theta: float, factor: float, original: int, seq_len: torch.Tensor) -> torch.Tensor:
    """Dynamic NTK (HF `_compute_dynamic_ntk_parameters`): beyond the original context the base
    grows with the sequence length, theta * (factor * L / original - (factor - 1)) ^ (dim / (dim - 2)),
    computed in float32 from a tensor length as HF does."""
    length = torch.clamp(seq_len, min=original)
    base = theta * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=seq_len.device).float() / dim))


class RopeTable(nn.Module):
    """cos/sin of the rotary embedding for given positions: (T, dim) each, in float32.

    "longrope" and "dynamic" depend on the sequence length L = max(positions) + 1 of each forward,
    as in HF: longrope uses the long factors when L > original_context, dynamic NTK grows its base
    with L beyond original_context. Keys already in a cache keep the rotation they were given, so a
    cached decode that crosses original_context differs from one full forward over the same tokens
    (HF's cached generation behaves the same way); within the original context both are exact.
    For the same reason, past the original context a full forward is not causal in the strict
    sense: every position's rotation depends on the length of the whole forward.
    HF's dynamic module also remembers the longest L it has seen and keeps that base for shorter
    sequences that are still beyond the original context; this table is stateless and uses each
    forward's own L, which equals HF for a growing sequence (prefill then decode).
    """

    def __init__(self, dim: int, context: int, theta: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        inv_freq, self.attention_factor = rope_inv_freq(dim, theta, scaling, context=context)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.kind = scaling["kind"] if scaling else None
        if self.kind == "longrope":
            self.original_context = scaling["original_context"]
            long_freq, _ = rope_inv_freq(dim, theta, scaling, context=context, long=True)
            self.register_buffer("long_inv_freq", long_freq, persistent=False)
        if self.kind == "dynamic":
            self.dim, self.theta, self.factor = dim, theta, scaling["factor"]
            self.original_context = scaling["original_context"]

    def left_padding_exact(self) -> bool:
        """Whether shifting a row's positions keeps its result: not when the table depends on the
        forward's length (runtime/padding.py)."""
        return self.kind not in ("longrope", "dynamic")

    def frequencies(self, positions: torch.Tensor) -> torch.Tensor:
        """The inverse frequencies this forward uses (they depend on its length for longrope and dynamic)."""
        if self.kind not in ("longrope", "dynamic"):
            return self.inv_freq
        seq_len = positions.max() + 1  # a tensor: no host sync, as in HF
        if self.kind == "longrope":
            return torch.where(seq_len > self.original_context, self.long_inv_freq, self.inv_freq)
        grown = dynamic_ntk_inv_freq(self.dim, self.theta, self.factor, self.original_context, seq_len)
        return torch.where(seq_len > self.original_context, grown.to(self.inv_freq.device), self.inv_freq)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.frequencies(positions)[None, :]  # (T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, dim)
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] channels of x (B, H, T, D); the rest pass through."""
    return dispatch.rope(x, cos, sin)


def rope_qk(q: torch.Tensor, k: torch.Tensor, table, heads: int, kv_heads: int, head_dim: int):
    """The unfused rope op: q (B, T, H*D) and k (B, T, KV*D) rotated, same layout out."""
    cos, sin = table
    b, t, _ = q.shape
    q = apply_rope(q.view(b, t, heads, head_dim).transpose(1, 2), cos, sin)
    k = apply_rope(k.view(b, t, kv_heads, head_dim).transpose(1, 2), cos, sin)
    return q.transpose(1, 2).reshape(b, t, -1), k.transpose(1, 2).reshape(b, t, -1)


class LearnedPositions(nn.Embedding):
    """A learned embedding per absolute position (GPT-2, BERT), read at ctx.positions."""

    left_padding_exact = False  # a left-padded row's tokens sit at other positions than unpadded


class SinusoidalPositions(nn.Module):
    """The fixed table of Vaswani et al. (2017), computed for the positions of each forward
    rather than stored: a stored table at a long context would take context x dim memory."""

    left_padding_exact = False  # absolute: see LearnedPositions

    def __init__(self, context: int, dim: int):
        super().__init__()
        self.context, self.dim = context, dim
        # Holds no data (zero elements): it follows .to() and tells forward the dtype and device to return.
        self.register_buffer("anchor", torch.empty(0), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """(T,) positions → (T, dim): sin on even channels, cos on odd ones, computed in float32."""
        div = torch.exp(torch.arange(0, self.dim, 2, dtype=torch.float32, device=positions.device)
                        * (-math.log(10000.0) / self.dim))  # (dim/2,)
        angles = positions.float()[:, None] * div  # (T, dim/2)
        table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[:, : self.dim]  # (T, dim)
        return table.to(self.anchor.dtype)


class AlibiSlopes(nn.Module):
    """Per-head slopes of ALiBi (Press et al. 2021), geometric from 2^(-8/n)."""

    def __init__(self, heads: int):
        super().__init__()
        closest = 2 ** math.floor(math.log2(heads))
        base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
        slopes = [base ** (i + 1) for i in range(closest)]
        if closest < heads:
            extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
            slopes += [extra ** (2 * i + 1) for i in range(heads - closest)]
        self.register_buffer("slopes", torch.tensor(slopes), persistent=False)

    def forward(self, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.slopes


class RelativePositionBias(nn.Module):
    """T5's learned bias per (bucket of relative distance, head), shared by a layer stack."""

    def __init__(self, buckets: int, max_distance: int, heads: int, bidirectional: bool):
        super().__init__()
        self.buckets, self.max_distance, self.bidirectional = buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.empty(buckets, heads))
        nn.init.normal_(self.weight, std=0.02)

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:
        n = self.buckets
        out = torch.zeros_like(relative)
        if self.bidirectional:
            n //= 2
            out += (relative > 0).long() * n
            relative = relative.abs()
        else:
            relative = -torch.clamp(relative, max=0)
        exact = n // 2
        small = relative < exact
        large = exact + (
            torch.log(relative.float() / exact) / math.log(self.max_distance / exact) * (n - exact)
        ).long()
        large = torch.clamp(large, max=n - 1)
        return out + torch.where(small, relative, large)

    def forward(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
        relative = k_positions[None, :] - q_positions[:, None]  # (T, S)
        bias = self.weight[self.bucket(relative)]  # (T, S, H)
        return bias.permute(2, 0, 1)  # (H, T, S)
