"""dce: dead-node elimination. Removes every node from which no output can be reached.

Legal because such nodes cannot affect any output; their weights are dropped too, so the
facts and the generated module stay in step.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from .base import Pass


@dataclass(frozen=True)
class DeadNodeElimination(Pass):
    name = "dce"

    def run(self, g):
        outputs = [n for n, d in g.nodes(data=True) if d["op"] == "output"]
        live = set(outputs)
        for out in outputs:
            live |= nx.ancestors(g, out)
        dead = [n for n in g.nodes if n not in live and g.nodes[n]["op"] != "input"]
        if not dead:
            return g, False
        g.remove_nodes_from(dead)
        return g, True
