"""The Python API: the same operations as the CLI, for notebooks and scripts."""

from __future__ import annotations

import hashlib
import os
import sys
import types
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import networkx as nx

from archlang import __version__
from archlang.compiler import DEFAULT_PIPELINE, generate, lower, run_pipeline, validate
from archlang.compiler.codegen import CodegenError
from archlang.compiler.fold import can_fold
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
    """Everything one compilation produced. The IRs of every layer are built on first use: the
    module itself is compiled from a folded IR (compiler/fold.py) whose size does not grow with
    depth."""

    model: Model
    source: str  # the generated Python module
    passes: list[str]
    pipeline: str = DEFAULT_PIPELINE
    disabled: tuple[str, ...] = ()

    @cached_property
    def lowered(self) -> nx.MultiDiGraph:
        """The IR before passes."""
        return lower(self.model)

    @cached_property
    def graph(self) -> nx.MultiDiGraph:
        """The optimized IR."""
        return run_pipeline(self.lowered, self.pipeline, self.disabled)


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
    verify_each: bool = False,
) -> Compiled:
    """Parse, validate, lower, optimize and generate code for one model."""
    ast = load_model(spec, model=model, sources=sources, allow_outside_root=allow_outside_root)
    # on_step shows the IR after each pass, which must be the whole model's
    folded = on_step is None and can_fold(ast)
    lowered = lower(ast, folded=folded)
    validate(lowered)
    from archlang.compiler.passes import parse_pipeline

    applied = [p.name for p in parse_pipeline(passes, disabled)]
    graph = run_pipeline(lowered, passes, disabled, on_step=on_step, verify_each=verify_each)
    name, text = _spec_text(spec)
    try:
        source = generate(graph, spec_name=Path(name).name if _is_path(spec) else name, spec_text=text, passes=applied,
                          version=__version__)
    except CodegenError as exc:
        raise ArchError(f"code generation failed: {exc}", kind="codegen") from None
    compiled = Compiled(ast, source, applied, passes, disabled)
    if not folded:
        compiled.lowered, compiled.graph = lowered, graph
    return compiled


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


# Refuse to allocate more than this much for weights on a real device without being asked.
MAX_BUILD_BYTES = 64 << 30


def build(spec: str | os.PathLike, *, model: str | None = None, passes: str = DEFAULT_PIPELINE,
          disabled: tuple[str, ...] = (), device=None, max_bytes: int | None = MAX_BUILD_BYTES):
    """Compile a spec (path or text) and return a fresh torch.nn.Module.

    A model whose float32 weights exceed `max_bytes` is refused before anything is allocated;
    build it with `device="meta"` to inspect it, or raise `max_bytes`."""
    import torch

    from archlang.compiler import compute_facts

    compiled = compile_spec(spec, model=model, passes=passes, disabled=disabled)
    params = compute_facts(compiled.graph).params_total
    on_meta = device is not None and torch.device(device).type == "meta"
    if max_bytes is not None and not on_meta and params * 4 > max_bytes:
        raise ArchError(
            f"`{compiled.model.name}` has {params:,} parameters ({params * 4 / 2**30:,.1f} GiB in float32), more than "
            f"the {max_bytes / 2**30:,.0f} GiB build limit", kind="limit",
            hint='build(..., device="meta") to inspect it without memory, or pass max_bytes=None',
        )
    module = load_source(compiled.source, compiled.model.name)
    if device is None:
        return module.build()
    with torch.device(device):
        return module.build()


def check_numerics(model_ast: Model, *, seed: int = 0) -> None:
    """Build a small stand-in of the model (compiler/tiny.py: narrow, one layer per block kind),
    run a forward pass on random tokens, and raise an ArchError naming the first op whose output
    is NaN or Inf."""
    import torch

    from archlang.compiler.tiny import stand_in

    small, origin = stand_in(model_ast)
    g = run_pipeline(lower(small))
    module = load_source(generate(g, spec_name=small.name, version=__version__), small.name).build().eval()
    torch.manual_seed(seed)
    first: list[str] = []

    def hook(name):
        def check(_module, _inputs, output):
            outs = output if isinstance(output, tuple) else (output,)
            if not first and any(isinstance(o, torch.Tensor) and o.is_floating_point() and not torch.isfinite(o).all()
                                 for o in outs):
                first.append(name)
        return check

    def pre_hook(name):
        def check(_module, inputs):
            if not first and any(isinstance(i, torch.Tensor) and i.is_floating_point() and not torch.isfinite(i).all()
                                 for i in inputs):
                first.append(f"the input of {name}")  # made between modules: a scale or a residual add
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if n]
    handles += [m.register_forward_pre_hook(pre_hook(n)) for n, m in module.named_modules() if n]
    ids = torch.randint(0, small.vocab, (2, min(16, small.context)))
    with torch.no_grad():
        out = module(ids, ids) if small.family == "encoder_decoder" else module(ids)
    for h in handles:
        h.remove()
    outs = out if isinstance(out, tuple) else (out,)
    if first or not all(torch.isfinite(o).all() for o in outs):
        where = _spec_layer_numbers(first[0], origin) if first else "the output"
        module_name = where.removeprefix("the input of ")
        shown = f"the input of `{module_name}`" if where != module_name else f"`{where}`"
        raise ArchError(f"non-finite values (NaN/Inf) first appear in {shown} on a random forward pass",
                        _span_of_module(model_ast, module_name), kind="numerics",
                        hint="check scales, caps and epsilons of that component")


def _spec_layer_numbers(where: str, origin: dict[str, tuple[int, ...]]) -> str:
    """`layers.1.attn` of the stand-in is the layer the spec numbers origin["layers"][1]."""
    prefix, _, name = where.rpartition("the input of ")
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] in origin and parts[1].isdigit():
        parts[1] = str(origin[parts[0]][int(parts[1])])
    return prefix + _ + ".".join(parts)


_COMPONENT_OF = {"attn": "attention", "cross_attn": "cross_attention", "ssm": "ssm", "moe": "ffn"}


def _span_of_module(m: Model, name: str):
    """The spec location behind a module name like `layers.3.attn_norm`."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[1].isdigit():
        stack = {"layers": m.layers, "encoder": m.encoder_layers, "decoder": m.decoder_layers}.get(parts[0], ())
        block = stack[int(parts[1])] if int(parts[1]) < len(stack) else None
        attr = parts[2]
        component = _COMPONENT_OF.get(attr) or ("norm" if attr.endswith("norm") else
                                               "ffn" if attr.split("_")[0] in ("gate", "up", "down", "act", "glu")
                                               else "attention")
        return m.span_of("blocks", block, component) if block else None
    field = {"embed": "embedding_scale", "final_norm": "final_norm", "lm_head": "vocab"}.get(parts[0], parts[0])
    if len(parts) == 2 and parts[1] == "0":  # the input of the first layer: the embeddings made it
        return m.span_of("embedding_scale") if m.embedding_scale else m.span_of("position")
    if len(parts) == 2 and parts[1].isdigit():  # a whole layer: point at its block
        stack = {"layers": m.layers, "encoder": m.encoder_layers, "decoder": m.decoder_layers}.get(parts[0], ())
        return m.span_of("blocks", stack[int(parts[1])]) if int(parts[1]) < len(stack) else None
    return m.span_of(field)


def check_file(path: str | os.PathLike, *, sources: SourceMap | None = None,
               allow_outside_root: bool = False, run: bool = False) -> list[Model]:
    """Parse, validate and lower every model of a file; with `run`, also look for NaN/Inf in a
    forward pass of a small stand-in. Raises ArchError(s) on any problem."""
    models = load_models(Path(path), sources=sources, allow_outside_root=allow_outside_root)
    for m in models:
        g = lower(m, folded=can_fold(m))
        validate(g)
        run_pipeline(g)
        if run:
            check_numerics(m)
    return models
