"""Mixture-of-Depths: a router that lets only some tokens of each sequence through its layer."""

from __future__ import annotations

from .base import Cost, OpDef, attr, register


@register
class DepthRouter(OpDef):
    """Reads the layer's input and the layer's output and hands on the routed result: the layer's
    other ops run only on the tokens the router chose (its module calls them; see
    runtime/depth_router.py), a chosen token gets x + r (f(x) - x), the others pass unchanged."""

    name = "depth_router"
    summary = "Mixture-of-Depths: the layer runs on the top capacity-fraction of each sequence's tokens"
    attrs = {
        "d_model": attr(int),
        "capacity": attr(float, doc="fraction of each sequence's tokens that run the layer"),
        "predictor_hidden": attr(int, default=None, doc="width of the causal predictor MLP; none: the router's sign"),
        "aux_loss": attr(float, doc="weight of the BCE that teaches the causal decision top-k membership"),
    }
    arity = (2, 2)
    picture = "other"
    wraps_layer = True

    def params(self, a, shape):
        d, h = a["d_model"], a["predictor_hidden"]
        params = {"router.weight": (1, d)}
        if h:
            params.update({"predictor.hidden.weight": (h, d), "predictor.hidden.bias": (h,),
                           "predictor.out.weight": (1, h), "predictor.out.bias": (1,)})
        return params

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if not 0 < a["capacity"] <= 1:
            ctx.fail(node, f"depth_router capacity must be in (0, 1], got {a['capacity']}")
        if any(isinstance(w, int) and w != a["d_model"] for w in widths):
            ctx.fail(node, f"depth_router reads the layer's input and output, width {a['d_model']}; got {widths}")

    def category(self, d):
        return "other"

    def cost(self, d, ctx):
        a = d["attrs"]
        h = a["predictor_hidden"] or 0
        # the router on every token, and the predictor (it runs in training for its loss too)
        return Cost(flops=2 * a["d_model"] + 2 * (a["d_model"] * h + h))

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.DepthRouter({a['d_model']}, capacity={a['capacity']!r}, "
                f"predictor_hidden={a['predictor_hidden']!r}, aux_loss={a['aux_loss']!r})")

    def call(self, d, args, emit):
        # the layer's own input: the router hands the chosen tokens to `routed`, the layer's body
        return f"self.{d['name']}(self.routed, {args[0]}, ctx)"
