"""Per-use low-rank adapters on the projections of a shared block (Zamba2): the block's weights
are one set, and each use adds its own B A x to the adapted projections' outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlang.spec.errors import ArchError

from .context import Context


class LoRA(nn.Module):
    """y + B_u (A_u h) for the use u being run (ctx.layer, the layer index in the stack).

    A_u is (rank, in), B_u (out, rank), no scaling, both initialised normal(0, 0.02), as
    Hugging Face's Zamba2 builds its adapters (nn.Linear(in, rank), nn.Linear(rank, out), no bias)
    and initialises every linear. They are named by the use's layer index: `A.3`, `B.3`."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, uses: tuple[int, ...]):
        super().__init__()
        self.in_features, self.out_features, self.rank, self.uses = in_features, out_features, rank, tuple(uses)
        self.A = nn.ParameterDict({str(u): nn.Parameter(torch.randn(rank, in_features) * 0.02) for u in uses})
        self.B = nn.ParameterDict({str(u): nn.Parameter(torch.randn(out_features, rank) * 0.02) for u in uses})

    def forward(self, h: torch.Tensor, y: torch.Tensor, ctx: Context) -> torch.Tensor:
        use = str(ctx.layer)
        if use not in self.A:
            raise ArchError(f"this adapter has uses {list(self.uses)}, not layer {ctx.layer}", kind="runtime",
                            hint="call a shared layer with ctx.for_layer(stack, index)")
        return y + F.linear(F.linear(h, self.A[use]), self.B[use])  # (B, T, out)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, uses={self.uses}"
