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

from .ir import ordered_nodes, param_count

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}

# Breakdown categories, in display order.
CATEGORIES = ("embedding", "attention", "ssm", "ffn", "moe_experts", "moe_shared", "moe_router", "norm", "head", "other")


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _category(d: dict) -> str:
    op, name = d["op"], d["name"]
    if op in ("embedding", "pos_embedding", "type_embedding", "rel_bias"):
        return "embedding"
    if op in ("norm", "add_norm"):
        return "norm"
    if op in ("lm_head", "pooler"):
        return "head"
    if op == "ssm":
        return "ssm"
    if op in ("attention", "mla_attention", "linear_attention", "rope"):
        return "attention"
    if op == "linear":
        if any(name.startswith(p) for p in ("gate", "up", "down")):
            return "ffn"
        return "attention"
    return "other"


def _moe_split(d: dict) -> tuple[dict[str, int], dict[str, int]]:
    """(total, active) parameter counts of a MoE node, by category."""
    a = d["attrs"]
    total = {"moe_router": 0, "moe_experts": 0, "moe_shared": 0}
    for name, shape in d["params"].items():
        n = 1
        for s in shape:
            n *= s
        key = "moe_router" if name == "router" else "moe_experts" if name.startswith("experts_") else "moe_shared"
        total[key] += n
    active = dict(total)
    active["moe_experts"] = total["moe_experts"] // a["experts"] * a["top_k"]
    return total, active


def _attended(context: int, causal: bool, window: int | None) -> float:
    """Mean number of keys a query attends to over a full sequence of `context` tokens."""
    if not causal:
        return float(min(window, context) if window else context)
    if window is None or window >= context:
        return (context + 1) / 2
    # positions 0..w-1 see i+1 keys, the rest see w
    return (window * (window + 1) / 2 + (context - window) * window) / context


def _cached(tokens: int, window: int | None) -> int:
    """How many tokens' keys and values a layer holds after `tokens` tokens."""
    return min(tokens, window) if window else tokens


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
    for node in ordered_nodes(g):
        d = g.nodes[node]
        op, a = d["op"], d["attrs"]
        if op == "moe":
            t, act = _moe_split(d)
            for k in t:
                total[k] += t[k]
                active[k] += act[k]
            flops += 2 * (act["moe_experts"] + act["moe_shared"] + act["moe_router"])
        else:
            n = param_count(d)
            cat = _category(d)
            total[cat] += n
            active[cat] += n  # dense weights are all active; only routed experts are not
        if op == "linear":
            flops += 2 * a["in_features"] * a["out_features"]
        elif op == "lm_head":
            flops += 2 * a["vocab"] * a["dim"]
        elif op == "pooler":
            pass  # once per sequence, not per token
        elif op == "attention":
            hd_qk, hd_v = a["head_dim"], a["head_dim"]
            keys = _attended(ctx_len, a["causal"], a.get("window"))
            flops += 2 * a["heads"] * (hd_qk + hd_v) * keys
            if a["causal"] and not a.get("cross"):  # encoders and cross-attention do not grow a decode cache
                per_token = 2 * a["kv_heads"] * a["head_dim"] * nbytes
                kv_bytes += per_token
                kv_bytes_at_context += per_token * _cached(ctx_len, a.get("window"))
        elif op == "mla_attention":
            keys = _attended(ctx_len, a["causal"], a.get("window"))
            qk = a["nope_head_dim"] + a["rope_head_dim"]
            flops += 2 * a["heads"] * (qk + a["v_head_dim"]) * keys
            flops += 2 * a["kv_lora_rank"] * a["heads"] * (a["nope_head_dim"] + a["v_head_dim"])  # kv_b_proj
            per_token = (a["kv_lora_rank"] + a["rope_head_dim"]) * nbytes
            kv_bytes += per_token
            kv_bytes_at_context += per_token * _cached(ctx_len, a.get("window"))
        elif op == "linear_attention":
            flops += 2 * 2 * a["heads"] * a["head_dim"] * a["head_dim"]
            state_bytes += a["heads"] * a["head_dim"] * (a["head_dim"] + 1) * nbytes
        elif op == "ssm":
            di, n_state, r, dc, dm = a["d_inner"], a["d_state"], a["dt_rank"], a["d_conv"], a["d_model"]
            flops += 2 * (2 * di * dm + di * (r + 2 * n_state) + r * di + dm * di)  # in, x, dt, out projections
            flops += 2 * di * dc  # depthwise causal conv
            flops += 2 * 3 * di * n_state  # dA*h + dB*x, and the readout C·h
            state_bytes += (di * n_state + di * (dc - 1)) * nbytes
        if op not in ("input", "output", "const", "rel_bias"):
            width = d["shape"][-1] if isinstance(d["shape"][-1], int) else 0
            act_elems += width * len(d["outputs"])
    layers = sum(len(v) for v in g.graph["stacks"].values())
    return Facts(
        model=g.graph["name"], dtype=dt, context=ctx_len,
        params_total=sum(total.values()), params_active=sum(active.values()),
        flops_per_token=int(round(flops)), kv_cache_bytes_per_token=int(kv_bytes),
        kv_cache_bytes_at_context=int(kv_bytes_at_context),
        ssm_state_bytes_per_sequence=int(state_bytes), activation_bytes_per_token=int(act_elems * nbytes),
        layers=layers,
        breakdown={k: v for k, v in total.items() if v}, breakdown_active={k: v for k, v in active.items() if v},
    )
