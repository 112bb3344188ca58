"""Layer folding: which layers of each stack stand for the whole stack when checking and
compiling, so that the work grows with the number of distinct block kinds, not with depth.

Every layer of one block kind in one stack lowers to the same ops, attributes and wiring (only
the layer index in node ids differs), the passes rewrite inside one layer, and code generation
makes one class per block kind from its first layer. So the first layer of each block kind,
plus the first and last layers of the stack (where the stack meets the model), give the same
classes, the same model-level code and the same problems as the full stack. The folded graph
records, for each layer it keeps, which layers of the full stack it represents: validation
counts a problem once per represented layer, and share-constants promotes a table when it
serves more than one layer of the full model.
"""

from __future__ import annotations

from archlang.spec import ast as A

# g.graph key of a folded IR: (stack, kept layer) → the full stack's layer indices it stands for.
REPRESENTS = "represents"


def kept_layers(model: A.Model) -> dict[str, dict[int, tuple[int, ...]]]:
    """For each stack: kept layer index → the layer indices it represents (itself first)."""
    out: dict[str, dict[int, tuple[int, ...]]] = {}
    for stack, layers in model.stacks().items():
        first: dict[str, int] = {}
        for i, block in enumerate(layers):
            first.setdefault(block, i)
        kept = set(first.values()) | {len(layers) - 1}
        members: dict[int, list[int]] = {i: [i] for i in kept}
        for i, block in enumerate(layers):
            if i not in kept:
                members[first[block]].append(i)
        out[stack] = {i: tuple(members[i]) for i in sorted(kept)}
    return out


def can_fold(model: A.Model) -> bool:
    """Folding keeps error messages exact only when every layer's ops point at a spec location:
    without one, a message names its IR node, and those differ from layer to layer."""
    used = {name for layers in model.stacks().values() for name in layers}
    return all(model.span_of("blocks", name) is not None for name in used)


def is_folded(g) -> bool:
    return REPRESENTS in g.graph
