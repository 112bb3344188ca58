"""Zamba2's hybrid wiring at run time: the stack's input beside the stream, the projection each
use of the shared transformer owns, and the value a layer hands to the next one's mixer input.
Both travel in ctx.carry, one dict shared by every layer's context of a forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlang.spec.errors import ArchError

from .context import Context


def concat_stack_input(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """concat(x, x0), x0 the stack's input the model put in ctx.carry["stack_input"]."""
    return torch.cat([x, ctx.carry["stack_input"]], dim=-1)  # (B, T, 2C)


def hand_off(x: torch.Tensor, t: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Leave t for the next layer's mixer input; the stream goes on as it came."""
    ctx.carry["hand_off"] = t
    return x


def take_hand_off(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """x plus what the previous layer handed off, which only it may read; x where it handed nothing."""
    t = ctx.carry.pop("hand_off", None)
    return x if t is None else x + t


class PerUseLinear(nn.Module):
    """W_u h, no bias, W_u the weight of the use u being run (ctx.layer, the layer index in the
    stack). Initialised normal(0, 0.02) as Hugging Face's
    Zamba2 initialises every linear; named by the use's layer index: `weight.3`."""

    def __init__(self, in_features: int, out_features: int, *, uses: tuple[int, ...]):
        super().__init__()
        self.in_features, self.out_features, self.uses = in_features, out_features, tuple(uses)
        self.weight = nn.ParameterDict({str(u): nn.Parameter(torch.randn(out_features, in_features) * 0.02)
                                        for u in uses})

    def forward(self, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        use = str(ctx.layer)
        if use not in self.weight:
            raise ArchError(f"this projection has uses {list(self.uses)}, not layer {ctx.layer}", kind="runtime",
                            hint="call a shared layer with ctx.for_layer(stack, index)")
        return F.linear(h, self.weight[use])  # (B, T, out)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, uses={self.uses}"
