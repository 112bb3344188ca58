"""The Python API: the same operations as the CLI, for notebooks and scripts."""

from __future__ import annotations

import os
from pathlib import Path

from archlang.spec import ArchError, SourceMap, load_models
from archlang.spec.ast import Model


def load_model(
    spec: str | os.PathLike,
    *,
    model: str | None = None,
    sources: SourceMap | None = None,
    allow_outside_root: bool = False,
) -> Model:
    """The validated AST of one model, from a path to a .arch file or from spec text."""
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and "{" not in spec and spec.endswith(".arch")):
        models = load_models(spec, sources=sources, allow_outside_root=allow_outside_root)
    else:
        models = load_models(source=str(spec), sources=sources)
    if model is None:
        if len(models) > 1:
            names = ", ".join(m.name for m in models)
            raise ArchError(f"this file declares several models ({names}); choose one with --model", kind="usage")
        return models[0]
    for m in models:
        if m.name == model:
            return m
    raise ArchError(f"no model named `{model}` in this file; it declares {', '.join(m.name for m in models)}", kind="usage")


def check_file(path: str | os.PathLike, *, sources: SourceMap | None = None, allow_outside_root: bool = False,
               run: bool = False) -> list[Model]:
    """Parse, validate and lower every model of a file; raise ArchError(s) on any problem."""
    models = load_models(Path(path), sources=sources, allow_outside_root=allow_outside_root)
    return models
