"""Architecture facts computed from the IR: parameters (total and active per token), FLOPs per
token, KV-cache and recurrent-state bytes, and an activation-memory estimate.

Parameter counts are exact: the sum of the shapes of every weight in the IR, which are the
same tensors the generated module allocates. FLOPs count 2 per multiply-accumulate of every
matmul (projections, expert FFNs actually routed to, attention scores and values, the SSM scan
and convolution); element-wise ops (norms, activations, softmax) are not counted, as is usual.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx

from .ir import ordered_nodes
from .ops import CATEGORIES, FactsContext, op_def

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


@dataclass
class Facts:
    model: str
    dtype: str
    context: int
    params_total: int
    params_active: int
    flops_per_token: int
    kv_cache_bytes_per_token: int  # what each token adds while shorter than every sliding window
    kv_cache_bytes_at_context: int  # the cache after `context` tokens: sliding-window layers keep only the window
    ssm_state_bytes_per_sequence: int
    activation_bytes_per_token: int
    layers: int
    breakdown: dict[str, int] = field(default_factory=dict)
    breakdown_active: dict[str, int] = field(default_factory=dict)
    # The multi-token prediction modules' own weights (their embedding and output head are the
    # model's): part of params_total and, as they train with every token, of params_active and
    # the training activations; a forward runs without them, so its FLOPs and cache leave them out.
    params_mtp: int = 0
    # The weights stored in the facts' dtype, and what one sequence's inference cache holds after
    # `context` tokens (KV cache plus recurrent state): the two numbers that decide whether it fits.
    weight_bytes: int = 0
    cache_bytes_at_context: int = 0
    # A byte_latent model's tokens are bytes; its global stack runs once per patch, at the model's
    # assumed bytes per patch: the FLOPs of one patch's bytes (None for other models)
    flops_per_patch: int | None = None
    bytes_per_patch: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("flops_per_patch", "bytes_per_patch"):
            if data[key] is None:
                del data[key]
        return data


def _shared_repeats(g: nx.MultiDiGraph) -> set[tuple[str, int]]:
    """(stack, layer) of every use of a shared block after its first in that stack."""
    shared = set(g.graph.get("shared_blocks", ()))
    out = set()
    for stack, blocks in g.graph["stacks"].items():
        seen = set()
        for i, block in enumerate(blocks):
            if block in shared and block in seen:
                out.add((stack, i))
            seen.add(block)
    return out


def _routed_capacity(g: nx.MultiDiGraph) -> dict[tuple[str, int], float]:
    """(stack, layer) → the fraction of tokens that run it, for the depth-routed layers. Their
    KV-cache bytes are not scaled: in causal routing the predictor, not the capacity, decides
    how many tokens a layer caches, so the unrouted figure is the bound."""
    return {(d["stack"], d["layer"]): d["attrs"]["capacity"] for _, d in g.nodes(data=True)
            if op_def(d["op"]).wraps_layer}


def compute_facts(g: nx.MultiDiGraph, *, context: int | None = None, dtype: str | None = None) -> Facts:
    """Facts of a (lowered or optimized) IR at a sequence length and storage dtype."""
    ctx_len = context or g.graph["context"]
    dt = dtype or g.graph["dtype"]
    if dt not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dt!r}; expected one of {', '.join(DTYPE_BYTES)}")
    nbytes = DTYPE_BYTES[dt]
    total = dict.fromkeys(CATEGORIES, 0)
    active = dict.fromkeys(CATEGORIES, 0)
    flops = 0.0
    kv_bytes = 0
    kv_bytes_at_context = 0
    state_bytes = 0
    act_elems = 0
    fctx = FactsContext(context=ctx_len, nbytes=nbytes)
    repeats = _shared_repeats(g)
    params_mtp = 0
    routed = _routed_capacity(g)
    for node in ordered_nodes(g):
        d = g.nodes[node]
        op = op_def(d["op"])
        t, act = op.param_split(d)
        if (d["stack"], d["layer"]) in repeats:  # a later use of a shared block: its weights are counted once
            t, act = {}, {}
        for k, n in t.items():
            total[k] += n
        for k, n in act.items():
            active[k] += n
        if d["stack"] == "mtp":  # trained beside the model; a forward (and its cache) runs without them
            params_mtp += sum(t.values())
        else:
            cost = op.cost(d, fctx)
            # Mixture-of-Depths: the ops of a routed layer run on its capacity fraction of the tokens
            flops += cost.flops * (routed.get((d["stack"], d["layer"]), 1.0) if not op.wraps_layer else 1.0)
            kv_bytes += cost.kv_bytes_per_token
            kv_bytes_at_context += cost.kv_bytes_at_context
            state_bytes += cost.state_bytes
        if op.role == "compute":  # what a forward keeps per token: every output of every computing op
            width = d["shape"][-1] if isinstance(d["shape"][-1], int) else 0
            act_elems += width * len(d["outputs"])
    layers = sum(len(v) for v in g.graph["stacks"].values())
    patch = next((d["attrs"]["patch_length"] for _, d in g.nodes(data=True) if d["op"] == "byte_latent"), None)
    return Facts(
        flops_per_patch=None if patch is None else int(round(flops * patch)), bytes_per_patch=patch,
        model=g.graph["name"], dtype=dt, context=ctx_len,
        params_total=sum(total.values()), params_active=sum(active.values()),
        flops_per_token=int(round(flops)), kv_cache_bytes_per_token=int(kv_bytes),
        kv_cache_bytes_at_context=int(kv_bytes_at_context),
        ssm_state_bytes_per_sequence=int(state_bytes), activation_bytes_per_token=int(act_elems * nbytes),
        layers=layers,
        breakdown={k: v for k, v in total.items() if v}, breakdown_active={k: v for k, v in active.items() if v},
        params_mtp=params_mtp,
        weight_bytes=sum(total.values()) * nbytes,
        cache_bytes_at_context=int(kv_bytes_at_context) + int(state_bytes),
    )
