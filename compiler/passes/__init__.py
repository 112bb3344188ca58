"""Optimization passes over the graph IR, one per module, run by a small pass manager.

Pipelines are strings of pass names: "fold-rope,fuse-qkv,fuse-gate-up,fuse-add-norm,share-constants,dce".
The IR is validated after every pass; a failure names the pass and the passes before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import networkx as nx

from archlang.spec.errors import ArchError, ArchErrors

from ..ir import dump
from ..validate import validate
from .base import Pass, clone
from .dce import DeadNodeElimination
from .fold_rope import FoldRope
from .fuse_add_norm import FuseAddNorm
from .fuse_gate_up import FuseGateUp
from .fuse_qkv import FuseQKV
from .share_constants import ShareConstants

REGISTRY: dict[str, type[Pass]] = {
    cls.name: cls for cls in (FoldRope, FuseQKV, FuseGateUp, FuseAddNorm, ShareConstants, DeadNodeElimination)
}

# Order matters: fold-rope first lets fuse-qkv see projections that feed attention directly.
DEFAULT_PIPELINE = "fold-rope,fuse-qkv,fuse-gate-up,fuse-add-norm,share-constants,dce"


def parse_pipeline(text: str, disabled: tuple[str, ...] = ()) -> list[Pass]:
    """`"fuse-qkv,dce"` → [FuseQKV(), DeadNodeElimination()]; unknown names are an error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in (*names, *disabled):
        if name not in REGISTRY:
            from archlang.spec.errors import did_you_mean

            raise ArchError(f"unknown pass `{name}`", hint=did_you_mean(name, REGISTRY) or
                            f"passes: {', '.join(REGISTRY)}", kind="usage")
    return [REGISTRY[n]() for n in names if n not in disabled]


@dataclass
class PassManager:
    """Runs passes in order on its own copy of the IR. The IR is validated after the pipeline,
    or after every pass with `verify_each` (the tests, and `archc compile --verify-each`), which
    names the pass that broke it."""

    passes: list[Pass]
    verify_each: bool = False
    on_step: Callable[[str, nx.MultiDiGraph], None] | None = None  # called with ("before"/pass name, graph)
    applied: list[str] = field(default_factory=list)

    def run(self, g: nx.MultiDiGraph) -> nx.MultiDiGraph:
        if self.on_step:
            self.on_step("lower", g)
        g = clone(g)  # the passes rewrite in place: never the caller's graph
        for p in self.passes:
            try:
                g, modified = p.run(g)
                if self.verify_each:
                    validate(g)
            except (ArchError, ArchErrors) as exc:
                errors = exc.errors if isinstance(exc, ArchErrors) else [exc]
                after = ", ".join(self.applied) or "none"
                for e in errors:
                    e.notes.append(f"while running pass {p.name} after [{after}]")
                raise
            self.applied.append(p.name)
            if self.on_step:
                self.on_step(p.name, clone(g))  # a snapshot: later passes keep rewriting g
        if not self.verify_each and self.passes:
            try:
                validate(g)
            except ArchErrors as exc:
                for e in exc.errors:
                    e.notes.append(f"after passes [{', '.join(self.applied)}]; --verify-each names the pass")
                raise
        return g


def run_pipeline(g: nx.MultiDiGraph, pipeline: str = DEFAULT_PIPELINE, disabled: tuple[str, ...] = (),
                 on_step=None, verify_each: bool = False) -> nx.MultiDiGraph:
    return PassManager(parse_pipeline(pipeline, disabled), verify_each=verify_each, on_step=on_step).run(g)


__all__ = ["DEFAULT_PIPELINE", "REGISTRY", "Pass", "PassManager", "dump", "parse_pipeline", "run_pipeline"]
