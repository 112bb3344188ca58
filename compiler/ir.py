"""The graph IR: a networkx MultiDiGraph of typed ops (multi: rope feeds q and k to one attention), read by validation, facts, passes, diff,
pictures and code generation.

Every node carries:
  op       the name of an op defined in compiler/ops (its attributes, weights, rules)
  name     the module attribute it becomes in generated code (unique within its layer)
  outputs  the variable names it defines, in order (most ops define one)
  shape    the shape of its first output, symbolic in B (batch), T (target length), S (source length)
  params   weight name → shape, as the op's definition derives them from its attributes
  attrs    the op's attributes, as its definition declares them (defaults filled in)
  stack    "layers", "encoder" or "decoder" for nodes inside a layer stack, else None
  layer    layer index inside the stack, else None
  block    the block kind of that layer, else None
  order    insertion order: the tie-breaker that makes every traversal deterministic
  span     the spec location the node came from, for errors
Edges carry `port` (the consumer's argument position) and `out` (which producer output).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

import networkx as nx

from .ops import REGISTRY, complete_attrs, op_def

# op name → what it computes; each op's full definition is in compiler/ops.
OPS: dict[str, str] = {name: op.summary for name, op in REGISTRY.items()}

@dataclass(frozen=True)
class NodeRef:
    """An output of a node: (node id, output index)."""

    node: str
    out: int = 0


class GraphBuilder:
    """Appends nodes in order; used by lowering and by passes that insert nodes."""

    def __init__(self, graph: nx.MultiDiGraph | None = None):
        self.g = graph if graph is not None else nx.MultiDiGraph()
        self._order = max((d["order"] for _, d in self.g.nodes(data=True)), default=-1) + 1

    def node(
        self,
        node_id: str,
        op: str,
        inputs: Iterable[NodeRef] = (),
        *,
        name: str,
        outputs: tuple[str, ...] | str,
        shape: tuple,
        attrs: dict[str, Any] | None = None,
        stack: str | None = None,
        layer: int | None = None,
        block: str | None = None,
        span=None,
    ) -> NodeRef:
        definition = op_def(op)
        if node_id in self.g:
            raise ValueError(f"duplicate IR node {node_id!r}")
        attrs = complete_attrs(definition, attrs or {})
        shape = tuple(shape)
        self.g.add_node(
            node_id, op=op, name=name, outputs=(outputs,) if isinstance(outputs, str) else tuple(outputs),
            shape=shape, params=definition.params(attrs, shape), attrs=attrs, stack=stack, layer=layer,
            block=block, order=self._order, span=span,
        )
        self._order += 1
        for port, ref in enumerate(inputs):
            self.g.add_edge(ref.node, node_id, port=port, out=ref.out)
        return NodeRef(node_id)


def inputs_of(g: nx.MultiDiGraph, node: str) -> list[NodeRef]:
    """The node's inputs in argument order."""
    # read the adjacency directly: an in_edges view per call dominated passes and codegen
    edges = [(data["port"], src, data["out"]) for src, keyed in g.pred[node].items() for data in keyed.values()]
    edges.sort(key=lambda e: e[0])
    return [NodeRef(src, out) for _, src, out in edges]


def ordered_nodes(g: nx.MultiDiGraph) -> list[str]:
    """A topological order that follows insertion order wherever the data flow allows.

    Lowering inserts every node after its inputs and the passes keep that true, so sorting by
    `order` usually is the answer; it is checked edge by edge, and a full topological sort is
    the fallback when some rewrite broke it."""
    nodes = sorted(g.nodes, key=lambda n: g.nodes[n]["order"])
    rank = {n: i for i, n in enumerate(nodes)}
    if all(rank[u] < rank[v] for u, v in g.edges()):
        return nodes
    return list(nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["order"]))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return json.dumps(value) if isinstance(value, str) else str(value)


def dump(g: nx.MultiDiGraph) -> str:
    """The IR as stable, diffable text: one line per node in deterministic topological order.

        %layers.0.q_proj = linear(%layers.0.attn_norm) {in_features=64, ...} : (B, T, 64) [weight (64, 64)]
    """
    lines = [f"// model {g.graph.get('name', '?')} family={g.graph.get('family', '?')}"]
    for node in ordered_nodes(g):
        d = g.nodes[node]
        args = ", ".join(f"%{r.node}" + (f"#{r.out}" if r.out else "") for r in inputs_of(g, node))
        attrs = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(d["attrs"].items()) if v is not None)
        shape = "(" + ", ".join(str(s) for s in d["shape"]) + ")"
        params = ", ".join(f"{k} {tuple(v)}" for k, v in d["params"].items())
        outs = f" -> {', '.join(d['outputs'])}" if len(d["outputs"]) > 1 else ""
        line = f"%{node} = {d['op']}({args})"
        if attrs:
            line += f" {{{attrs}}}"
        line += f" : {shape}{outs}"
        if params:
            line += f" [{params}]"
        lines.append(line)
    return "\n".join(lines) + "\n"


def layer_nodes(g: nx.MultiDiGraph, stack: str, layer: int) -> list[str]:
    """The nodes of one layer of a stack, in deterministic order."""
    return [n for n in ordered_nodes(g) if g.nodes[n]["stack"] == stack and g.nodes[n]["layer"] == layer]
