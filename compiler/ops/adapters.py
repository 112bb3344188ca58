"""Low-rank adapters: per-use weights on the projections of a shared block (Zamba2)."""

from __future__ import annotations

from .base import Cost, OpDef, attr, register

_FFN_PREFIXES = ("gate", "up", "down")


@register
class LoRA(OpDef):
    """y + B_u A_u h, where u is the use of the shared block being run: the adapter reads the
    projection's input h and adds to its output y. Each use has its own A (rank x in) and
    B (out x rank), named by the layer index of the use."""

    name = "lora"
    summary = "per-use low-rank adapter added to a shared projection's output"
    attrs = {
        "in_features": attr(int), "out_features": attr(int), "rank": attr(int),
        "uses": attr(list, doc="the layer indices, in the stack, of the shared block's uses"),
    }
    arity = (2, 2)
    picture = "other"

    def params(self, a, shape):
        params = {}
        for use in a["uses"]:
            params[f"A.{use}"] = (a["rank"], a["in_features"])
            params[f"B.{use}"] = (a["out_features"], a["rank"])
        return params

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if len(widths) == 2 and widths != [a["in_features"], a["out_features"]]:
            ctx.fail(node, f"lora adapts a {a['in_features']} → {a['out_features']} projection; its inputs have "
                     f"widths {widths}")
        if not a["uses"] or len(set(a["uses"])) != len(a["uses"]):
            ctx.fail(node, f"lora needs distinct uses, got {a['uses']}")

    def category(self, d):
        return "ffn" if d["name"].startswith(_FFN_PREFIXES) else "attention"

    def cost(self, d, ctx):
        a = d["attrs"]
        return Cost(flops=2 * a["rank"] * (a["in_features"] + a["out_features"]))

    def module(self, d, emit):
        a = d["attrs"]
        return f"rt.LoRA({a['in_features']}, {a['out_features']}, rank={a['rank']}, uses={tuple(a['uses'])!r})"

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, {args[1]}, ctx)"
