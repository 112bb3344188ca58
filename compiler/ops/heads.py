"""Encoder task heads: BERT's masked-LM head, the sequence classifier on the pooled token, and
ModernBERT's own pooling (first token or masked mean) and dense-activation-norm transform."""

from __future__ import annotations

from .base import Cost, HeadOp, WeightlessOp, attr, register


@register
class MLMHead(HeadOp):
    name = "mlm_head"
    summary = "dense(d → d), activation, norm, then onto the vocabulary (+ a bias per token id)"
    attrs = {"vocab": attr(int), "dim": attr(int), "act": attr(str), "norm": attr(str, doc="layernorm | rmsnorm"),
             "eps": attr(float), "norm_bias": attr(bool), "tied": attr(bool, doc="the decoder is the embedding table"),
             "bias": attr(bool, doc="an output bias per token id"),
             "width": attr(int, default=None, doc="the dense layer's output: the embedding width (ALBERT); "
                                                 "default dim"),
             "dense_bias": attr(bool, default=True, doc="the dense layer's bias (off: ModernBERT's classifier_bias)")}
    hf_params = {"dense_weight": "transform.dense.weight", "dense_bias": "transform.dense.bias",
                 "norm_weight": "transform.LayerNorm.weight", "norm_bias": "transform.LayerNorm.bias",
                 "bias": "bias"}  # BERT's tied head: its decoder is the embedding table

    def params(self, a, shape):
        d, w = a["dim"], a["width"] or a["dim"]
        params = {"dense_weight": (w, d), "dense_bias": (w,), "norm_weight": (w,)}
        if not a["dense_bias"]:
            del params["dense_bias"]
        if a["norm_bias"]:
            params["norm_bias"] = (w,)
        if not a["tied"]:
            params["decoder_weight"] = (a["vocab"], w)
        if a["bias"]:
            params["bias"] = (a["vocab"],)
        return params

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if a["tied"]:
            emb = ctx.g.nodes.get("embed")
            if emb is None or tuple(emb["params"].get("weight", ())) != (a["vocab"], a["width"] or a["dim"]):
                ctx.fail(node, "a tied head needs an embedding table of the same shape")

    def cost(self, d, ctx):
        a = d["attrs"]
        w = a["width"] or a["dim"]
        return Cost(flops=2 * a["dim"] * w + 2 * a["vocab"] * w)

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.MLMHead({a['dim']}, {a['vocab']}, act={a['act']!r}, norm={a['norm']!r}, eps={a['eps']!r}, "
                f"norm_bias={a['norm_bias']!r}, tied={a['tied']!r}, bias={a['bias']!r}"
                + (f", width={a['width']!r}" if a["width"] else "")
                + (", dense_bias=False)" if not a["dense_bias"] else ")"))

    def call(self, d, args, emit):
        table = ", self.embed.weight" if d["attrs"]["tied"] else ""
        return f"self.{d['name']}({args[0]}{table})"


@register
class Classifier(HeadOp):
    name = "classifier"
    summary = "scores of each label from the pooled first token"
    attrs = {"dim": attr(int), "labels": attr(int)}
    hf_params = {"weight": "weight", "bias": "bias"}

    def params(self, a, shape):
        return {"weight": (a["labels"], a["dim"]), "bias": (a["labels"],)}

    def module(self, d, emit):
        return f"nn.Linear({d['attrs']['dim']}, {d['attrs']['labels']})"


@register
class PoolTokens(WeightlessOp):
    name = "pool_tokens"
    summary = "one vector per sequence: the first token's state, or the mean over the unmasked tokens"
    attrs = {"mode": attr(str, doc="cls | mean"), "dim": attr(int)}
    arity = (1, 1)
    picture = "head"

    def call(self, d, args, emit):
        return f"rt.pool_tokens({args[0]}, {d['attrs']['mode']!r}, ctx.attention_mask)"


@register
class HeadTransform(HeadOp):
    name = "head_transform"
    summary = "norm(act(dense(x))): ModernBERT's prediction head before its classifier"
    attrs = {"dim": attr(int), "act": attr(str), "norm": attr(str, doc="layernorm | rmsnorm"), "eps": attr(float),
             "norm_bias": attr(bool), "dense_bias": attr(bool)}
    hf_params = {"dense_weight": "dense.weight", "dense_bias": "dense.bias", "norm_weight": "norm.weight",
                 "norm_bias": "norm.bias"}  # ModernBertPredictionHead

    def params(self, a, shape):
        d = a["dim"]
        params = {"dense_weight": (d, d), "dense_bias": (d,), "norm_weight": (d,), "norm_bias": (d,)}
        for flag in ("dense_bias", "norm_bias"):
            if not a[flag]:
                del params[flag]
        return params

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.HeadTransform({a['dim']}, act={a['act']!r}, norm={a['norm']!r}, eps={a['eps']!r}, "
                f"norm_bias={a['norm_bias']!r}, dense_bias={a['dense_bias']!r})")
