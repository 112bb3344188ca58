"""Norms. Each takes an optional `residual`: `norm(h, residual=x)` returns `(x + h, norm(x + h))`,
the fused residual-add + norm that the fuse-add-norm pass emits."""

from __future__ import annotations

import torch
from torch import nn

from archlang.kernels import dispatch


class RMSNorm(nn.Module):
    """x / rms(x) * w, computed in float32. With unit_offset the weight is stored as w - 1 (Gemma)."""

    def __init__(self, dim: int, eps: float = 1e-6, unit_offset: bool = False):
        super().__init__()
        self.eps, self.unit_offset = eps, unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return dispatch.rms_norm(x, self.weight, self.eps, self.unit_offset, residual)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, unit_offset={self.unit_offset}"


class LayerNorm(nn.LayerNorm):
    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(dim, eps=eps, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return dispatch.layer_norm(x, self.weight, self.bias, self.eps, residual)
