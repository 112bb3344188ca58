"""ELECTRA's task heads (Clark et al. 2020): the discriminator's replaced-token detection head and
the sequence classifier with a dense layer of its own. The generator's head is `mlm_head`."""

from __future__ import annotations

from .base import Cost, HeadOp, attr, register


@register
class RTDHead(HeadOp):
    name = "rtd_head"
    summary = "dense(d → d), activation, dense(d → 1): a replaced-token logit per token"
    attrs = {"dim": attr(int), "act": attr(str)}
    hf_params = {"dense_weight": "dense.weight", "dense_bias": "dense.bias",
                 "prediction_weight": "dense_prediction.weight", "prediction_bias": "dense_prediction.bias"}

    def params(self, a, shape):
        d = a["dim"]
        return {"dense_weight": (d, d), "dense_bias": (d,), "prediction_weight": (1, d), "prediction_bias": (1,)}

    def cost(self, d, ctx):
        dim = d["attrs"]["dim"]
        return Cost(flops=2 * dim * dim + 2 * dim)

    def module(self, d, emit):
        return f"rt.RTDHead({d['attrs']['dim']}, act={d['attrs']['act']!r})"


@register
class MLPClassifier(HeadOp):
    name = "mlp_classifier"
    summary = "scores of each label from the first token: dropout, dense(d → d), activation, dropout, linear"
    attrs = {"dim": attr(int), "labels": attr(int), "act": attr(str),
             "dropout": attr(float, doc="before the dense layer and again before the output layer")}
    hf_params = {"dense_weight": "dense.weight", "dense_bias": "dense.bias",
                 "out_weight": "out_proj.weight", "out_bias": "out_proj.bias"}

    def params(self, a, shape):
        d, n = a["dim"], a["labels"]
        return {"dense_weight": (d, d), "dense_bias": (d,), "out_weight": (n, d), "out_bias": (n,)}

    def module(self, d, emit):
        a = d["attrs"]
        return f"rt.MLPClassifier({a['dim']}, {a['labels']}, act={a['act']!r}, dropout={a['dropout']!r})"
