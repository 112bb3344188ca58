"""Mixture-of-Depths (Raposo et al. 2024): a block that only some tokens of each sequence run.

A router scores every token, r_i = w . x_i. In training, and by default in evaluation, the top
k = ceil(capacity * T) tokens of each sequence run the block; a chosen token's output is
x_i + r_i (f(x_i) - x_i), so the router gets gradients, and the others pass unchanged. Top-k over
a sequence is not causal: a token's routing depends on later tokens. Generation therefore uses
*causal routing*, a per-token decision: the predictor's logit > 0 (a small MLP on the detached
block input, trained with BCE to predict top-k membership), or, without a predictor, the sign
of the router's score (the BCE then trains the router itself). A cache implies causal routing;
without one, `depth_routing(model, "causal")` asks for it (`generate` does).

Each sequence's chosen tokens run the block as a shorter sequence of their own, at their own
positions (RoPE, ALiBi, windows and the causal mask read positions, so they see exactly the
chosen tokens), one sequence at a time: the chosen positions differ between sequences. Each
sequence keeps its own cache entries, under `route{b}/`.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from dataclasses import replace
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from archlang.spec.errors import ArchError

from .context import Context, ScopedCache

ROUTING_MODES = ("topk", "causal")


def routed_count(capacity: float, tokens: int) -> int:
    """k = ceil(capacity * T), read through a rounding so that 0.1 * 30 gives 3, not 4."""
    return min(tokens, math.ceil(round(capacity * tokens, 9)))


class DepthRouter(nn.Module):
    left_padding_exact = False  # it refuses a padding mask; each row routes alone
    def __init__(self, d_model: int, *, capacity: float, predictor_hidden: int | None = None,
                 aux_loss: float = 0.0):
        super().__init__()
        if not 0 < capacity <= 1:
            raise ArchError(f"depth router capacity must be in (0, 1], got {capacity}", kind="runtime")
        self.capacity, self.aux_loss = capacity, aux_loss
        self.router = nn.Linear(d_model, 1, bias=False)
        self.predictor = None
        if predictor_hidden:
            self.predictor = nn.Sequential(OrderedDict(
                hidden=nn.Linear(d_model, predictor_hidden), act=nn.SiLU(), out=nn.Linear(predictor_hidden, 1)))
        self.routing = "topk"  # in evaluation without a cache; see depth_routing()

    def causal_logits(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(B, T) logits of the per-token decision: > 0 runs the block. The predictor reads a
        stop-gradient of x, so its loss never reaches the layers below."""
        if self.predictor is None:
            return scores
        return self.predictor(x.detach()).squeeze(-1)

    def choose(self, x: torch.Tensor, scores: torch.Tensor, ctx: Context) -> torch.Tensor:
        """(B, T) bool: which tokens run the block; adds the BCE of the causal decision in training."""
        b, t = scores.shape
        if self.training and ctx.cache is not None:
            raise ArchError("a depth-routed model trains without a cache", kind="usage",
                            hint="call the model without `cache` in training, or call model.eval()")
        if ctx.cache is not None or (self.routing == "causal" and not self.training):
            return self.causal_logits(x, scores) > 0
        top = scores.topk(routed_count(self.capacity, t), dim=1).indices  # (B, k)
        chosen = torch.zeros_like(scores, dtype=torch.bool).scatter(1, top, True)
        if self.training and self.aux_loss:
            bce = F.binary_cross_entropy_with_logits(self.causal_logits(x, scores).float(), chosen.float())
            ctx.aux_losses.append(self.aux_loss * bce)
        return chosen

    def forward(self, block: Callable[[torch.Tensor, Context], torch.Tensor], x: torch.Tensor,
                ctx: Context) -> torch.Tensor:
        if ctx.attention_mask is not None or ctx.memory is not None:
            raise ArchError("a depth-routed block does not take an attention mask or encoder memory", kind="usage",
                            hint="give sequences without padding (one at a time, or of equal length)")
        scores = self.router(x).squeeze(-1)  # (B, T) r_i
        chosen = self.choose(x, scores, ctx)
        rows = []
        for b in range(x.shape[0]):
            index = chosen[b].nonzero().squeeze(1)  # (k,) ascending positions
            if index.numel() == 0:
                rows.append(x[b])
                continue
            picked = x[b:b + 1].index_select(1, index)  # (1, k, C)
            out = block(picked, self._row_context(ctx, b, index))  # (1, k, C)
            rows.append(x[b].index_add(0, index, scores[b, index, None] * (out[0] - picked[0])))
        return torch.stack(rows)  # (B, T, C)

    @staticmethod
    def _row_context(ctx: Context, b: int, index: torch.Tensor) -> Context:
        """Sequence b's chosen tokens as a forward of their own: their positions, the position
        tables at those positions, their own cache entries."""
        t = len(ctx.positions)
        tables = {name: _at(value, index, t) for name, value in ctx.tables.items()}
        return replace(ctx, positions=ctx.positions.index_select(0, index), tables=tables,
                       cache=ScopedCache(ctx.cache, f"route{b}") if ctx.cache is not None else None,
                       token_type_ids=(ctx.token_type_ids[b:b + 1].index_select(1, index)
                                       if ctx.token_type_ids is not None else None),
                       input_ids=ctx.input_ids[b:b + 1].index_select(1, index) if ctx.input_ids is not None else None)

    def extra_repr(self) -> str:
        return (f"capacity={self.capacity}, predictor={self.predictor is not None}, aux_loss={self.aux_loss}, "
                f"routing={self.routing}")


def _at(value, index: torch.Tensor, tokens: int):
    """A table at the chosen positions: RoPE's (cos, sin) have a row per position; the other
    tables (ALiBi slopes, the relative-bias module) are read by position inside attention."""
    if isinstance(value, tuple) and all(isinstance(v, torch.Tensor) and v.shape[0] == tokens for v in value):
        return tuple(v.index_select(0, index) for v in value)
    return value


def set_depth_routing(model: nn.Module, mode: str) -> None:
    """How every depth router of `model` chooses in evaluation without a cache: "topk" (as in
    training, for scoring) or "causal" (the per-token decision generation uses)."""
    if mode not in ROUTING_MODES:
        raise ArchError(f"unknown depth routing {mode!r}", kind="usage", hint=f"one of {', '.join(ROUTING_MODES)}")
    for module in model.modules():
        if isinstance(module, DepthRouter):
            module.routing = mode


@contextlib.contextmanager
def depth_routing(model: nn.Module, mode: str) -> Iterator[None]:
    """`with depth_routing(model, "causal"): ...`, restoring each router's mode afterwards."""
    before = {m: m.routing for m in model.modules() if isinstance(m, DepthRouter)}
    set_depth_routing(model, mode)
    try:
        yield
    finally:
        for module, mode_before in before.items():
            module.routing = mode_before
