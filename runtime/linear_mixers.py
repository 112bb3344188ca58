"""The gated linear-attention mixers as whole layers, as generated code builds them: the input and
output projections around the cores of runtime/gated_linear.py, so that a block writes one line
(`self.ssm = rt.GatedDeltaNetLayer(...)`) and calls it on its normalised input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .context import Context
from .gated_linear import GatedDeltaNet


class GatedDeltaNetLayer(GatedDeltaNet):
    """Gated DeltaNet with its projections (Qwen3-Next's linear attention layer): from x (B, T, d_model)
    q_proj, k_proj (key_heads · key_dim), v_proj and the output gate z_proj (value_heads · value_dim),
    b_proj (β logits) and a_proj (decay input), one row per value head; the core (conv, delta rule,
    gated RMSNorm; `GatedDeltaNet`); out_proj back to d_model. No biases, as the published layer.

    The projections are kept apart, one parameter each, where Hugging Face fuses them in
    in_proj_qkvz and in_proj_ba interleaved per key head (interop/hf_weights.py converts)."""

    def __init__(self, d_model: int, key_heads: int, value_heads: int, key_dim: int, value_dim: int, *,
                 conv_size: int = 4, chunk: int = 64, form: str = "auto", norm_eps: float = 1e-6,
                 cache_key: str = ""):
        super().__init__(key_heads, value_heads, key_dim, value_dim, conv_size=conv_size, chunk=chunk, form=form,
                         norm_eps=norm_eps, cache_key=cache_key)
        keys, values = key_heads * key_dim, value_heads * value_dim
        self.q_proj = nn.Parameter(torch.empty(keys, d_model))
        self.k_proj = nn.Parameter(torch.empty(keys, d_model))
        self.v_proj = nn.Parameter(torch.empty(values, d_model))
        self.z_proj = nn.Parameter(torch.empty(values, d_model))
        self.b_proj = nn.Parameter(torch.empty(value_heads, d_model))
        self.a_proj = nn.Parameter(torch.empty(value_heads, d_model))
        self.out_proj = nn.Parameter(torch.empty(d_model, values))
        for p in (self.q_proj, self.k_proj, self.v_proj, self.z_proj, self.b_proj, self.a_proj, self.out_proj):
            nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        q, k = F.linear(x, self.q_proj), F.linear(x, self.k_proj)  # (B, T, Hk·dk)
        v, z = F.linear(x, self.v_proj), F.linear(x, self.z_proj)  # (B, T, Hv·dv)
        b, a = F.linear(x, self.b_proj), F.linear(x, self.a_proj)  # (B, T, Hv)
        o = super().forward(q, k, v, a, b, z, ctx=ctx)  # (B, T, Hv·dv)
        return F.linear(o, self.out_proj)  # (B, T, C)
