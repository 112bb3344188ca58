"""Training activation memory: the tensors a forward keeps for its backward, per token, read
from the IR. Each op's definition says what it keeps (`OpDef.saved`: its inputs, outputs and
private tensors); a tensor kept by several ops (the input of q, k and v projections) is counted
once. This is the accounting of Korthikanti et al., "Reducing Activation Recomputation in Large
Transformer Models" (2022), generalised from the GPT layer to every op: for a GPT layer with
dropout it gives their sbh(34 + 5as/h) bytes in 16-bit, and 34sbh when the attention core is
recomputed (tests/test_estimate.py checks both)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import networkx as nx

from archlang.compiler.ir import inputs_of, ordered_nodes
from archlang.compiler.ops import ActivationContext, op_def

Layer = tuple[str, int] | None  # (stack, layer index), or None outside the stacks


@dataclass(frozen=True)
class Activations:
    """Saved bytes per token, by layer (None: embeddings, final norm, head)."""

    by_layer: dict[Layer, float]
    layer_inputs: dict[Layer, float]  # each layer's input: all that full recomputation keeps

    @property
    def total(self) -> float:
        return sum(self.by_layer.values())

    def largest_layer(self) -> float:
        return max((v for k, v in self.by_layer.items() if k is not None), default=0.0)


def _width(g: nx.MultiDiGraph, node: str, out: int) -> int:
    d = g.nodes[node]
    w = op_def(d["op"]).out_width(d, out)
    return w if isinstance(w, int) else 0  # symbolic widths (token ids) hold no activations


def tensor_parallel_split(g: nx.MultiDiGraph) -> set[str]:
    """The IR nodes whose outputs tensor parallelism splits over its ranks, by the plan the
    generated blocks carry (compiler.codegen._tp_plan): the column-parallel projections and the
    attention core or FFN activation between them and their row-parallel projection. All else
    (the residual stream, norms, a row-parallel output after its all-reduce) is whole on every
    rank: the runtime applies no sequence parallelism."""
    from archlang.compiler.codegen import _tp_plan

    layers: dict[Layer, list[str]] = defaultdict(list)
    for node in ordered_nodes(g):
        d = g.nodes[node]
        if d["stack"] is not None:
            layers[(d["stack"], d["layer"])].append(node)
    split: set[str] = set()
    for nodes in layers.values():
        plan = _tp_plan(g, nodes)
        colwise = {n for n in nodes if plan.get(g.nodes[n].get("name")) == "colwise"}
        split |= colwise
        split |= {n for n in nodes if op_def(g.nodes[n]["op"]).splits_heads(g.nodes[n])
                  and any(r.node in colwise for r in inputs_of(g, n))}
    return split


def saved_activations(g: nx.MultiDiGraph, *, seq: int, nbytes: int, keep_probabilities: bool,
                      split: set[str] | frozenset[str] = frozenset(), ways: int = 1) -> Activations:
    """Saved bytes per token; the tensors of the nodes in `split` (and their private ones) are
    divided over `ways` ranks (tensor_parallel_split)."""
    ctx = ActivationContext(seq=seq, nbytes=nbytes, keep_probabilities=keep_probabilities)
    by_layer: dict[Layer, float] = defaultdict(float)
    layer_inputs: dict[Layer, float] = {}
    counted: set[tuple[str, int]] = set()
    for node in ordered_nodes(g):
        d = g.nodes[node]
        op = op_def(d["op"])
        if op.role != "compute":
            continue
        layer: Layer = (d["stack"], d["layer"]) if d["stack"] is not None else None
        inputs = inputs_of(g, node)
        if layer is not None and layer not in layer_inputs:
            # the first op of a layer reads the residual stream the layer starts from
            first = next((r for r in inputs if g.nodes[r.node]["layer"] != d["layer"]
                          or g.nodes[r.node]["stack"] != d["stack"]), None)
            layer_inputs[layer] = _width(g, first.node, first.out) * nbytes if first else 0.0
        s = op.saved(d, ctx)
        kept = [inputs[i] for i in (range(len(inputs)) if s.inputs is None else s.inputs) if i < len(inputs)]
        tensors = [(r.node, r.out) for r in kept] + [(node, i) for i in s.outputs]
        for t in tensors:
            if t not in counted:
                counted.add(t)
                by_layer[layer] += _width(g, *t) * nbytes / (ways if t[0] in split else 1)
        by_layer[layer] += s.private_bytes / (ways if node in split else 1)
    return Activations(dict(by_layer), layer_inputs)
