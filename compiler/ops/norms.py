"""LayerNorm and RMSNorm, alone or fused with the residual add before them."""

from __future__ import annotations

from .base import Cost, OpDef, Saved, attr, register


@register
class Norm(OpDef):
    name = "norm"
    summary = "LayerNorm or RMSNorm over the last dim"
    attrs = {"kind": attr(str, doc="layernorm | rmsnorm"), "dim": attr(int), "eps": attr(float), "bias": attr(bool),
             "unit_offset": attr(bool, doc="RMSNorm weight stored as w - 1 (Gemma)")}
    arity = (1, 1)
    picture = "norm"
    hf_params = {"weight": "weight", "bias": "bias"}

    def params(self, a, shape):
        params = {"weight": (a["dim"],)}
        if a["bias"]:
            params["bias"] = (a["dim"],)
        return params

    def verify(self, node, d, widths, ctx):
        dim = d["attrs"]["dim"]
        if any(w != dim for w in widths if isinstance(w, int)):
            ctx.fail(node, f"norm over {dim} channels applied to width {widths[-1] if len(widths) == 1 else widths}")

    def category(self, d):
        return "norm"

    def cost(self, d, ctx):
        return Cost()  # element-wise

    def module(self, d, emit):
        a = d["attrs"]
        if a["kind"] == "rmsnorm":
            return f"rt.RMSNorm({a['dim']}, eps={a['eps']!r}, unit_offset={a['unit_offset']!r})"
        return f"rt.LayerNorm({a['dim']}, eps={a['eps']!r}, bias={a['bias']!r})"

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]})"


@register
class AddNorm(Norm):
    name = "add_norm"
    summary = "fused residual add + norm; inputs (residual, branch), outputs (sum, normed)"
    arity = (2, 2)

    def saved(self, d, ctx):
        return Saved(inputs=(), outputs=(0,))  # the sum, which the norm's backward reads

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[1]}, residual={args[0]})"
