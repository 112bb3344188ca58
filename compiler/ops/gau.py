"""The Gated Attention Unit (Hua et al. 2022, FLASH): one op in place of a block's attention and
FFN, in its quadratic form or its mixed-chunk form (runtime/gau.py)."""

from __future__ import annotations

from .attention import attended
from .base import Cost, OpDef, Refusal, Saved, attr, register


@register
class GAU(OpDef):
    """`rt.GAU`: u, v, z = silu(x W_in + b_in) (widths hidden, hidden, key_dim); per-dimension
    scale and offset of z give q and k (two, or four in the mixed-chunk form); RoPE where the block
    has it (input 1: the table); the attention (relu², or softmax) times v, gated by u; W_out.

    FLOPs per token (multiply-add = 2), with e = hidden and s = key_dim: 2·d_model·(2e + s) +
    2·e·d_model (the projections); quadratic form: 2·(s + e) per attended key (scores and A·V), the
    keys of the causal or bidirectional mean over the context; mixed chunks of C: 2·(s + e) per key
    within the chunk, plus 4·s·e for the linear term (the chunk's k vᵀ and the read q·S). Cache
    (causal only): the quadratic form keeps k and v, (s + e) values per token; the mixed-chunk form
    keeps the s·e sum over completed chunks and at most C - 1 tokens' quad k, lin k and v."""

    name = "gau"
    summary = "gated attention unit (FLASH): gated single-head attention in place of attention and FFN"
    attrs = {
        "d_model": attr(int), "hidden": attr(int, doc="e = expansion · d_model: the width of u and v"),
        "key_dim": attr(int, doc="s: the width of z, q and k"),
        "scores": attr(str, doc="relu2 | softmax"), "causal": attr(bool),
        "chunk": attr(int, default=None, doc="the mixed-chunk form's chunk length (FLASH); none: quadratic"),
        "bias": attr(bool), "rope": attr(int, default=None, doc="rotated channels of q and k; none: no RoPE"),
        "length": attr(int, default=None, doc="relu2's fixed normaliser; none: n, or the row's key count causally"),
    }
    arity = (1, 2)
    picture = "attention"
    mixer_kinds = ("gau",)
    refused_positions = {
        ("gau", "alibi"): Refusal("ALiBi's per-head slopes are not defined for the GAU's single head (the paper "
                                  "uses RoPE)", "use rope(), or none"),
        ("gau", "relative"): Refusal("the paper's T5 relative-bias alternative is not implemented for the GAU",
                                     "use rope(), or none"),
    }
    hf_params = None  # no Hugging Face module implements the GAU

    @staticmethod
    def parts(a) -> int:
        """The scale-offset pairs: q and k, or quad q, quad k, lin q and lin k."""
        return 2 if a["chunk"] is None else 4

    def params(self, a, shape):
        d, e, s = a["d_model"], a["hidden"], a["key_dim"]
        weights = {"in_proj": (2 * e + s, d)}
        if a["bias"]:
            weights["in_bias"] = (2 * e + s,)
        weights.update({"gamma": (self.parts(a), s), "beta": (self.parts(a), s), "out_proj": (d, e)})
        if a["bias"]:
            weights["out_bias"] = (d,)
        return weights

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if widths and widths[0] != a["d_model"]:
            ctx.fail(node, f"gau over {a['d_model']} channels applied to width {widths[0]}")
        if a["scores"] not in ("relu2", "softmax"):
            ctx.fail(node, f"gau scores must be relu2 or softmax, not {a['scores']!r}")
        if a["rope"] is not None and (a["rope"] > a["key_dim"] or a["rope"] % 2):
            ctx.fail(node, f"gau: RoPE over {a['rope']} channels needs an even number of at most key_dim "
                           f"({a['key_dim']})")
        if a["chunk"] is not None and a["scores"] != "relu2":
            ctx.fail(node, "gau: the mixed-chunk form is defined with relu2 scores only")
        if a["length"] is not None and (a["chunk"] is not None or a["scores"] != "relu2"):
            ctx.fail(node, "gau: length normalises the quadratic relu2 form only")

    def category(self, d):
        return "attention"

    def saved(self, d, ctx):
        """Beside its input: u, v and z, the rotated q and k (per part), the attention output and
        the gated product; the score map where eager attention keeps it (quadratic: T keys, or C)."""
        a = d["attrs"]
        e, s = a["hidden"], a["key_dim"]
        private = (3 * e + s + self.parts(a) * s + e) * ctx.nbytes
        if ctx.keep_probabilities:
            private += (a["chunk"] or ctx.seq) * ctx.nbytes
        return Saved(private_bytes=private)

    def cost(self, d, ctx):
        a = d["attrs"]
        dm, e, s, chunk = a["d_model"], a["hidden"], a["key_dim"], a["chunk"]
        flops = 2 * dm * (2 * e + s) + 2 * e * dm
        if chunk is None:
            flops += 2 * (s + e) * attended(ctx.context, a["causal"], None)
        else:
            keys = attended(ctx.context, True, None, chunk) if a["causal"] else min(chunk, ctx.context)
            flops += 2 * (s + e) * keys + 4 * s * e
        cost = Cost(flops=flops)
        if not a["causal"]:  # an encoder grows no decode cache
            return cost
        if chunk is None:
            cost.kv_bytes_per_token = (s + e) * ctx.nbytes
            cost.kv_bytes_at_context = cost.kv_bytes_per_token * ctx.context
        else:
            cost.state_bytes = (s * e + (min(chunk, ctx.context) - 1) * (2 * s + e)) * ctx.nbytes
        return cost

    def module(self, d, emit):
        a = d["attrs"]
        extra = f", chunk={a['chunk']}" if a["chunk"] is not None else ""
        extra += f", length={a['length']}" if a["length"] is not None else ""
        return (f"rt.GAU({a['d_model']}, {a['hidden']}, {a['key_dim']}, scores={a['scores']!r}, "
                f"causal={a['causal']!r}{extra}, bias={a['bias']!r}, cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        rope = f", rope={args[1]}" if len(args) > 1 else ""
        return f"self.{d['name']}({args[0]}, ctx{rope})"
