"""Dense projections: the linears of attention and FFNs, the LM head and BERT's pooler."""

from __future__ import annotations

from .base import Cost, HeadOp, OpDef, attr, register

_FFN_PREFIXES = ("gate", "up", "down")


@register
class Linear(OpDef):
    name = "linear"
    summary = "y = x W^T (+ b)"
    attrs = {"in_features": attr(int), "out_features": attr(int), "bias": attr(bool),
             "parts": attr(list, default=None, doc="(name, width) of the projections a fusion joined, in order")}
    arity = (1, 1)
    picture = "other"
    is_projection = True
    hf_params = {"weight": "weight", "bias": "bias"}

    def params(self, a, shape):
        params = {"weight": (a["out_features"], a["in_features"])}
        if a["bias"]:
            params["bias"] = (a["out_features"],)
        return params

    def verify(self, node, d, widths, ctx):
        if widths and widths[0] != d["attrs"]["in_features"]:
            ctx.fail(node, f"projection expects width {d['attrs']['in_features']}, its input has {widths[0]}")

    def category(self, d):
        if d["name"] == "embed_proj":  # ALBERT's projection of its narrow embeddings
            return "embedding"
        return "ffn" if d["name"].startswith(_FFN_PREFIXES) else "attention"

    def cost(self, d, ctx):
        return Cost(flops=2 * d["attrs"]["in_features"] * d["attrs"]["out_features"])

    def module(self, d, emit):
        a = d["attrs"]
        return f"nn.Linear({a['in_features']}, {a['out_features']}, bias={a['bias']!r})"

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]})"


@register
class LmHead(OpDef):
    name = "lm_head"
    summary = "projection to the vocabulary; tied reads the embedding table"
    attrs = {"vocab": attr(int), "dim": attr(int), "tied": attr(bool)}
    arity = (1, 1)
    picture = "head"
    starts_head = True
    hf_params = {"weight": "weight"}

    def params(self, a, shape):
        return {} if a["tied"] else {"weight": (a["vocab"], a["dim"])}

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if a["tied"]:
            emb = ctx.g.nodes.get("embed")
            if emb is None or tuple(emb["params"].get("weight", ())) != (a["vocab"], a["dim"]):
                ctx.fail(node, "tied embeddings need an embedding table of the same shape as the output head")

    def category(self, d):
        return "head"

    def cost(self, d, ctx):
        return Cost(flops=2 * d["attrs"]["vocab"] * d["attrs"]["dim"])

    def module(self, d, emit):
        a = d["attrs"]
        return None if a["tied"] else f"nn.Linear({a['dim']}, {a['vocab']}, bias=False)"

    def call(self, d, args, emit):
        return f"F.linear({args[0]}, self.embed.weight)" if d["attrs"]["tied"] else f"self.{d['name']}({args[0]})"


@register
class Pooler(HeadOp):
    name = "pooler"
    summary = "tanh(dense(first token)), or another activation"
    attrs = {"dim": attr(int), "act": attr(str, default=None, doc="the activation; None: tanh")}
    hf_params = {"weight": "dense.weight", "bias": "dense.bias"}

    def params(self, a, shape):
        return {"weight": (a["dim"], a["dim"]), "bias": (a["dim"],)}

    def module(self, d, emit):
        return f"nn.Linear({d['attrs']['dim']}, {d['attrs']['dim']})"

    def call(self, d, args, emit):
        from .elementwise import ACT_CALL

        return ACT_CALL[d["attrs"]["act"] or "tanh"].format(f"self.{d['name']}({args[0]}[:, 0])")
