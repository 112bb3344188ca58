"""fold-rope: rotate q and k inside the attention op instead of in a separate rope op.

Before: q, k = rope(q_proj, k_proj, table); a = attention(q, k, v)
After:  a = attention(q_proj, k_proj, v, table) {rope = {...}}

Legal because the rope op is element-wise per position and head and its outputs feed only
the attention: applying it inside the attention (where the kernel can fuse it into the loads
of q and k) computes the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import inputs_of
from .base import Pass


@dataclass(frozen=True)
class FoldRope(Pass):
    name = "fold-rope"

    def run(self, g):
        modified = False
        for node in [n for n, d in g.nodes(data=True) if d["op"] == "rope"]:
            consumers = {dst for _, dst in g.out_edges(node)}
            if len(consumers) != 1:
                continue
            (attn,) = consumers
            if g.nodes[attn]["op"] != "attention":
                continue
            q, k, table = inputs_of(g, node)
            att_inputs = inputs_of(g, attn)
            g.remove_edges_from(list(g.in_edges(attn, keys=True)))
            g.add_edge(q.node, attn, port=0, out=q.out)
            g.add_edge(k.node, attn, port=1, out=k.out)
            v = att_inputs[2]
            g.add_edge(v.node, attn, port=2, out=v.out)
            g.add_edge(table.node, attn, port=3, out=table.out)
            for port, extra in enumerate(att_inputs[3:], start=4):
                g.add_edge(extra.node, attn, port=port, out=extra.out)
            rope_attrs = g.nodes[node]["attrs"]
            g.nodes[attn]["attrs"]["rope"] = {"dim": rope_attrs["rotary_dim"]}
            g.remove_node(node)
            modified = True
        return g, modified
