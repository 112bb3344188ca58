"""What the language server knows about one open spec, as plain functions of its text: the
diagnostics `archc check` would give, what to show on hover, and where a name is defined.
Positions here are 0-based lines and columns, as the protocol counts them; spans are 1-based.

The server (`server.py`) only moves these answers over the protocol, so they are tested
without an editor.
"""

from __future__ import annotations

import inspect
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from archlang.spec import ast as A
from archlang.spec import syntax as S
from archlang.spec.errors import ArchError, ArchErrors, SourceMap, Span, all_errors
from archlang.spec.parser import parse_recovering


@dataclass(frozen=True)
class Range:
    line: int
    column: int
    end_line: int
    end_column: int


@dataclass(frozen=True)
class Diagnostic:
    range: Range
    message: str
    severity: str = "error"  # or "warning"
    code: str | None = None  # a lint rule's code; the error kind otherwise


@dataclass(frozen=True)
class Location:
    path: str
    range: Range


def _range(span: Span | None) -> Range:
    if span is None:
        return Range(0, 0, 0, 1)
    end_line = (span.end_line or span.line) - 1
    end_column = (span.end_column or span.column + 1) - 1
    return Range(span.line - 1, span.column - 1, end_line, end_column)


def _name_range(span: Span, name: str) -> Range:
    """The range of a name that starts a span (a declaration's or a call's)."""
    return Range(span.line - 1, span.column - 1, span.line - 1, span.column - 1 + len(name))


# ----------------------------------------------------------------------------- diagnostics


def diagnostics(text: str, path: str | os.PathLike) -> list[Diagnostic]:
    """Every error `archc check` reports for this text, as if it were saved at `path` (imports
    resolve from its folder; an error inside an imported file is shown on the import), or, when
    it has none, the lint findings `check` shows, as warnings under the project's [tool.archc]."""
    from archlang.api import _check
    from archlang.lint import lint_models, load_config
    from archlang.spec.resolve import load_models

    path = Path(path)
    sources = SourceMap()
    try:
        models = _check(load_models(source=text, name=str(path), root=path.parent, sources=sources), run=False)
    except (ArchError, ArchErrors) as exc:
        return [_diagnostic(e, str(path), text) for e in all_errors(exc)]
    try:
        config = load_config(path)
    except ArchError as exc:  # a broken [tool.archc]: say so on the first line
        return [Diagnostic(Range(0, 0, 0, 1), exc.message, severity="warning", code=exc.kind)]
    found = lint_models(models, config, sources, whole_ir=False).findings
    return [Diagnostic(_range(f.span if f.span is not None and f.span.file == str(path) else None),
                       f"{f.message}\nwhy: {f.why}\nfix: {f.fix}", severity="warning", code=f.code) for f in found]


def _diagnostic(e: ArchError, file: str, text: str) -> Diagnostic:
    message = e.message + (f"\nhint: {e.hint}" if e.hint else "") + "".join(f"\nnote: {n}" for n in e.notes)
    if e.span is not None and e.span.file != file:  # in an imported file: point at the import
        tree, _, _ = parse_recovering(text, file)
        where = next((i.span for i in (tree.imports if tree else ())), None)
        return Diagnostic(_range(where), f"{e.span}: {message}", code=e.kind)
    return Diagnostic(_range(e.span), message, code=e.kind)


# ----------------------------------------------------------------------------- the names in a file


@dataclass(frozen=True)
class _Ref:
    """A name written somewhere in the file: a reference, or the name of a declaration."""

    name: str
    range: Range
    model: S.ModelDecl | None
    role: str  # "ref", "call", "block", "model", "let", "import"


def _expr_names(e, model) -> Iterator[_Ref]:
    if isinstance(e, S.Name):
        yield _Ref(e.id, _range(e.span), model, "ref")
    elif isinstance(e, S.Call):
        yield _Ref(e.func, _name_range(e.span, e.func), model, "call")
        for arg in e.args:
            yield from _expr_names(arg.value, model)
    elif isinstance(e, S.ListExpr):
        for item in e.items:
            yield from _expr_names(item, model)
    elif isinstance(e, S.BinOp):
        yield from _expr_names(e.left, model)
        yield from _expr_names(e.right, model)
    elif isinstance(e, S.Neg):
        yield from _expr_names(e.operand, model)


def _refs(tree: S.SourceFile) -> Iterator[_Ref]:
    for imp in tree.imports:
        yield _Ref(imp.path, _range(imp.span), None, "import")
    for m in tree.models:
        yield _Ref(m.name, _name_range(m.span, m.name), m, "model")
        if m.parent and m.parent_span:
            yield _Ref(m.parent, _range(m.parent_span), m, "ref")
        for let in m.lets:
            yield _Ref(let.name, _name_range(let.span, let.name), m, "let")
            yield from _expr_names(let.value, m)
        for a in m.assigns:
            yield from _expr_names(a.value, m)
        for b in m.blocks:
            yield _Ref(b.name, _name_range(b.span, b.name), m, "block")
            if b.parent and b.parent_span:
                yield _Ref(b.parent, _range(b.parent_span), m, "ref")
            for a in b.assigns:
                yield from _expr_names(a.value, m)


def _at(tree: S.SourceFile | None, line: int, column: int) -> _Ref | None:
    if tree is None:
        return None
    for ref in _refs(tree):
        r = ref.range
        if (r.line, r.column) <= (line, column) <= (r.end_line, r.end_column):
            return ref
    return None


def _tree(text: str, path: Path) -> S.SourceFile | None:
    return parse_recovering(text, str(path))[0]


# ----------------------------------------------------------------------------- go to definition


def _imported(tree: S.SourceFile, path: Path) -> Iterator[tuple[Path, S.SourceFile]]:
    """The files this one imports (read as `archc` reads them), parsed; unreadable ones skipped."""
    from archlang.spec.resolve import read_spec

    for imp in tree.imports:
        target = (path.parent / imp.path)
        try:
            sub = parse_recovering(read_spec(target), str(target))[0]
        except ArchError:
            continue
        if sub is not None:
            yield target, sub


def _find_model(name: str, tree: S.SourceFile, path: Path) -> tuple[Path, S.ModelDecl] | None:
    for m in tree.models:
        if m.name == name:
            return path, m
    for sub_path, sub in _imported(tree, path):
        for m in sub.models:
            if m.name == name:
                return sub_path, m
    return None


def definition(text: str, path: str | os.PathLike, line: int, column: int) -> Location | None:
    """Where the name at (line, column) is defined: a block, a let or a model (in this file or an
    imported one), or the file an import names."""
    path = Path(path)
    tree = _tree(text, path)
    ref = _at(tree, line, column)
    if ref is None:
        return None
    if ref.role == "import":
        target = path.parent / ref.name
        return Location(str(target), Range(0, 0, 0, 0)) if target.is_file() else None
    if ref.role in ("block", "let", "model"):
        return Location(str(path), ref.range)
    model_path, model = path, ref.model
    seen = set()
    while model is not None and model.name not in seen:  # this model, then the ones it extends
        seen.add(model.name)
        for decl in (*model.lets, *model.blocks):
            if decl.name == ref.name:
                return Location(str(model_path), _name_range(decl.span, decl.name))
        found = _find_model(model.parent, tree, path) if model.parent else None
        model_path, model = found if found else (model_path, None)
    found = _find_model(ref.name, tree, path)
    if found:
        return Location(str(found[0]), _name_range(found[1].span, found[1].name))
    return None


# ----------------------------------------------------------------------------- hover


def _constructs() -> dict[str, type]:
    """Each construct's keyword (`gqa`, `mamba2`, `rmsnorm`, ...) → its AST class."""
    out = {}
    for cls in vars(A).values():
        if inspect.isclass(cls) and issubclass(cls, A.Node) and "kind" in getattr(cls, "model_fields", {}):
            for kind in typing.get_args(cls.model_fields["kind"].annotation):
                out.setdefault(kind, cls)
    return out


def _facts_text(model: A.Model) -> list[str]:
    from archlang.compiler import compute_facts, lower

    facts = compute_facts(lower(model))
    lines = [f"**model {model.name}** ({model.family}, {facts.layers} layers, context {facts.context:,})", "",
             f"- parameters: {facts.params_total:,} total, {facts.params_active:,} active per token",
             f"- weights ({facts.dtype}): {facts.weight_bytes:,} bytes",
             f"- FLOPs per token (forward): {facts.flops_per_token:,}",
             f"- KV cache: {facts.kv_cache_bytes_per_token:,} bytes per token"]
    if facts.ssm_state_bytes_per_sequence:
        lines.append(f"- recurrent state: {facts.ssm_state_bytes_per_sequence:,} bytes per sequence")
    return lines


def _block_text(model: A.Model, block: str) -> list[str]:
    from archlang.compiler import lower

    g = lower(model)
    uses = [i for stack in g.graph["stacks"].values() for i, b in enumerate(stack) if b == block]
    first = next(((d["stack"], d["layer"]) for _, d in g.nodes(data=True) if d["block"] == block), None)
    params = 0
    for _, d in g.nodes(data=True):
        if (d["stack"], d["layer"]) == first:
            for shape in d["params"].values():
                n = 1
                for s in shape:
                    n *= s
                params += n
    return [f"**block {block}** in model {model.name}: {len(uses)} layer(s)", "",
            "`" + g.graph["blocks"].get(block, block) + "`", "", f"{params:,} parameters per layer"]


def hover(text: str, path: str | os.PathLike, line: int, column: int) -> str | None:
    """Markdown for the name at (line, column): a model's facts, a block's parts and size, or a
    construct's documentation."""
    from archlang.spec.resolve import load_models

    path = Path(path)
    ref = _at(_tree(text, path), line, column)
    if ref is None:
        return None
    if ref.role == "call":
        cls = _constructs().get(ref.name)
        doc = inspect.getdoc(cls) if cls is not None else None
        return f"**{ref.name}**\n\n{doc}" if doc else None
    if ref.role not in ("model", "block", "ref"):
        return None
    try:
        models = {m.name: m for m in load_models(source=text, name=str(path), root=path.parent)}
    except (ArchError, ArchErrors):
        return None  # the diagnostics say why
    if ref.role == "model" or (ref.role == "ref" and ref.name in models):
        return "\n".join(_facts_text(models[ref.name])) if ref.name in models else None
    model = models.get(ref.model.name) if ref.model is not None else None
    if model is not None and ref.name in model.blocks:
        return "\n".join(_block_text(model, ref.name))
    return None
