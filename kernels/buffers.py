"""Output buffers for kernels. Tests set POISON so every buffer starts as NaN: an element a
kernel forgot to write then shows up in the comparison with the reference."""

from __future__ import annotations

import torch

POISON = False


def empty(*shape, **kwargs) -> torch.Tensor:
    t = torch.empty(*shape, **kwargs)
    return t.fill_(float("nan")) if POISON and t.is_floating_point() else t


def empty_like(x: torch.Tensor, **kwargs) -> torch.Tensor:
    t = torch.empty_like(x, **kwargs)
    return t.fill_(float("nan")) if POISON and t.is_floating_point() else t
