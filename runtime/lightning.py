"""MiniMax-01's lightning attention (MiniMax 2025, "MiniMax-01: Scaling Foundation Models with
Lightning Attention"; Qin et al. 2024, "Lightning Attention-2"): linear attention with a fixed
decay per head that weakens with depth, as a whole layer. The recurrence is the gated linear
family's (kernels/reference.py: chunked in prefill, the step in decoding, one float32 state
per head in the cache), so a cached decode equals the full forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlang.kernels.reference import ACTIVATIONS

from .context import Context
from .gated_linear import _heads, _merge, _padding, _scan


def lightning_slopes(heads: int, layer: int, layers: int) -> torch.Tensor:
    """The decay rate s_h of each head at `layer` of `layers` (S_t = exp(-s_h) S_{t-1} + k_t v_t^T):
    ALiBi's geometric slopes 2^(-8(h+1)/heads), scaled by 1 - layer / (layers - 1 + 1e-5) + 1e-5, so
    the first layer forgets fastest and the last barely forgets (transformers' MiniMax, the
    published rule with its epsilons)."""
    base = 1 / (2 ** (8 / heads))
    rate = base ** (torch.arange(heads) + 1)
    return rate * (1 - layer / (layers - 1 + 1e-5) + 1e-5)  # (H,)


class Lightning(nn.Module):
    """x (B, T, d_model) → (B, T, d_model), laid out as Hugging Face's MiniMaxLightningAttention:

        q, k, v = act(q_proj(x)), act(k_proj(x)), act(v_proj(x))    per head, no score scale
        S_t = exp(-s_h) S_{t-1} + k_t v_t^T,  o_t = S_t^T q_t        s_h: `lightning_slopes`
        out = out_proj(sigmoid(gate_proj(x)) ⊙ RMSNorm(o))           the norm over all heads at once

    Parameters: q_proj, k_proj (heads · key_dim, d_model), v_proj, gate_proj (heads · value_dim,
    d_model), norm_weight (heads · value_dim,), out_proj (d_model, heads · value_dim); no biases.
    Hugging Face fuses q, k and v in qkv_proj, [q; k; v] per head (interop/hf_weights.py splits it).

    State per sequence (the cache's bytes): heads · key_dim · value_dim values in float32.
    With `ctx.attention_mask`, a padded token neither decays nor writes the state."""

    left_padding_exact = True  # a padded token neither decays nor writes the state

    def __init__(self, d_model: int, heads: int, key_dim: int, value_dim: int, *, layer: int, layers: int,
                 act: str = "silu", chunk: int = 64, form: str = "auto", norm_eps: float = 1e-6,
                 cache_key: str = ""):
        super().__init__()
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.act, self.chunk, self.form, self.norm_eps, self.cache_key = act, chunk, form, norm_eps, cache_key
        keys, values = heads * key_dim, heads * value_dim
        self.q_proj = nn.Parameter(torch.empty(keys, d_model))
        self.k_proj = nn.Parameter(torch.empty(keys, d_model))
        self.v_proj = nn.Parameter(torch.empty(values, d_model))
        self.gate_proj = nn.Parameter(torch.empty(values, d_model))
        self.norm_weight = nn.Parameter(torch.ones(values))
        self.out_proj = nn.Parameter(torch.empty(d_model, values))
        for p in (self.q_proj, self.k_proj, self.v_proj, self.gate_proj, self.out_proj):
            nn.init.normal_(p, std=0.02)
        self.register_buffer("log_decay", -lightning_slopes(heads, layer, layers), persistent=False)  # (H,)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        act = ACTIVATIONS[self.act]
        q = _heads(act(F.linear(x, self.q_proj)), self.heads)  # (B, H, T, dk)
        k = _heads(act(F.linear(x, self.k_proj)), self.heads)
        v = _heads(act(F.linear(x, self.v_proj)), self.heads)  # (B, H, T, dv)
        b, _, t, _ = q.shape
        log_decay = self.log_decay[None, :, None].expand(b, self.heads, t)  # (B, H, T)
        mask = _padding(ctx, t)
        if mask is not None:  # a padding token neither decays nor writes the state
            k, log_decay = k * mask, log_decay * mask[..., 0]
        cache = ctx.cache if ctx is not None else None
        past = cache.get(self.cache_key) if cache is not None else None
        o, state = _scan(self.form, self.chunk, q, k, v, log_decay, None, past["state"] if past else None, scale=1.0)
        if cache is not None:
            cache.put(self.cache_key, state=state)
        o = _merge(o).to(x.dtype)  # (B, T, H·dv)
        normed = o.float() * torch.rsqrt(o.float().pow(2).mean(-1, keepdim=True) + self.norm_eps)
        o = self.norm_weight * normed.to(x.dtype)
        o = torch.sigmoid(F.linear(x, self.gate_proj)) * o
        return F.linear(o, self.out_proj)  # (B, T, d_model)
