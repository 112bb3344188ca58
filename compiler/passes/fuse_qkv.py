"""fuse-qkv: one matmul for the q, k and v projections of self-attention.

Before: q = q_proj(h); k = k_proj(h); v = v_proj(h); a = attention(q, k, v, ...)
After:  qkv = qkv_proj(h); a = attention(qkv, ...) {packed = true}

Legal when the three projections read the same tensor, agree on having a bias, and feed the
attention directly (no rope op in between: run fold-rope first). The fused weight is the
three weights stacked along the output dimension, so the product is the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import inputs_of
from ..ops import op_def
from .base import Pass


@dataclass(frozen=True)
class FuseQKV(Pass):
    name = "fuse-qkv"

    def run(self, g):
        modified = False
        for attn in [n for n, d in g.nodes(data=True) if d["op"] == "attention"]:
            a = g.nodes[attn]
            if a["attrs"]["packed"] or a["attrs"]["cross"]:
                continue
            ins = inputs_of(g, attn)
            projs = [r.node for r in ins[:3]]
            if len(set(projs)) != 3 or any(g.nodes[p]["op"] != "linear" for p in projs):
                continue
            if any(len(list(g.out_edges(p))) != 1 for p in projs):
                continue
            srcs = [inputs_of(g, p)[0] for p in projs]
            if len(set(srcs)) != 1 or len({g.nodes[p]["attrs"]["bias"] for p in projs}) != 1:
                continue
            q = g.nodes[projs[0]]
            parts = [(g.nodes[p]["name"], g.nodes[p]["attrs"]["out_features"]) for p in projs]
            out_f = sum(w for _, w in parts)
            fused_id = projs[0].rsplit(".", 1)[0] + ".qkv_proj" if "." in projs[0] else "qkv_proj"
            attrs = {**q["attrs"], "out_features": out_f, "parts": parts}
            shape = (*q["shape"][:-1], out_f)
            g.add_node(fused_id, **{**q, "name": "qkv_proj", "outputs": ("qkv",), "shape": shape,
                                    "params": op_def("linear").params(attrs, shape), "attrs": attrs})
            g.add_edge(srcs[0].node, fused_id, port=0, out=srcs[0].out)
            extras = ins[3:]
            g.remove_edges_from(list(g.in_edges(attn, keys=True)))
            g.add_edge(fused_id, attn, port=0, out=0)
            for port, extra in enumerate(extras, start=1):
                g.add_edge(extra.node, attn, port=port, out=extra.out)
            a["attrs"]["packed"] = True
            g.remove_nodes_from(projs)
            modified = True
        return g, modified
