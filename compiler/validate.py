"""IR validation: structural checks (acyclic, nothing dangling or unreachable, every input
wired) and shape checks of every op, with errors pointing back at the spec. All problems are
collected and reported together."""

from __future__ import annotations

import networkx as nx

from archlang.spec.errors import ArchError, ArchErrors

from .fold import REPRESENTS
from .ir import NodeRef, inputs_of, ordered_nodes
from .ops import REGISTRY, VerifyContext, attr_problems


def _width(g: nx.MultiDiGraph, ref: NodeRef) -> int | str:
    d = g.nodes[ref.node]
    op = REGISTRY.get(d["op"])  # an unknown producer is reported on its own node
    return op.out_width(d, ref.out) if op is not None else d["shape"][-1]


def validate(g: nx.MultiDiGraph) -> None:
    """Raise ArchErrors listing every problem found; return None when the IR is sound."""
    errors: list[tuple[ArchError, int]] = []
    represents = g.graph.get(REPRESENTS, {})

    def fail(node: str | None, message: str, hint: str | None = None) -> None:
        span = g.nodes[node].get("span") if node is not None else None
        where = f" (at IR node {node})" if node is not None and span is None else ""
        # a layer of a folded IR stands for several layers of the model: count the problem in each
        layers = len(represents.get((g.nodes[node]["stack"], g.nodes[node]["layer"]), (node,))) if node is not None else 1
        errors.append((ArchError(message + where, span, hint=hint, kind="ir"), layers))

    if not _edges_follow_order(g) and not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        raise ArchErrors([ArchError("the IR has a cycle: " + " → ".join(e[0] for e in cycle), kind="ir")])

    outputs = [n for n, d in g.nodes(data=True) if d["op"] in REGISTRY and REGISTRY[d["op"]].role == "output"]
    if not outputs:
        fail(None, "the IR has no output")
    reaches_output = set(outputs)
    for out in outputs:
        reaches_output |= nx.ancestors(g, out)

    context = g.graph.get("context")
    # One sweep over the edges instead of a networkx view per node: validation runs after every pass.
    edges_in: dict[str, list[tuple[int, str, int]]] = {}
    for src, dst, data in g.edges(data=True):
        edges_in.setdefault(dst, []).append((data["port"], src, data["out"]))
    verify = VerifyContext(g, context, fail)
    for node in sorted(g.nodes, key=lambda n: g.nodes[n]["order"]):  # deterministic error order
        d = g.nodes[node]
        op = REGISTRY.get(d["op"])
        if op is None:
            fail(node, f"unknown op {d['op']!r}: no definition in compiler/ops")
            continue
        incoming = sorted(edges_in.get(node, ()))
        ins = [NodeRef(src, out) for _, src, out in incoming]
        lo, hi = op.arity
        if len(ins) < lo or (hi is not None and len(ins) > hi):
            fail(node, f"{op.name} takes {lo}..{hi if hi is not None else 'n'} inputs, has {len(ins)} (dangling node)")
            continue
        ports = [port for port, _, _ in incoming]
        if ports != list(range(len(ports))):
            fail(node, f"{op.name} has gaps in its inputs {ports}")
        if node not in reaches_output:
            fail(node, f"{op.name} node does not contribute to any output (unreachable)")
        for ref in ins:
            if ref.out >= len(g.nodes[ref.node]["outputs"]):
                fail(node, f"reads output {ref.out} of {ref.node}, which has only {len(g.nodes[ref.node]['outputs'])}")
        problems = attr_problems(op, d["attrs"])
        for problem in problems:
            fail(node, f"{op.name}: {problem}")
        if problems:
            continue
        for shape in d["params"].values():
            if any((not isinstance(s, int)) or s <= 0 for s in shape):
                fail(node, f"weight of impossible shape {shape}")
        expected = op.params(d["attrs"], d["shape"])
        if d["params"] != expected:
            fail(node, f"{op.name} weights {d['params']} differ from those its attributes define, {expected}")
        op.verify(node, d, [_width(g, r) for r in ins], verify)
    if g.graph.get("family") == "encoder_decoder":
        from_encoder = _fed_by_encoder(g)
        for node, d in g.nodes(data=True):
            op = REGISTRY.get(d["op"])
            memory = op.memory_inputs(d) if op is not None else None
            if memory is not None:
                srcs = {r.node for r in inputs_of(g, node)[memory]}
                for src in srcs:
                    if src not in from_encoder:
                        fail(node, "cross-attention keys and values must come from the encoder")
    if errors:
        raise ArchErrors(_dedupe(errors))


def _edges_follow_order(g: nx.MultiDiGraph) -> bool:
    """Every edge runs from an earlier node to a later one: then the graph has no cycle. Lowering
    and the passes keep this true, so the general (slower) cycle search is rarely needed."""
    nodes = g.nodes
    return all(nodes[u]["order"] < nodes[v]["order"] for u, v in g.edges())


def _fed_by_encoder(g: nx.MultiDiGraph) -> set[str]:
    """The encoder's nodes and every node computed from one of them, in one sweep in data-flow
    order (a reachability search per cross-attention would grow with the square of the depth)."""
    fed: set[str] = set()
    for node in ordered_nodes(g):
        if g.nodes[node]["stack"] == "encoder" or any(p in fed for p in g.predecessors(node)):
            fed.add(node)
    return fed


def _dedupe(errors: list[tuple[ArchError, int]]) -> list[ArchError]:
    """The same problem in every layer of a stack is reported once, with a count."""
    seen: dict[tuple, ArchError] = {}
    counts: dict[tuple, int] = {}
    for e, layers in errors:
        key = (e.message, str(e.span))
        counts[key] = counts.get(key, 0) + layers
        seen.setdefault(key, e)
    for key, e in seen.items():
        if counts[key] > 1:
            e.notes.append(f"in {counts[key]} layers")
    return list(seen.values())
