"""The pass interface: a named, frozen dataclass with `run(graph) -> (graph, modified)`.

Passes never mutate their input: each copies the graph first, so a failed pass leaves the
caller's IR untouched and `--print-after-all` can show every stage.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import networkx as nx


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str]

    def run(self, g: nx.MultiDiGraph) -> tuple[nx.MultiDiGraph, bool]:
        raise NotImplementedError


def clone(g: nx.MultiDiGraph) -> nx.MultiDiGraph:
    """A copy that shares no attribute dicts with the original (networkx's copy is shallow)."""
    return copy.deepcopy(g)


def redirect(g: nx.MultiDiGraph, old: str, new: str, out_map: dict[int, int] | None = None) -> None:
    """Make every consumer of `old` read `new` instead (output i → out_map.get(i, i))."""
    for _, dst, data in list(g.out_edges(old, data=True)):
        out = (out_map or {}).get(data["out"], data["out"])
        g.add_edge(new, dst, port=data["port"], out=out)
    g.remove_edges_from(list(g.out_edges(old, keys=True)))


def sole_consumer(g: nx.MultiDiGraph, node: str) -> bool:
    return len({dst for _, dst in g.out_edges(node)}) == 1
