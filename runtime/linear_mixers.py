"""The gated linear-attention mixers as whole layers, as generated code builds them: the input and
output projections around the cores of runtime/gated_linear.py, so that a block writes one line
(`self.ssm = rt.GatedDeltaNetLayer(...)`) and calls it on its normalised input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .context import Context
from .gated_linear import GLA, KDA, GatedDeltaNet, Retention


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


class GLALayer(GLA):
    """Gated linear attention with its projections, as flash-linear-attention's GatedLinearAttention
    layer (no short conv): q_proj, k_proj (heads · key_dim), v_proj and the output gate g_proj
    (heads · value_dim); the decay logits from a low-rank projection gk_down (gate_rank) then gk_up
    with a bias (heads · key_dim); the core (`GLA`: the decay recurrence, the weighted RMSNorm per
    head × swish(g)); out_proj back to d_model."""

    def __init__(self, d_model: int, heads: int, key_dim: int, value_dim: int, *, gate_rank: int = 16,
                 gate_logit_normalizer: float = 16.0, chunk: int = 64, form: str = "auto", norm_eps: float = 1e-5,
                 cache_key: str = ""):
        super().__init__(heads, key_dim, value_dim, gate_logit_normalizer=gate_logit_normalizer, chunk=chunk,
                         form=form, output_gate=True, norm_eps=norm_eps, cache_key=cache_key)
        keys, values = heads * key_dim, heads * value_dim
        self.q_proj = nn.Parameter(torch.empty(keys, d_model))
        self.k_proj = nn.Parameter(torch.empty(keys, d_model))
        self.v_proj = nn.Parameter(torch.empty(values, d_model))
        self.g_proj = nn.Parameter(torch.empty(values, d_model))
        self.gk_down = nn.Parameter(torch.empty(gate_rank, d_model))
        self.gk_up = nn.Parameter(torch.empty(keys, gate_rank))
        self.gk_up_bias = nn.Parameter(torch.zeros(keys))
        self.out_proj = nn.Parameter(torch.empty(d_model, values))
        for p in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.gk_down, self.gk_up, self.out_proj):
            nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        q, k = F.linear(x, self.q_proj), F.linear(x, self.k_proj)  # (B, T, H·dk)
        v, g = F.linear(x, self.v_proj), F.linear(x, self.g_proj)  # (B, T, H·dv)
        gate_logits = F.linear(F.linear(x, self.gk_down), self.gk_up, self.gk_up_bias)  # (B, T, H·dk)
        o = super().forward(q, k, v, gate_logits, gate=g, ctx=ctx)  # (B, T, H·dv)
        return F.linear(o, self.out_proj)  # (B, T, C)


class RetentionLayer(Retention):
    """Multi-scale retention with its projections: q_proj, k_proj (heads · key_dim), v_proj (heads ·
    value_dim) and, with `output_gate`, g_proj (heads · value_dim); the core (`Retention`, no xPos);
    out_proj back to d_model."""

    def __init__(self, d_model: int, heads: int, key_dim: int, value_dim: int, *, output_gate: bool = True,
                 chunk: int = 64, form: str = "auto", norm_eps: float = 1e-6, cache_key: str = ""):
        super().__init__(heads, key_dim, value_dim, chunk=chunk, form=form, output_gate=output_gate,
                         norm_eps=norm_eps, cache_key=cache_key)
        keys, values = heads * key_dim, heads * value_dim
        self.q_proj = nn.Parameter(torch.empty(keys, d_model))
        self.k_proj = nn.Parameter(torch.empty(keys, d_model))
        self.v_proj = nn.Parameter(torch.empty(values, d_model))
        self.g_proj = nn.Parameter(torch.empty(values, d_model)) if output_gate else None
        self.out_proj = nn.Parameter(torch.empty(d_model, values))
        for p in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.out_proj):
            if p is not None:
                nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        q, k, v = F.linear(x, self.q_proj), F.linear(x, self.k_proj), F.linear(x, self.v_proj)
        g = F.linear(x, self.g_proj) if self.g_proj is not None else None  # (B, T, H·dv)
        o = super().forward(q, k, v, gate=g, ctx=ctx)  # (B, T, H·dv)
        return F.linear(o, self.out_proj)  # (B, T, C)


class KDALayer(KDA):
    """Kimi Delta Attention with its projections (Kimi Linear's KimiDeltaAttention): from x (B, T,
    d_model) q_proj, k_proj, v_proj (heads · head_dim each); the decay input through the low-rank
    f_a_proj (head_dim) → f_b_proj (heads · head_dim); b_proj (β logits, one per head); the output
    gate through the low-rank g_a_proj (head_dim) → g_b_proj; the core (conv, delta rule, gated
    RMSNorm; `KDA`); out_proj back to d_model. No biases, as the published layer."""

    def __init__(self, d_model: int, heads: int, head_dim: int, *, conv_size: int = 4, chunk: int = 64,
                 form: str = "auto", norm_eps: float = 1e-6, cache_key: str = ""):
        super().__init__(heads, head_dim, conv_size=conv_size, chunk=chunk, form=form, norm_eps=norm_eps,
                         cache_key=cache_key)
        width = heads * head_dim
        self.q_proj = nn.Parameter(torch.empty(width, d_model))
        self.k_proj = nn.Parameter(torch.empty(width, d_model))
        self.v_proj = nn.Parameter(torch.empty(width, d_model))
        self.f_a_proj = nn.Parameter(torch.empty(head_dim, d_model))
        self.f_b_proj = nn.Parameter(torch.empty(width, head_dim))
        self.b_proj = nn.Parameter(torch.empty(heads, d_model))
        self.g_a_proj = nn.Parameter(torch.empty(head_dim, d_model))
        self.g_b_proj = nn.Parameter(torch.empty(width, head_dim))
        self.out_proj = nn.Parameter(torch.empty(d_model, width))
        for p in (self.q_proj, self.k_proj, self.v_proj, self.f_a_proj, self.f_b_proj, self.b_proj, self.g_a_proj,
                  self.g_b_proj, self.out_proj):
            nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        q, k, v = F.linear(x, self.q_proj), F.linear(x, self.k_proj), F.linear(x, self.v_proj)  # (B, T, H·dk)
        f = F.linear(F.linear(x, self.f_a_proj), self.f_b_proj)  # (B, T, H·dk) the decay input
        gate = F.linear(F.linear(x, self.g_a_proj), self.g_b_proj)  # (B, T, H·dk)
        o = super().forward(q, k, v, f, F.linear(x, self.b_proj), gate, ctx=ctx)  # (B, T, H·dk)
        return F.linear(o, self.out_proj)  # (B, T, C)
