"""fuse-add-norm: a residual add followed by a norm becomes one op with two outputs.

Before: x = add(x, h); h = norm(x)
After:  x, h = add_norm(x, h)

Legal when the norm reads nothing but the sum: the fused op returns the sum itself (for the
residual stream) and its normalisation, so one pass over memory serves both consumers.
Only pairs inside one layer (or both outside the stacks) are fused, so every layer of a block
kind keeps the same ops and compiles to one class.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import inputs_of
from .base import Pass, redirect


@dataclass(frozen=True)
class FuseAddNorm(Pass):
    name = "fuse-add-norm"

    def run(self, g):
        modified = False
        for add in [n for n, d in g.nodes(data=True) if d["op"] == "add"]:
            ins = inputs_of(g, add)
            if len(ins) != 2:
                continue
            norms = [dst for _, dst in g.out_edges(add) if g.nodes[dst]["op"] == "norm"]
            if len(norms) != 1:
                continue
            (norm,) = norms
            nd, ad = g.nodes[norm], g.nodes[add]
            if (nd["stack"], nd["layer"]) != (ad["stack"], ad["layer"]):
                continue
            # The fused op takes the norm's place, keeping its weights and name.
            fused = norm
            nd["op"] = "add_norm"
            nd["outputs"] = (ad["outputs"][0], nd["outputs"][0])
            g.remove_edges_from(list(g.in_edges(norm, keys=True)))
            # consumers of the norm read output 1; consumers of the sum read output 0
            for _, dst, key, data in list(g.out_edges(norm, keys=True, data=True)):
                g.remove_edge(norm, dst, key)
                g.add_edge(norm, dst, port=data["port"], out=1)
            redirect(g, add, fused, {0: 0})
            for port, ref in enumerate(ins):
                g.add_edge(ref.node, fused, port=port, out=ref.out)
            g.remove_node(add)
            modified = True
        return g, modified
