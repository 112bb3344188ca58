"""share-constants: identical constant tables (RoPE cos/sin, ALiBi slopes) are built once.

Before: every layer has its own %layers.i.rope_table const with the same attributes
After:  one %rope_table const at model level feeds every layer

Legal because a const's value is a pure function of its attributes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..fold import REPRESENTS
from ..ir import ordered_nodes
from .base import Pass, redirect


@dataclass(frozen=True)
class ShareConstants(Pass):
    name = "share-constants"

    def run(self, g):
        modified = False
        first: dict[str, str] = {}
        for node in ordered_nodes(g):
            d = g.nodes[node]
            if d["op"] != "const":
                continue
            key = json.dumps(d["attrs"], sort_keys=True)
            if key not in first:
                first[key] = node
                continue
            redirect(g, node, first[key])
            g.remove_node(node)
            modified = True
        # Promote shared tables out of their layer, under a model-level name.
        represents = g.graph.get(REPRESENTS, {})
        for key, node in first.items():
            consumers = set()
            for _, dst in g.out_edges(node):
                # in a folded IR a layer's consumer stands for the same consumer in each layer it represents
                dd = g.nodes[dst]
                consumers.update(represents.get((dd["stack"], dd["layer"]), (dd["layer"],)))
            d = g.nodes[node]
            if d["layer"] is not None and len(consumers) > 1:
                new_id = _unique(g, d["name"])  # tables of different widths get distinct names
                g.add_node(new_id, **{**d, "name": new_id, "stack": None, "layer": None, "block": None, "span": None})
                redirect(g, node, new_id)
                g.remove_node(node)
                modified = True
        return g, modified


def _unique(g, name: str) -> str:
    candidate, i = name, 1
    while candidate in g:
        i += 1
        candidate = f"{name}_{i}"
    return candidate
