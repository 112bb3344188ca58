"""Feed-forward helpers the generated code calls: the packed GLU and logit soft-capping."""

from __future__ import annotations

import torch

from archlang.kernels import dispatch


def glu(x: torch.Tensor, act: str) -> torch.Tensor:
    """act(gate) * up, for x holding [gate | up] on its last dimension."""
    return dispatch.glu(x, act)


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap
