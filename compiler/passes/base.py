"""The pass interface: a named, frozen dataclass with `run(graph) -> (graph, modified)`.

A pass rewrites the graph it is given. The PassManager gives the pipeline its own copy, so the
caller's IR is never changed; run a pass by hand on `clone(g)` to keep `g`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import networkx as nx


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str]

    def run(self, g: nx.MultiDiGraph) -> tuple[nx.MultiDiGraph, bool]:
        raise NotImplementedError


def clone(g: nx.MultiDiGraph) -> nx.MultiDiGraph:
    """A copy whose node `attrs` and `params` dicts are the copy's own (networkx's copy shares
    them). Passes replace nested values (a new dict for `rope`) rather than mutating them, so
    one level of copying is enough."""
    out = g.copy()
    for _, d in out.nodes(data=True):
        d["attrs"] = dict(d["attrs"])
        d["params"] = dict(d["params"])
    return out


def redirect(g: nx.MultiDiGraph, old: str, new: str, out_map: dict[int, int] | None = None) -> None:
    """Make every consumer of `old` read `new` instead (output i → out_map.get(i, i))."""
    for _, dst, data in list(g.out_edges(old, data=True)):
        out = (out_map or {}).get(data["out"], data["out"])
        g.add_edge(new, dst, port=data["port"], out=out)
    g.remove_edges_from(list(g.out_edges(old, keys=True)))


def sole_consumer(g: nx.MultiDiGraph, node: str) -> bool:
    return len({dst for _, dst in g.out_edges(node)}) == 1
