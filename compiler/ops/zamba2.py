"""Zamba2's hybrid wiring: a block that reads the stack's input beside the residual stream and
hands its output, through a projection of its own per use, to the next layer's mixer input."""

from __future__ import annotations

from .base import Cost, OpDef, Saved, WeightlessOp, attr, register


@register
class ConcatStackInput(WeightlessOp):
    """concat(x, x0) along the channels, x0 the stack's input (the token embeddings), which the
    model hands every layer in ctx.carry."""

    name = "concat_stack_input"
    summary = "the residual stream beside the stack's input: concat(x, x0), twice as wide"
    attrs = {"d_model": attr(int)}
    arity = (1, 1)
    picture = "other"

    def verify(self, node, d, widths, ctx):
        if widths and widths[0] != d["attrs"]["d_model"]:
            ctx.fail(node, f"concat_stack_input reads a {d['attrs']['d_model']}-wide stream, got {widths[0]}")

    def call(self, d, args, emit):
        return f"rt.concat_stack_input({args[0]}, ctx)"


@register
class PerUseLinear(OpDef):
    """y = W_u h without bias, W_u (out x in) the weight of use u of a shared block (the layer
    index of the use in its stack): Zamba2's `linear` after each use of its shared transformer."""

    name = "per_use_linear"
    summary = "a projection with its own weight per use of a shared block"
    attrs = {
        "in_features": attr(int), "out_features": attr(int),
        "uses": attr(list, doc="the layer indices, in the stack, of the block's uses"),
    }
    arity = (1, 1)
    picture = "other"

    def params(self, a, shape):
        return {f"weight.{use}": (a["out_features"], a["in_features"]) for use in a["uses"]}

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if widths and widths[0] != a["in_features"]:
            ctx.fail(node, f"per_use_linear reads {a['in_features']} features, got {widths[0]}")
        if not a["uses"] or len(set(a["uses"])) != len(a["uses"]):
            ctx.fail(node, f"per_use_linear needs distinct uses, got {a['uses']}")

    def category(self, d):
        return "attention"  # the output projection of Zamba2's shared attention block

    def cost(self, d, ctx):
        a = d["attrs"]
        return Cost(flops=2 * a["in_features"] * a["out_features"])

    def module(self, d, emit):
        a = d["attrs"]
        return f"rt.PerUseLinear({a['in_features']}, {a['out_features']}, uses={tuple(a['uses'])!r})"

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"


@register
class HandOff(WeightlessOp):
    """Puts t where the next layer takes it (ctx.carry) and passes x on unchanged."""

    name = "hand_off"
    summary = "hand a value to the next layer's mixer input; pass the stream on unchanged"
    attrs = {}
    arity = (2, 2)
    picture = "other"

    def verify(self, node, d, widths, ctx):
        if len({w for w in widths if isinstance(w, int)}) > 1:
            ctx.fail(node, f"hand_off of a value of another width than the stream: {widths}")

    def saved(self, d, ctx):
        return Saved(inputs=())

    def call(self, d, args, emit):
        return f"rt.hand_off({args[0]}, {args[1]}, ctx)"


@register
class TakeHandOff(WeightlessOp):
    """x + t, t what the previous layer handed off (a hybrid block's output); x where it handed
    nothing (the same block kind also follows layers that hand nothing)."""

    name = "take_hand_off"
    summary = "the stream plus what the previous layer handed off, if anything"
    attrs = {}
    arity = (1, 1)
    picture = "other"

    def saved(self, d, ctx):
        return Saved(inputs=())

    def call(self, d, args, emit):
        return f"rt.take_hand_off({args[0]}, ctx)"
