"""IR validation: structural checks (acyclic, nothing dangling or unreachable, every input
wired) and shape checks of every op, with errors pointing back at the spec. All problems are
collected and reported together."""

from __future__ import annotations

import networkx as nx

from archlang.spec.errors import ArchError, ArchErrors

from .fold import REPRESENTS
from .ir import OPS, NodeRef, inputs_of, ordered_nodes

# How many inputs each op takes (min, max); None is unbounded.
_ARITY = {
    "input": (0, 0), "const": (0, 0), "rel_bias": (0, 0), "pos_embedding": (0, 0), "type_embedding": (0, 0),
    "embedding": (1, 1), "add": (2, None), "scale": (1, 1), "norm": (1, 1), "add_norm": (2, 2),
    "linear": (1, 1), "rope": (3, 3), "attention": (1, 5), "mla_attention": (2, 3), "linear_attention": (1, 3),
    "activation": (1, 1), "glu": (1, 2), "moe": (1, 1), "ssm": (1, 1), "softcap": (1, 1), "pooler": (1, 1),
    "lm_head": (1, 1), "output": (1, 1),
}


def _width(g: nx.MultiDiGraph, ref) -> int | str:
    d = g.nodes[ref.node]
    if d["op"] == "add_norm" or d["op"] == "rope":
        return d["shape"][-1] if ref.out == 0 or d["op"] == "add_norm" else d["attrs"]["kv_heads"] * d["attrs"]["head_dim"]
    return d["shape"][-1]


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

    outputs = [n for n, d in g.nodes(data=True) if d["op"] == "output"]
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
    for node in sorted(g.nodes, key=lambda n: g.nodes[n]["order"]):  # deterministic error order
        d = g.nodes[node]
        op, attrs = d["op"], d["attrs"]
        if op not in OPS:
            fail(node, f"unknown op {op!r}")
            continue
        incoming = sorted(edges_in.get(node, ()))
        ins = [NodeRef(src, out) for _, src, out in incoming]
        lo, hi = _ARITY[op]
        if len(ins) < lo or (hi is not None and len(ins) > hi):
            fail(node, f"{op} takes {lo}..{hi if hi is not None else 'n'} inputs, has {len(ins)} (dangling node)")
            continue
        ports = [port for port, _, _ in incoming]
        if ports != list(range(len(ports))):
            fail(node, f"{op} has gaps in its inputs {ports}")
        if node not in reaches_output:
            fail(node, f"{op} node does not contribute to any output (unreachable)")
        for ref in ins:
            if ref.out >= len(g.nodes[ref.node]["outputs"]):
                fail(node, f"reads output {ref.out} of {ref.node}, which has only {len(g.nodes[ref.node]['outputs'])}")
        widths = [_width(g, r) for r in ins]
        if op == "linear" and widths and widths[0] != attrs["in_features"]:
            fail(node, f"projection expects width {attrs['in_features']}, its input has {widths[0]}")
        elif op in ("norm",) and widths and widths[0] != attrs["dim"]:
            fail(node, f"norm over {attrs['dim']} channels applied to width {widths[0]}")
        elif op == "add" and len(set(w for w in widths if isinstance(w, int) and op != "pos_embedding")) > 1:
            fail(node, f"residual add of different widths {widths}")
        elif op == "attention":
            _check_attention(g, node, d, widths, context, fail)
        elif op == "rope":
            rot, hd = attrs["rotary_dim"], attrs["head_dim"]
            if rot % 2 or rot > hd:
                fail(node, f"rope rotates {rot} channels of a {hd}-wide head; it must be even and at most {hd}",
                     "set rope(dim = ...) to an even number no larger than head_dim")
        elif op == "lm_head" and attrs["tied"]:
            emb = g.nodes.get("embed")
            if emb is None or tuple(emb["params"]["weight"]) != (attrs["vocab"], attrs["dim"]):
                fail(node, "tied embeddings need an embedding table of the same shape as the output head")
        elif op == "moe" and attrs["top_k"] > attrs["experts"]:
            fail(node, f"top_k ({attrs['top_k']}) exceeds experts ({attrs['experts']})")
        elif op == "mla_attention" and attrs.get("window") and context and attrs["window"] > context:
            fail(node, f"window ({attrs['window']}) is longer than the context ({context})")
        for shape in d["params"].values():
            if any((not isinstance(s, int)) or s <= 0 for s in shape):
                fail(node, f"weight of impossible shape {shape}")
    if g.graph.get("family") == "encoder_decoder":
        from_encoder = _fed_by_encoder(g)
        for node, d in g.nodes(data=True):
            if d["op"] == "attention" and d["attrs"].get("cross"):
                srcs = {r.node for r in inputs_of(g, node)[1:3]}
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


def _check_attention(g, node, d, widths, context, fail) -> None:
    a = d["attrs"]
    heads, kv, hd = a["heads"], a["kv_heads"], a["head_dim"]
    if heads % kv:
        fail(node, f"heads ({heads}) must be divisible by kv_heads ({kv})")
    if a.get("packed"):
        expected = [(heads + 2 * kv) * hd]
    else:
        expected = [heads * hd, kv * hd, kv * hd]
    got = widths[: len(expected)]
    if got != expected:
        fail(node, f"attention expects q/k/v widths {expected}, gets {got}")
    if a.get("window") and context and a["window"] > context:
        fail(node, f"window ({a['window']}) is longer than the context ({context})",
             "a window at least as long as the context is full attention: remove it")
    rope = a.get("rope")
    if rope and (rope["dim"] % 2 or rope["dim"] > hd):
        fail(node, f"rope rotates {rope['dim']} channels of a {hd}-wide head; it must be even and at most {hd}")
