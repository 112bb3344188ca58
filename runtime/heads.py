"""Encoder task heads (the compiler's `mlm_head`, `head_transform` and `pool_tokens` ops): BERT's
masked-LM prediction head, ModernBERT's prediction-head transform and its sequence pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlang.kernels import dispatch
from archlang.kernels.reference import ACTIVATIONS


class MLMHead(nn.Module):
    """logits = norm(act(dense(x))) · Wᵀ + b, W the embedding table when tied (passed in), else
    the head's own `decoder_weight` (Hugging Face's BertLMPredictionHead)."""

    def __init__(self, dim: int, vocab: int, *, act: str, norm: str = "layernorm", eps: float = 1e-12,
                 norm_bias: bool = True, tied: bool = True, bias: bool = True, width: int | None = None,
                 dense_bias: bool = True):
        super().__init__()
        self.act, self.norm_kind, self.eps, self.tied = act, norm, eps, tied
        width = width or dim  # ALBERT's head maps back to its narrower embedding width
        self.dense_weight = nn.Parameter(torch.empty(width, dim))
        self.dense_bias = nn.Parameter(torch.zeros(width)) if dense_bias else None
        self.norm_weight = nn.Parameter(torch.ones(width))
        self.norm_bias = nn.Parameter(torch.zeros(width)) if norm == "layernorm" and norm_bias else None
        self.decoder_weight = None if tied else nn.Parameter(torch.empty(vocab, width))
        self.bias = nn.Parameter(torch.zeros(vocab)) if bias else None
        for p in (self.dense_weight, self.decoder_weight):
            if p is not None:
                nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        h = ACTIVATIONS[self.act](F.linear(x, self.dense_weight, self.dense_bias))
        if self.norm_kind == "rmsnorm":
            h = dispatch.rms_norm(h, self.norm_weight, self.eps, False, None)
        else:
            h = dispatch.layer_norm(h, self.norm_weight, self.norm_bias, self.eps, None)
        return F.linear(h, table if self.tied else self.decoder_weight, self.bias)  # (B, T, vocab)


class HeadTransform(nn.Module):
    """norm(act(dense(x))), Hugging Face's ModernBertPredictionHead: the transform between the
    pooled (or per-token) states and a classifier."""

    def __init__(self, dim: int, *, act: str, norm: str = "layernorm", eps: float = 1e-5, norm_bias: bool = True,
                 dense_bias: bool = True):
        super().__init__()
        self.act, self.norm_kind, self.eps = act, norm, eps
        self.dense_weight = nn.Parameter(torch.empty(dim, dim))
        self.dense_bias = nn.Parameter(torch.zeros(dim)) if dense_bias else None
        self.norm_weight = nn.Parameter(torch.ones(dim))
        self.norm_bias = nn.Parameter(torch.zeros(dim)) if norm == "layernorm" and norm_bias else None
        nn.init.normal_(self.dense_weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = ACTIVATIONS[self.act](F.linear(x, self.dense_weight, self.dense_bias))
        if self.norm_kind == "rmsnorm":
            return dispatch.rms_norm(h, self.norm_weight, self.eps, False, None)
        return dispatch.layer_norm(h, self.norm_weight, self.norm_bias, self.eps, None)


def pool_tokens(x: torch.Tensor, mode: str, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per sequence from x (B, T, C): the first token's (`cls`), or the mean over the
    tokens `attention_mask` (B, T) keeps, all of them without one (`mean`)."""
    if mode == "cls":
        return x[:, 0]  # (B, C)
    if attention_mask is None:
        return x.mean(dim=1)
    keep = attention_mask[:, -x.shape[1]:, None].to(x.dtype)  # (B, T, 1)
    return (x * keep).sum(dim=1) / keep.sum(dim=1)  # (B, C)
