"""Pictures of an architecture: what both renderers draw (colours, repeated runs), and the
Graphviz rendering (pydot builds the graph, `dot` lays it out). The native SVG renderer, which
needs neither, is compiler/svg.py.

The default picture collapses the layer stack into runs of repeated blocks (Jamba's eight-layer
period is drawn once, "× 4") with each block kind's components listed; `expand` draws every
op of the IR instead."""

from __future__ import annotations

import shutil

import networkx as nx

from archlang.spec.errors import ArchError

from .ir import inputs_of, ordered_nodes
from .ops import PICTURE_GROUPS, REGISTRY

# A fill colour per picture group (each op definition names its group).
COLORS = {"io": "#e5e7eb", "embedding": "#f3f4f6", "position": "#ede9fe", "norm": "#f9fafb", "attention": "#dbeafe",
           "ssm": "#dcfce7", "ffn": "#fce7f3", "moe": "#fde68a", "head": "#e5e7eb", "other": "#ffffff"}
assert set(COLORS) == set(PICTURE_GROUPS)
# A block is coloured by the most telling group among its ops.
_BLOCK_GROUPS = ("moe", "ssm", "attention")


def group_of(g: nx.MultiDiGraph, node: str) -> str:
    return REGISTRY[g.nodes[node]["op"]].picture


def block_groups(g: nx.MultiDiGraph) -> dict[str, str]:
    """Each block's picture group: the most telling among its ops' (moe, then ssm, then attention)."""
    groups: dict[str, set[str]] = {}
    for n, d in g.nodes(data=True):
        if d["block"] is not None:
            groups.setdefault(d["block"], set()).add(group_of(g, n))
    return {block: next((k for k in _BLOCK_GROUPS if k in found), "attention") for block, found in groups.items()}


def block_colors(g: nx.MultiDiGraph) -> dict[str, str]:
    return {block: COLORS[group] for block, group in block_groups(g).items()}


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def runs(blocks: list[str]) -> list[tuple[list[str], int]]:
    """Compress a layer list into (period, repeats) runs: [a,b,a,b,c] → [([a,b],2), ([c],1)]."""
    out, i = [], 0
    while i < len(blocks):
        best = ([blocks[i]], 1)
        for period in range(1, (len(blocks) - i) // 2 + 1):
            unit = blocks[i:i + period]
            reps = 1
            while blocks[i + reps * period:i + (reps + 1) * period] == unit:
                reps += 1
            if reps > 1 and reps * period > best[1] * len(best[0]):
                best = (unit, reps)
        out.append(best)
        i += len(best[0]) * best[1]
    return out


def collapsed_dot(g: nx.MultiDiGraph):
    import pydot

    dot = pydot.Dot(graph_type="digraph", rankdir="TB", fontname="Helvetica", label=_esc(f"{g.graph['name']} ({g.graph['family']})"),
                    labelloc="t", fontsize="18")
    dot.set_node_defaults(shape="box", style="rounded,filled", fontname="Helvetica", fontsize="11", fillcolor="white")
    prev = "input"
    dot.add_node(pydot.Node("input", label="tokens", fillcolor=COLORS["io"]))
    top = [n for n in ordered_nodes(g) if g.nodes[n]["stack"] is None and group_of(g, n) == "embedding"
           and REGISTRY[g.nodes[n]["op"]].role == "compute"]
    if top:
        dot.add_node(pydot.Node("embed", label=_esc(" + ".join(g.nodes[n]["op"].replace("_", " ") for n in top))))
        dot.add_edge(pydot.Edge(prev, "embed"))
        prev = "embed"
    colors = block_colors(g)
    for stack, blocks in g.graph["stacks"].items():
        cluster = pydot.Cluster(f"cluster_{stack}", label=_esc(f"{stack}: {len(blocks)} layers"), style="rounded", color="#9ca3af")
        for r, (unit, reps) in enumerate(runs(blocks)):
            for j, block in enumerate(unit):
                node_id = f"{stack}_{r}_{j}"
                desc = g.graph["blocks"][block]
                color = colors.get(block, COLORS["attention"])
                label = f"{block}\\n" + "\\n".join(_esc(p) for p in desc.split(" → "))
                if j == len(unit) - 1 and reps > 1:
                    label += f"\\n[× {reps}" + (f" (period of {len(unit)})]" if len(unit) > 1 else "]")
                cluster.add_node(pydot.Node(node_id, label=label, fillcolor=color))
                dot.add_edge(pydot.Edge(prev, node_id))
                prev = node_id
        dot.add_subgraph(cluster)
    dot.add_node(pydot.Node("output", label="logits" if g.graph["family"] != "encoder" else "hidden states", fillcolor=COLORS["io"]))
    dot.add_edge(pydot.Edge(prev, "output"))
    mtp = g.graph.get("mtp")
    if mtp is not None:  # read off the last layer in training only, so drawn aside
        label = "multi-token prediction\\n" + _esc(f"{mtp['depth']} × {mtp['block']} (training)")
        dot.add_node(pydot.Node("mtp", label=label, fillcolor=COLORS["head"]))
        dot.add_edge(pydot.Edge(prev, "mtp", style="dashed"))
    return dot


def expanded_dot(g: nx.MultiDiGraph):
    import pydot

    dot = pydot.Dot(graph_type="digraph", rankdir="TB", fontname="Helvetica")
    dot.set_node_defaults(shape="box", style="rounded,filled", fontname="Helvetica", fontsize="10")
    ids = {n: f"n{i}" for i, n in enumerate(ordered_nodes(g))}
    for n, nid in ids.items():
        d = g.nodes[n]
        shape = "(" + ", ".join(str(s) for s in d["shape"]) + ")"
        dot.add_node(pydot.Node(nid, label=_esc(f"{n}\\n{d['op']} {shape}"), fillcolor=COLORS[group_of(g, n)]))
    for n, nid in ids.items():
        for ref in inputs_of(g, n):
            dot.add_edge(pydot.Edge(ids[ref.node], nid))
    return dot


def render(g: nx.MultiDiGraph, fmt: str, *, expand: bool = False) -> bytes:
    dot = expanded_dot(g) if expand else collapsed_dot(g)
    if fmt == "dot":
        return dot.to_string().encode()
    if shutil.which("dot") is None:
        raise ArchError("drawing .svg or .png needs Graphviz's `dot` program",
                        hint="install Graphviz (apt-get install graphviz, brew install graphviz) or write .dot", kind="usage")
    return dot.create(format=fmt)
