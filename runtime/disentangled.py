"""DeBERTa's disentangled attention (the compiler's `disentangled_attention` op) and the relative
embedding table its layers share (`rel_embedding`).

Scores of query i and key j (He et al. 2021, eq. 4; DeBERTaV3 keeps them):
    (q_i·k_j + q_i·kr_δ(i,j) + k_j·qr_δ(i,j)) / sqrt(head_dim · (1 + terms))
kr = the table through pos_k (or k_proj with shared keys), qr = through pos_q (or q_proj), and
δ(i,j) = clamp(bucket(i - j) + span, 0, 2·span - 1). Positions are absolute token positions,
so one code path serves a whole sequence and a cached decoding step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlang.kernels import reference
from archlang.kernels.dispatch import layer_norm

from .attention import _append, _heads, _key_mask, _merge
from .context import Context


def log_bucket(distance: torch.Tensor, buckets: int, max_position: int) -> torch.Tensor:
    """DeBERTa's bucketed distance: kept as is while |d| <= buckets / 2, beyond that
    sign(d) · (mid + ceil(log(|d| / mid) / log((max_position - 1) / mid) · (mid - 1))), mid = buckets / 2
    (in float32, as the reference computes it)."""
    mid = buckets // 2
    sign = torch.sign(distance)
    near = (distance < mid) & (distance > -mid)
    magnitude = torch.where(near, torch.full_like(distance, mid - 1), distance.abs()).float()
    log_pos = torch.ceil(torch.log(magnitude / mid) / torch.log(torch.tensor((max_position - 1) / mid))
                         * (mid - 1)) + mid
    return torch.where(magnitude <= mid, distance.float(), log_pos * sign).long()


def relative_index(q_pos: torch.Tensor, k_pos: torch.Tensor, span: int, buckets: int | None,
                   max_relative: int) -> torch.Tensor:
    """(T, S) rows of the relative table: bucket(i - j) + span, clamped to the table."""
    distance = q_pos[:, None].long() - k_pos[None, :].long()
    if buckets is not None:
        distance = log_bucket(distance, buckets, max_relative)
    return (distance + span).clamp(0, 2 * span - 1)


class RelativeEmbeddings(nn.Module):
    """The 2·span relative embeddings of a stack, layer-normalised where `norm` is given."""

    def __init__(self, rows: int, dim: int, *, norm: str | None = None, eps: float = 1e-7, norm_bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.randn(rows, dim) * 0.02)
        self.norm_weight = nn.Parameter(torch.ones(dim)) if norm else None
        self.norm_bias = nn.Parameter(torch.zeros(dim)) if norm and norm_bias else None

    def forward(self) -> torch.Tensor:
        if self.norm_weight is None:
            return self.weight
        return layer_norm(self.weight, self.norm_weight, self.norm_bias, self.eps, None)  # (2·span, C)


class DisentangledAttention(nn.Module):
    """Content and relative-position attention, its projections included: x (B, T, C) → (B, T, H·D)."""

    def __init__(self, d_model: int, heads: int, head_dim: int, *, terms: tuple[str, ...], span: int,
                 buckets: int | None, max_relative: int, share_keys: bool = False, bias: bool = True,
                 causal: bool = False, dropout: float = 0.0, rel_dropout: float = 0.0, cache_key: str = ""):
        super().__init__()
        self.heads, self.head_dim, self.terms = heads, head_dim, tuple(terms)
        self.span, self.buckets, self.max_relative = span, buckets, max_relative
        self.share_keys, self.causal, self.cache_key = share_keys, causal, cache_key
        self.dropout, self.rel_dropout = dropout, rel_dropout
        # scores and both relative terms share one divisor (the paper's sqrt(3d) with both terms)
        self.denominator = math.sqrt(head_dim * (1 + len(self.terms)))
        width = heads * head_dim
        names = ["q", "k", "v"]
        if not share_keys:
            names += ["pos_k"] * ("c2p" in self.terms) + ["pos_q"] * ("p2c" in self.terms)
        for n in names:
            setattr(self, f"{n}_weight", nn.Parameter(torch.randn(width, d_model) * 0.02))
            setattr(self, f"{n}_bias", nn.Parameter(torch.zeros(width)) if bias else None)

    def _project(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"))

    def position_scores(self, q, k, q_pos, k_pos, rel_embeddings) -> torch.Tensor:
        """The c2p and p2c terms, already divided: (B, H, T, S)."""
        b, h, t, s = q.shape[0], self.heads, q.shape[2], k.shape[2]
        index = relative_index(q_pos, k_pos, self.span, self.buckets, self.max_relative)  # (T, S)
        table = F.dropout(rel_embeddings[: 2 * self.span], self.rel_dropout, self.training)[None]  # (1, 2·span, C)
        score = q.new_zeros(b, h, t, s)
        if "c2p" in self.terms:
            pos_k = _heads(self._project(table, "k" if self.share_keys else "pos_k"), h, self.head_dim)
            c2p = q @ pos_k.transpose(-1, -2)  # (B, H, T, 2·span)
            score = score + c2p.gather(-1, index.expand(b, h, t, s))
        if "p2c" in self.terms:
            pos_q = _heads(self._project(table, "q" if self.share_keys else "pos_q"), h, self.head_dim)
            p2c = k @ pos_q.transpose(-1, -2)  # (B, H, S, 2·span): key j against the queries of the positions
            score = score + p2c.gather(-1, index.t().expand(b, h, s, t)).transpose(-1, -2)
        return score / self.denominator

    def forward(self, x: torch.Tensor, *, ctx: Context, rel_embeddings: torch.Tensor) -> torch.Tensor:
        q = _heads(self._project(x, "q"), self.heads, self.head_dim)  # (B, H, T, D)
        k = _heads(self._project(x, "k"), self.heads, self.head_dim)
        v = _heads(self._project(x, "v"), self.heads, self.head_dim)
        q_pos = ctx.positions
        state = _append(ctx, self.cache_key, None, k=k, v=v, pos=q_pos)
        k, v, k_pos = state["k"], state["v"], state["pos"]
        bias = self.position_scores(q, k, q_pos, k_pos, rel_embeddings)
        drop = self.dropout if self.training else 0.0
        # the reference core: its bias is per sequence (B, H, T, S), which the fused kernel does not take
        out = reference.attention(q, k, v, q_pos, k_pos, causal=self.causal, scale=1 / self.denominator, bias=bias,
                                  key_mask=_key_mask(ctx, k.shape[2]), dropout=drop)
        return _merge(out)  # (B, T, H·D)

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, head_dim={self.head_dim}, terms={self.terms}, span={self.span}, "
                f"buckets={self.buckets}, share_keys={self.share_keys}, causal={self.causal}")
