"""fuse-gate-up: one matmul for the gate and up projections of a GLU feed-forward.

Before: g = gate_proj(h); u = up_proj(h); u = glu(g, u)
After:  gu = gate_up_proj(h); u = glu(gu) {packed = true}

Legal when both read the same tensor and agree on bias: the fused weight stacks gate over up,
and the packed glu splits the product back into the same two halves.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import inputs_of
from ..ops import op_def
from .base import Pass


@dataclass(frozen=True)
class FuseGateUp(Pass):
    name = "fuse-gate-up"

    def run(self, g):
        modified = False
        for glu in [n for n, d in g.nodes(data=True) if d["op"] == "glu" and not d["attrs"]["packed"]]:
            gate, up = (r.node for r in inputs_of(g, glu))
            if any(g.nodes[p]["op"] != "linear" or len(list(g.out_edges(p))) != 1 for p in (gate, up)):
                continue
            (src_g,), (src_u,) = inputs_of(g, gate), inputs_of(g, up)
            if src_g != src_u or g.nodes[gate]["attrs"]["bias"] != g.nodes[up]["attrs"]["bias"]:
                continue
            gd = g.nodes[gate]
            hidden = gd["attrs"]["out_features"]
            fused_id = gate.rsplit(".", 1)[0] + ".gate_up_proj" if "." in gate else "gate_up_proj"
            attrs = {**gd["attrs"], "out_features": 2 * hidden, "parts": [("gate_proj", hidden), ("up_proj", hidden)]}
            shape = (*gd["shape"][:-1], 2 * hidden)
            g.add_node(fused_id, **{**gd, "name": "gate_up_proj", "outputs": ("gu",), "shape": shape,
                                    "params": op_def("linear").params(attrs, shape), "attrs": attrs})
            g.add_edge(src_g.node, fused_id, port=0, out=src_g.out)
            g.remove_edges_from(list(g.in_edges(glu, keys=True)))
            g.add_edge(fused_id, glu, port=0, out=0)
            g.nodes[glu]["attrs"]["packed"] = True
            g.remove_nodes_from([gate, up])
            modified = True
        return g, modified
