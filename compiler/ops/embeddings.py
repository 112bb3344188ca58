"""Token, position and token-type embeddings added at the bottom of the model."""

from __future__ import annotations

from .base import Cost, OpDef, Saved, attr, register


class _Embedding(OpDef):
    abstract = True
    picture = "embedding"

    def category(self, d):
        return "embedding"

    def saved(self, d, ctx):
        return Saved(inputs=())  # only the token ids, which are not activations

    def cost(self, d, ctx):
        return Cost()  # a table lookup: no multiply-accumulates


@register
class Embedding(_Embedding):
    name = "embedding"
    summary = "token embedding table"
    attrs = {
        "vocab": attr(int), "dim": attr(int),
        "scale": attr(float, default=None, doc="multiply the embeddings (Gemma: sqrt(d_model))"),
        "shared_with": attr(str, default=None, doc="read another embedding's table (a decoder's shared input embedding)"),
        "scale_in_dtype": attr(bool, default=None, doc="round the scale to the table's dtype first (Gemma)"),
    }
    arity = (1, 1)
    hf_params = {"weight": "weight"}

    def params(self, a, shape):
        return {} if a["shared_with"] else {"weight": (a["vocab"], a["dim"])}

    def module(self, d, emit):
        a = d["attrs"]
        return None if a["shared_with"] else f"nn.Embedding({a['vocab']}, {a['dim']})"

    def call(self, d, args, emit):
        a = d["attrs"]
        table = f"self.{a['shared_with']}" if a["shared_with"] else f"self.{d['name']}"
        expr = f"{table}({args[0]})"
        if a["scale"] and a["scale_in_dtype"]:  # as HF Gemma's torch.tensor(normalizer, dtype=...)
            return f"{expr} * torch.tensor({a['scale']!r}, dtype={table}.weight.dtype)"
        return f"{expr} * {a['scale']!r}" if a["scale"] else expr


@register
class PosEmbedding(_Embedding):
    name = "pos_embedding"
    summary = "absolute position embeddings, read at ctx.positions"
    attrs = {"kind": attr(str, doc="learned | sinusoidal"), "context": attr(int), "dim": attr(int)}
    arity = (0, 0)
    hf_params = {"weight": "weight"}

    def params(self, a, shape):
        return {"weight": (a["context"], a["dim"])} if a["kind"] == "learned" else {}

    def module(self, d, emit):
        a = d["attrs"]
        if a["kind"] == "learned":
            return f"rt.LearnedPositions({a['context']}, {a['dim']})"
        return f"rt.SinusoidalPositions({a['context']}, {a['dim']})"

    def call(self, d, args, emit):
        return f"self.{d['name']}(ctx.positions)"


@register
class TypeEmbedding(_Embedding):
    name = "type_embedding"
    summary = "token-type (segment) embeddings, read at ctx.token_type_ids"
    attrs = {"type_vocab": attr(int), "dim": attr(int)}
    arity = (0, 0)
    hf_params = {"weight": "weight"}

    def params(self, a, shape):
        return {"weight": (a["type_vocab"], a["dim"])}

    def module(self, d, emit):
        a = d["attrs"]
        return f"nn.Embedding({a['type_vocab']}, {a['dim']})"

    def call(self, d, args, emit):
        return f"self.{d['name']}(ctx.token_type_ids)"
