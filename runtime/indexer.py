"""DeepSeek-V3.2's lightning indexer (DeepSeek Sparse Attention): for each query, a mask of the
`top_k` visible keys its latent attention keeps. It keeps its own key cache beside the layer's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import _append, _key_mask
from .context import Context
from .position import apply_rope


class LightningIndexer(nn.Module):
    """index_score[t, s] = sum_h w[t, h] * relu(q[t, h] · k[s]) / sqrt(head_dim), with
    q = wq_b(query latent) per head, k = LayerNorm(wk(x)) shared by the heads (its first
    `rope_dim` channels rotated as halves, as DeepseekV32Indexer does), and
    w = weights_proj(x) / sqrt(heads). Each query keeps its `top_k` best visible keys.

    DeepSeek's FP8 scoring and Hadamard rotation are precision devices that leave q·k unchanged;
    the scores here are taken in float32. The choice is discrete, so no gradient flows through
    it (HF's indexer runs under no_grad too): the indexer's weights are trained by their own loss.
    """
    left_padding_exact = True  # padded keys are never selected

    def __init__(self, heads: int, head_dim: int, top_k: int, d_model: int, q_lora_rank: int, *, causal: bool,
                 rope_dim: int | None = None, norm_eps: float = 1e-6, cache_key: str = ""):
        super().__init__()
        self.heads, self.head_dim, self.top_k, self.causal = heads, head_dim, top_k, causal
        self.rope_dim, self.norm_eps, self.cache_key = rope_dim, norm_eps, f"{cache_key}/indexer"
        self.wq_b = nn.Parameter(torch.empty(heads * head_dim, q_lora_rank))
        self.wk = nn.Parameter(torch.empty(head_dim, d_model))
        self.k_norm = nn.Parameter(torch.ones(head_dim))
        self.k_norm_bias = nn.Parameter(torch.zeros(head_dim))
        self.weights_proj = nn.Parameter(torch.empty(heads, d_model))
        for w in (self.wq_b, self.wk, self.weights_proj):
            nn.init.normal_(w, std=0.02)

    @torch.no_grad()
    def scores(self, x: torch.Tensor, q_latent: torch.Tensor, rope=None, *, ctx: Context) -> torch.Tensor:
        """The index scores (B, T, S) of every query against every cached key, masked keys at -inf."""
        b, t, _ = x.shape
        q = F.linear(q_latent, self.wq_b).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = F.layer_norm(F.linear(x, self.wk), (self.head_dim,), self.k_norm, self.k_norm_bias, self.norm_eps)
        k = k[:, None]  # (B, 1, T, D)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        state = _append(ctx, self.cache_key, None, k=k, pos=ctx.positions)
        k, k_pos = state["k"], state["pos"]  # (B, 1, S, D), (S,)
        # the same products, in the same order, as DeepseekV32Indexer: (B, T, H, D) @ (B, 1, D, S)
        per_head = torch.matmul(q.transpose(1, 2).float(), k.transpose(-1, -2).float()) * self.head_dim**-0.5
        per_head = F.relu(per_head)  # (B, T, H, S)
        weights = F.linear(x, self.weights_proj).float() * self.heads**-0.5  # (B, T, H)
        scores = torch.matmul(weights.unsqueeze(-2), per_head).squeeze(-2)  # (B, T, S)
        visible = None
        if self.causal:
            visible = (ctx.positions[:, None] >= k_pos[None, :])[None]  # (1, T, S)
        key_mask = _key_mask(ctx, k_pos.shape[0])
        if key_mask is not None:
            padding = key_mask[:, None, :].bool()
            visible = padding if visible is None else visible & padding
        return scores if visible is None else scores.masked_fill(~visible, float("-inf"))

    def forward(self, x: torch.Tensor, q_latent: torch.Tensor, rope=None, *, ctx: Context) -> torch.Tensor:
        """(B, T, S) boolean: True where query t's attention keeps key s."""
        scores = self.scores(x, q_latent, rope, ctx=ctx)
        # ReLU makes exact ties (zeros) common; a stable sort gives them to the earliest keys, the
        # same choice in a full forward and in a cached decode step (topk's choice depends on shape)
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
        chosen = order[..., : min(self.top_k, scores.shape[-1])]
        # a query with fewer visible keys than top_k also "keeps" masked ones; its attention masks them
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, chosen, True)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}, top_k={self.top_k}, rope_dim={self.rope_dim}"
