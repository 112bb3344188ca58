"""DeBERTa's disentangled attention (He et al. 2021; DeBERTaV3, He et al. 2023) and the table of
relative embeddings its layers share. The attention op owns its q/k/v projections: with
`share_keys` the same projections map the relative embeddings too."""

from __future__ import annotations

from .attention import MASK_OPTIONS, MODERN_OPTIONS, _core_saved, attended, cached
from .base import Cost, OpDef, Refusal, attr, register

_NOT_DEBERTA = "DeBERTa's disentangled attention is defined without it"
_POSITIONS_INSIDE = ("disentangled attention takes its positions from its own relative embeddings",
                     "use position = none, or learned() to add absolute positions to the embeddings as well")


@register
class RelEmbedding(OpDef):
    name = "rel_embedding"
    summary = "DeBERTa's relative position embeddings, one table (optionally normalised) shared by a stack"
    attrs = {"rows": attr(int, doc="2 · span"), "dim": attr(int),
             "norm": attr(dict, default=None, doc="{kind, eps, bias}: the table's norm (norm_rel_ebd)")}
    arity = (0, 0)
    role = "table"
    picture = "position"
    hf_params = {"weight": "rel_embeddings.weight", "norm_weight": "LayerNorm.weight", "norm_bias": "LayerNorm.bias"}

    def params(self, a, shape):
        params = {"weight": (a["rows"], a["dim"])}
        if a["norm"]:
            params["norm_weight"] = (a["dim"],)
            if a["norm"]["bias"]:
                params["norm_bias"] = (a["dim"],)
        return params

    def category(self, d):
        return "embedding"

    def cost(self, d, ctx):
        return Cost()  # a norm of a fixed table, once per forward

    def module(self, d, emit):
        a = d["attrs"]
        norm = a["norm"]
        extra = f", norm={norm['kind']!r}, eps={norm['eps']!r}, norm_bias={norm['bias']!r}" if norm else ""
        return f"rt.RelativeEmbeddings({a['rows']}, {a['dim']}{extra})"

    def call(self, d, args, emit):
        return f"self.{d['name']}()"  # the (normalised) table, computed once per forward

    def attention_keyword(self, d):
        return "rel_embeddings"


@register
class DisentangledAttention(OpDef):
    name = "disentangled_attention"
    summary = "DeBERTa's disentangled attention: content-to-content plus c2p / p2c relative terms"
    attrs = {
        "d_model": attr(int), "heads": attr(int), "head_dim": attr(int), "causal": attr(bool),
        "c2p": attr(bool), "p2c": attr(bool),
        "span": attr(int, doc="relative positions -span .. span - 1 index the table's 2 · span rows"),
        "buckets": attr(int, default=None, doc="log buckets beyond buckets / 2; None: distances clipped at span"),
        "max_relative": attr(int, doc="the distance the log buckets reach"),
        "share_keys": attr(bool, doc="the table goes through q_proj / k_proj rather than pos_q / pos_k"),
        "bias": attr(bool), "dropout": attr(float, default=None, doc="on the attention probabilities"),
        "rel_dropout": attr(float, default=None, doc="on the relative embeddings each layer reads"),
    }
    arity = (2, 2)
    picture = "attention"
    mixer_kinds = ("disentangled",)
    hf_params = {"q_weight": "query_proj.weight", "q_bias": "query_proj.bias", "k_weight": "key_proj.weight",
                 "k_bias": "key_proj.bias", "v_weight": "value_proj.weight", "v_bias": "value_proj.bias",
                 "pos_k_weight": "pos_key_proj.weight", "pos_k_bias": "pos_key_proj.bias",
                 "pos_q_weight": "pos_query_proj.weight", "pos_q_bias": "pos_query_proj.bias"}
    refused_positions = {("disentangled", p): Refusal(*_POSITIONS_INSIDE) for p in ("rope", "alibi", "relative")}
    refused_options = {("disentangled", option): Refusal(_NOT_DEBERTA, f"remove {option}")
                       for option in ("window", "softcap", "scale", "output_gate", *MODERN_OPTIONS, *MASK_OPTIONS)}
    refused_options[("disentangled", "scale")] = Refusal(
        "its scores are divided by sqrt(head_dim · (1 + the number of terms)), as DeBERTa's are", "remove scale")

    def params(self, a, shape):
        d, width = a["d_model"], a["heads"] * a["head_dim"]
        names = ["q", "k", "v"]
        if not a["share_keys"]:
            names += ["pos_k"] * a["c2p"] + ["pos_q"] * a["p2c"]
        params = {}
        for n in names:
            params[f"{n}_weight"] = (width, d)
            if a["bias"]:
                params[f"{n}_bias"] = (width,)
        return params

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if widths[0] != a["d_model"]:
            ctx.fail(node, f"disentangled attention reads a {a['d_model']}-wide input, gets {widths[0]}")
        if widths[1] != a["d_model"]:
            ctx.fail(node, f"the relative embeddings must be {a['d_model']} wide, are {widths[1]}")
        if not (a["c2p"] or a["p2c"]):
            ctx.fail(node, "disentangled attention needs c2p, p2c or both")

    def out_width(self, d, out):
        return d["attrs"]["heads"] * d["attrs"]["head_dim"]

    def category(self, d):
        return "attention"

    def splits_heads(self, d):
        return False  # the relative terms read every head's projection of the one table

    def cost(self, d, ctx):
        """Per token: the q/k/v projections, scores and values over the keys it sees, one
        (2 · span)-wide product per relative term (then gathered), and each term's projection of
        the table (once per forward) spread over the context's tokens."""
        a = d["attrs"]
        width, terms, rows = a["heads"] * a["head_dim"], a["c2p"] + a["p2c"], 2 * a["span"]
        keys = attended(ctx.context, a["causal"], None)
        flops = 2 * 3 * a["d_model"] * width + 2 * 2 * width * keys + terms * 2 * width * rows
        flops += terms * 2 * rows * a["d_model"] * width / ctx.context
        cost = Cost(flops=flops)
        if a["causal"]:  # a decoder's cache holds each layer's keys and values
            cost.kv_bytes_per_token = 2 * width * ctx.nbytes
            cost.kv_bytes_at_context = cost.kv_bytes_per_token * cached(ctx.context, None)
        return cost

    def saved(self, d, ctx):
        a = d["attrs"]
        return _core_saved(a["heads"], ctx, a["dropout"])

    def module(self, d, emit):
        a = d["attrs"]
        terms = tuple(t for t in ("c2p", "p2c") if a[t])
        extra = "".join(f", {k}={a[k]!r}" for k in ("dropout", "rel_dropout") if a[k])
        return (f"rt.DisentangledAttention({a['d_model']}, {a['heads']}, {a['head_dim']}, terms={terms!r}, "
                f"span={a['span']}, buckets={a['buckets']!r}, max_relative={a['max_relative']}, "
                f"share_keys={a['share_keys']!r}, bias={a['bias']!r}, causal={a['causal']!r}{extra}, "
                f"cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx=ctx, rel_embeddings={args[1]})"
