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


# Memory the process keeps for itself beyond the model's weights and buffers: activations,
# the allocator's slack, the interpreter. A build must leave at least this much free.
SAFETY_FRACTION = 0.10
SAFETY_BYTES = 1 << 30

BUILD_DTYPES = ("float32", "bfloat16", "float16")  # the language's dtypes, as torch names them


def torch_dtype(dtype):
    """A torch dtype from a torch dtype or one of the language's names (fp32, bf16, float16, ...)."""
    import torch

    from archlang.spec.ast import DTYPE_ALIASES

    if isinstance(dtype, torch.dtype):
        if dtype not in [getattr(torch, name) for name in BUILD_DTYPES]:
            raise ArchError(f"cannot build in dtype {dtype}: models are built in float32, bfloat16 or float16",
                            kind="usage")
        return dtype
    name = DTYPE_ALIASES.get(str(dtype), str(dtype))
    if name not in BUILD_DTYPES:
        raise ArchError(f"unknown dtype {dtype!r}", kind="usage",
                        hint="use a torch dtype or one of fp32, bf16, fp16 (float32, bfloat16, float16)")
    return getattr(torch, name)


def available_memory(device) -> int | None:
    """Bytes a build on `device` may use now: free RAM (MemAvailable) on the CPU, free device
    memory on CUDA, None (no limit) on the meta device or where it cannot be told."""
    import torch

    device = torch.device(device if device is not None else torch.get_default_device())
    if device.type == "meta":
        return None
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def build(spec: str | os.PathLike, *, model: str | None = None, passes: str = DEFAULT_PIPELINE,
          disabled: tuple[str, ...] = (), device=None, dtype=None, max_bytes: int | float | None = None):
    """Compile a spec (path or text) and return a fresh torch.nn.Module.

    Parameters and buffers are created in `dtype`: by default the spec's own `dtype` (bf16 when
    the spec says nothing), so `dtype = bf16` builds a bf16 model as a checkpoint would be
    stored. Pass `dtype=torch.float32` (or "fp32") to train with float32 weights or to compare
    numerics; the CPU runs every construct in bf16 too, only slower and less exactly.

    Before anything is allocated, the bytes of every parameter and buffer (measured on the meta
    device) are compared with `max_bytes`, by default the memory `device` has available now
    (free RAM less a safety margin on the CPU, free memory on CUDA, no limit on "meta"): a
    model that does not fit is refused with an ArchError. Build it with `device="meta"` to
    inspect it, in a smaller dtype, or pass `max_bytes=math.inf` to try regardless."""
    import torch

    compiled = compile_spec(spec, model=model, passes=passes, disabled=disabled)
    dt = torch_dtype(compiled.model.dtype if dtype is None else dtype)
    module = load_source(compiled.source, compiled.model.name)
    refuse_if_too_big(module, compiled.model.name, dtype=dt, device=device, max_bytes=max_bytes)
    with _default_dtype(dt):
        if device is None:
            return module.build()
        with torch.device(device):
            return module.build()


def refuse_if_too_big(module: types.ModuleType, name: str, *, dtype, device=None,
                      max_bytes: int | float | None = None) -> None:
    """Raise an ArchError, before anything is allocated, when the model a generated module
    builds would not fit: its parameters and buffers are measured on the meta device and
    compared with `max_bytes`, or with what `device` has available."""
    import torch

    if device is not None and torch.device(device).type == "meta":
        return
    limit = max_bytes
    if limit is None:
        free = available_memory(device)
        if free is None:
            return
        limit = max(0, free - max(SAFETY_BYTES, int(free * SAFETY_FRACTION)))
    with _default_dtype(dtype), torch.device("meta"):
        shell = module.build()
    needed = sum(t.numel() * t.element_size() for t in (*shell.parameters(), *shell.buffers()))
    if needed <= limit:
        return
    params = sum(p.numel() for p in shell.parameters())
    dev = torch.device(device) if device is not None else torch.get_default_device()
    where = "the max_bytes limit" if max_bytes is not None else f"available on {dev} (free memory less a safety margin)"
    smaller = " or a smaller dtype (dtype=torch.bfloat16)" if dtype == torch.float32 else ""
    raise ArchError(
        f"`{name}` needs {_gib(needed)} for its {params:,} parameters and its buffers in "
        f"{str(dtype).removeprefix('torch.')}, but only {_gib(limit)} is {where}", kind="limit",
        hint=f'build(..., device="meta") to inspect it without memory{smaller}',
    )


class _default_dtype:
    """torch's default dtype set for the block, so every parameter and buffer is made in it."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        import torch

        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        import torch

        torch.set_default_dtype(self.saved)


def check_numerics(model_ast: Model, *, seed: int = 0) -> None:
    """Build a small stand-in of the model (compiler/tiny.py: narrow, one layer per block kind),
    run a forward pass on random tokens, and raise an ArchError naming the first op whose output
    is NaN or Inf."""
    import torch

    from archlang.compiler.tiny import stand_in

    small, origin = stand_in(model_ast)
    g = run_pipeline(lower(small))
    generated = load_source(generate(g, spec_name=small.name, version=__version__), small.name)
    refuse_if_too_big(generated, small.name, dtype=torch.float32)  # what shrink() cannot cut must still fit
    module = generated.build().eval()
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
    return _check(load_models(Path(path), sources=sources, allow_outside_root=allow_outside_root), run)


def check_source(text: str, *, name: str = "<stdin>", sources: SourceMap | None = None, run: bool = False) -> list[Model]:
    """`check_file` for spec text that is not in a file (`archc check -`): its imports resolve
    from the current folder."""
    return _check(load_models(source=text, name=name, root=Path.cwd(), sources=sources), run)


def _check(models: list[Model], run: bool) -> list[Model]:
    for m in models:
        g = lower(m, folded=can_fold(m))
        validate(g)
        run_pipeline(g)
        if run:
            check_numerics(m)
    return models
