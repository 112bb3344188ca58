"""Sparse attention selectors: DeepSeek-V3.2's lightning indexer, which scores the visible keys
of each query and keeps the best `top_k` for the latent attention core that reads its output."""

from __future__ import annotations

from .attention import attended
from .base import Cost, OpDef, attr, register


@register
class LightningIndexer(OpDef):
    name = "lightning_indexer"
    summary = "DeepSeek-V3.2's lightning indexer: ReLU heads score past keys; the top_k per query are kept"
    attrs = {
        "heads": attr(int), "head_dim": attr(int), "top_k": attr(int),
        "d_model": attr(int), "q_lora_rank": attr(int), "causal": attr(bool),
        "rope_dim": attr(int, default=None, doc="channels of each head rotated (half-split RoPE); the table is an input"),
        "norm_eps": attr(float, doc="the key LayerNorm's epsilon"),
    }
    arity = (2, 3)  # hidden state, query latent, RoPE table
    picture = "attention"
    hf_params = {"wq_b": "wq_b.weight", "wk": "wk.weight", "k_norm": "k_norm.weight", "k_norm_bias": "k_norm.bias",
                 "weights_proj": "weights_proj.weight"}

    def params(self, a, shape):
        h, hd = a["heads"], a["head_dim"]
        return {"wq_b": (h * hd, a["q_lora_rank"]), "wk": (hd, a["d_model"]), "k_norm": (hd,), "k_norm_bias": (hd,),
                "weights_proj": (h, a["d_model"])}

    def out_width(self, d, out):
        return "S"  # a (B, T, S) mask over the keys

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        expected = [a["d_model"], a["q_lora_rank"]]
        if widths[:2] != expected:
            ctx.fail(node, f"the indexer expects hidden/query-latent widths {expected}, gets {widths[:2]}")
        if a["rope_dim"] is not None and (a["rope_dim"] % 2 or a["rope_dim"] > a["head_dim"]):
            ctx.fail(node, f"the indexer rotates {a['rope_dim']} channels of a {a['head_dim']}-wide head; "
                           f"it must be even and at most {a['head_dim']}")

    def category(self, d):
        return "attention"

    def cost(self, d, ctx):
        a = d["attrs"]
        h, hd, dm = a["heads"], a["head_dim"], a["d_model"]
        keys = attended(ctx.context, a["causal"], None)
        flops = 2 * (a["q_lora_rank"] * h * hd + dm * hd + dm * h)  # wq_b, wk, weights_proj
        flops += 2 * h * hd * keys + 2 * h * keys  # ReLU scores of every visible key, weighted sum over heads
        cost = Cost(flops=flops)
        if a["causal"]:  # the indexer keeps its own key (head_dim numbers) for every past token
            cost.kv_bytes_per_token = hd * ctx.nbytes
            cost.kv_bytes_at_context = hd * ctx.nbytes * ctx.context
        return cost

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.LightningIndexer({a['heads']}, {a['head_dim']}, {a['top_k']}, {a['d_model']}, {a['q_lora_rank']}, "
                f"causal={a['causal']!r}, rope_dim={a['rope_dim']!r}, norm_eps={a['norm_eps']!r}, "
                f"cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        rope = f", rope={args[2]}" if len(args) > 2 else ""
        return f"self.{d['name']}({args[0]}, {args[1]}{rope}, ctx=ctx)"

    def attention_keyword(self, d):
        return "keep"
