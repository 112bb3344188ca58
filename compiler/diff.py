"""Semantic architecture diff: what changed between two models, layer by layer, and what it
does to the facts. Formatting, comments, constant names and block names do not count."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from archlang.spec import ast as A

from .facts import Facts
from .lower import describe_block, describe_component

COMPONENTS = ("norm", "mixers", "attention", "ssm", "cross_attention", "ffn")


@dataclass
class Change:
    where: str  # "model", "layers 8–15", ...
    what: str  # "attention", "d_model", ...
    before: str
    after: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what} {self.before} → {self.after}"


@dataclass
class Diff:
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # renames, moved blocks: not architectural
    facts: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "changes": [c.__dict__ for c in self.changes],
            "notes": self.notes,
            "facts": {k: {"before": a, "after": b, "delta": b - a, "percent": _pct(a, b)} for k, (a, b) in self.facts.items()},
        }


def _pct(a: int, b: int) -> float | None:
    return None if a == 0 else round(100.0 * (b - a) / a, 4)


def _component(c) -> str:
    if c is None:
        return "none"
    if isinstance(c, A.Norm):
        return f"{c.kind}(eps={c.eps}, placement={c.placement}{', unit_offset' if c.unit_offset else ''})"
    detail = describe_component(c)
    extra = []
    for f in ("bias", "out_bias", "scale", "act", "router", "normalize_top_k", "aux_loss", "z_loss", "shared_gate",
              "inner_norms", "key_multiplier", "gate_multiplier", "down_multiplier", "in_proj_multipliers",
              "attention_in", "attention_out", "ssm_in", "ssm_out"):
        if f in type(c).model_fields:
            v = getattr(c, f)
            if v not in (None, False, 0, 0.0):
                extra.append(f"{f}={v}")
    return detail if not extra else detail[:-1] + (", " if detail[-2] != "(" else "") + ", ".join(extra) + ")"


def _ranges(indices: list[int]) -> str:
    out, start, prev = [], None, None
    for i in indices + [None]:
        if start is None:
            start = prev = i
        elif i is not None and i == prev + 1:
            prev = i
        else:
            out.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = prev = i
    return ", ".join(out)


def _field_value(m: A.Model, f: str) -> str:
    v = getattr(m, f)
    if isinstance(v, A.Node):
        return _component(v) if not isinstance(v, (A.Rope,)) else f"rope(theta={v.theta}, dim={v.dim}, scaling={v.scaling.model_dump() if v.scaling else None})"
    return "none" if v is None else str(v)


def _stages(m: A.Model) -> str:
    """The pipeline stages the spec marks, as layer ranges: `0–7 | 8–15`; "none" when unmarked."""
    if not m.stage_marks:
        return "none"
    bounds = (0, *m.stage_marks, len(m.layers))
    return " | ".join(_ranges(list(range(lo, hi))) for lo, hi in zip(bounds, bounds[1:]))


def diff_models(a: A.Model, b: A.Model, facts_a: Facts | None = None, facts_b: Facts | None = None) -> Diff:
    d = Diff()
    for f in A.MODEL_FIELDS:
        if f in ("layers", "encoder_layers", "decoder_layers"):
            continue
        va, vb = _field_value(a, f), _field_value(b, f)
        if va != vb:
            d.changes.append(Change("model", f, va, vb))
    # Blocks renamed with identical content are the same block.
    content_a = {n: describe_block(blk) + repr(blk.model_dump(exclude={"name"})) for n, blk in a.blocks.items()}
    content_b = {n: describe_block(blk) + repr(blk.model_dump(exclude={"name"})) for n, blk in b.blocks.items()}
    for na, ca in content_a.items():
        for nb, cb in content_b.items():
            if ca == cb and na != nb and na not in content_b:
                d.notes.append(f"block `{na}` renamed to `{nb}`")
    if a.stage_marks != b.stage_marks:  # where pipeline stages begin: no layer or fact changes with it
        d.changes.append(Change("layers", "pipeline stage marks", _stages(a), _stages(b)))
    for stack, layers_a in a.stacks().items():
        layers_b = b.stacks().get(stack, ())
        if len(layers_a) != len(layers_b):
            d.changes.append(Change(stack, "depth", str(len(layers_a)), str(len(layers_b))))
        sig_a = [content_a[n] for n in layers_a]
        sig_b = [content_b[n] for n in layers_b]
        if sig_a != sig_b and sorted(sig_a) == sorted(sig_b):
            # The same blocks in another order: say which moved rather than diffing each layer.
            for sig in dict.fromkeys(sig_a):
                pos_a = [i for i, x in enumerate(sig_a) if x == sig]
                pos_b = [i for i, x in enumerate(sig_b) if x == sig]
                if pos_a != pos_b:
                    name = layers_a[pos_a[0]]
                    d.changes.append(Change(stack, f"block `{name}` moved", f"layers {_ranges(pos_a)}",
                                            f"layers {_ranges(pos_b)}"))
            continue
        grouped: dict[tuple[str, str, str], list[int]] = {}
        for i in range(min(len(layers_a), len(layers_b))):
            ba, bb = a.blocks[layers_a[i]], b.blocks[layers_b[i]]
            for comp in COMPONENTS:
                ca, cb = _component(getattr(ba, comp)), _component(getattr(bb, comp))
                if ca != cb:
                    grouped.setdefault((comp, ca, cb), []).append(i)
        for (comp, ca, cb), idx in grouped.items():
            label = "layer" if len(idx) == 1 else "layers"
            prefix = "" if stack == "layers" else f"{stack} "
            d.changes.append(Change(f"{prefix}{label} {_ranges(idx)}", comp, ca, cb))
    if facts_a and facts_b:
        for k in ("params_total", "params_active", "flops_per_token", "kv_cache_bytes_per_token",
                  "kv_cache_bytes_at_context", "ssm_state_bytes_per_sequence", "weight_bytes"):
            d.facts[k] = (getattr(facts_a, k), getattr(facts_b, k))
    return d


def check_guard(guard: str, d: Diff) -> str | None:
    """`params_total>+5%` or `kv_cache_bytes_per_token>0`: a message when the guard trips."""
    import re

    m = re.fullmatch(r"\s*([a-z_]+)\s*(>=|<=|>|<)\s*([+-]?\d+(?:\.\d+)?)(%?)\s*", guard)
    if not m:
        raise ValueError(f"cannot read guard {guard!r}; write it like 'params_total>+5%'")
    metric, op, number, pct = m.groups()
    if metric not in d.facts:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(d.facts)}")
    before, after = d.facts[metric]
    delta = (_pct(before, after) or 0.0) if pct else after - before
    limit = float(number)
    tripped = {">": delta > limit, ">=": delta >= limit, "<": delta < limit, "<=": delta <= limit}[op]
    unit = "%" if pct else ""
    return f"{metric} changed by {delta:+g}{unit} ({before:,} → {after:,}), guard {guard}" if tripped else None
