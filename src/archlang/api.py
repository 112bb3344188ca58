"""The Python API: the same operations as the CLI, for notebooks and scripts."""

from __future__ import annotations

import hashlib
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from archlang import __version__
from archlang.compiler import DEFAULT_PIPELINE, generate, lower, run_pipeline, validate
from archlang.compiler.codegen import CodegenError
from archlang.spec import ArchError, SourceMap, load_models
from archlang.spec.ast import Model


def _is_path(spec) -> bool:
    """A Path, or a one-line string naming a .arch file; any other string is spec text."""
    return isinstance(spec, os.PathLike) or (isinstance(spec, str) and "\n" not in spec and spec.endswith(".arch"))


def load_model(
    spec: str | os.PathLike,
    *,
    model: str | None = None,
    sources: SourceMap | None = None,
    allow_outside_root: bool = False,
) -> Model:
    """The validated AST of one model, from a path to a .arch file or from spec text."""
    if _is_path(spec):
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


@dataclass
class Compiled:
    """Everything one compilation produced."""

    model: Model
    graph: nx.MultiDiGraph  # optimized IR
    lowered: nx.MultiDiGraph  # IR before passes
    source: str  # the generated Python module
    passes: list[str]


def _spec_text(spec) -> tuple[str, str]:
    if _is_path(spec):
        return str(spec), Path(spec).read_text(encoding="utf-8", errors="replace")
    return "<string>", str(spec)


def compile_spec(
    spec: str | os.PathLike,
    *,
    model: str | None = None,
    passes: str = DEFAULT_PIPELINE,
    disabled: tuple[str, ...] = (),
    sources: SourceMap | None = None,
    allow_outside_root: bool = False,
    on_step=None,
) -> Compiled:
    """Parse, validate, lower, optimize and generate code for one model."""
    ast = load_model(spec, model=model, sources=sources, allow_outside_root=allow_outside_root)
    lowered = lower(ast)
    validate(lowered)
    from archlang.compiler.passes import parse_pipeline

    applied = [p.name for p in parse_pipeline(passes, disabled)]
    graph = run_pipeline(lowered, passes, disabled, on_step=on_step)
    name, text = _spec_text(spec)
    try:
        source = generate(graph, spec_name=Path(name).name if _is_path(spec) else name, spec_text=text, passes=applied,
                          version=__version__)
    except CodegenError as exc:
        raise ArchError(f"code generation failed: {exc}", kind="codegen") from None
    return Compiled(ast, graph, lowered, source, applied)


def load_source(source: str, name: str = "archlang_model") -> types.ModuleType:
    """Execute generated source as a module (registered in sys.modules, so it can be pickled)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    module_name = f"archlang_generated.{name}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module = types.ModuleType(module_name)
    module.__file__ = f"<archlang:{name}>"
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    sys.modules[module_name] = module
    return module


def build(spec: str | os.PathLike, *, model: str | None = None, passes: str = DEFAULT_PIPELINE,
          disabled: tuple[str, ...] = ()):
    """Compile a spec (path or text) and return a fresh torch.nn.Module."""
    compiled = compile_spec(spec, model=model, passes=passes, disabled=disabled)
    return load_source(compiled.source, compiled.model.name).build()


def check_file(path: str | os.PathLike, *, sources: SourceMap | None = None,
               allow_outside_root: bool = False) -> list[Model]:
    """Parse, validate and lower every model of a file; raise ArchError(s) on any problem."""
    models = load_models(Path(path), sources=sources, allow_outside_root=allow_outside_root)
    for m in models:
        g = lower(m)
        validate(g)
        run_pipeline(g)
    return models
