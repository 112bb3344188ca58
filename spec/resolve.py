"""Syntax → AST: follow `import`s, apply `extends`, evaluate constants, validate with pydantic.

Every value handed to pydantic is recorded with the span it came from, so a validation error
on `blocks.layer.attention.kv_heads` points at the `6` the user wrote, not at the model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import ast as A
from . import syntax as S
from .errors import ArchError, ArchErrors, SourceMap, Span, did_you_mean
from .parser import parse_source

MAX_IMPORT_DEPTH = 16
MAX_EXTENDS_DEPTH = 32
MAX_INT_BITS = 128  # larger integers are certainly mistakes; refuse before arithmetic explodes


class Symbol(str):
    """A bare word that names no constant or block: `decoder`, `pre`, `silu`, `bf16`."""


@dataclass(frozen=True)
class LayerList:
    """The value of a layer-stack expression: block names, one per layer."""

    names: tuple[str, ...]


# ----------------------------------------------------------------------------- loading


@dataclass
class Program:
    """Every model declaration reachable from an entry file, by name."""

    entry: str
    models: dict[str, S.ModelDecl] = field(default_factory=dict)
    entry_models: list[str] = field(default_factory=list)
    sources: SourceMap = field(default_factory=SourceMap)


def load_program(
    path: str | os.PathLike | None = None,
    *,
    source: str | None = None,
    name: str = "<string>",
    root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    sources: SourceMap | None = None,
) -> Program:
    """Parse an entry file (or a string) and everything it imports.

    Imports resolve relative to the importing file and may not leave `root` (by default the
    entry file's folder) unless `allow_outside_root` is set, so a spec from a stranger cannot
    read arbitrary files.
    """
    from_file = source is None
    if from_file:
        if path is None:
            raise ValueError("give a path or a source string")
        entry = Path(path)
        display = str(path)
        source = _read(entry, display, None)
        base = entry.resolve().parent
    else:
        display = name
        base = Path(root or os.getcwd()).resolve()
    root_dir = Path(root).resolve() if root else base
    program = Program(entry=display, sources=sources if sources is not None else SourceMap())
    files_seen: dict[Path, str] = {}

    def visit(text: str, file_display: str, file_path: Path | None, stack: tuple[Path, ...], is_entry: bool):
        program.sources.add(file_display, text)
        parsed = parse_source(text, file_display)
        here = file_path.parent if file_path else base
        for imp in parsed.imports:
            target = (here / imp.path).resolve()
            if not allow_outside_root and not _is_within(target, root_dir):
                raise ArchError(
                    f"import of {imp.path!r} leaves the project folder {str(root_dir)!r}",
                    imp.span, hint="keep imported specs inside the project, or pass --allow-outside-root",
                    kind="import",
                )
            if target in stack:
                chain = " → ".join(p.name for p in (*stack, target))
                raise ArchError(f"import cycle: {chain}", imp.span, kind="import")
            if len(stack) >= MAX_IMPORT_DEPTH:
                raise ArchError(f"imports are nested more than {MAX_IMPORT_DEPTH} deep", imp.span, kind="limit")
            if target in files_seen:
                continue
            shown = os.path.relpath(target) if not Path(imp.path).is_absolute() else str(target)
            files_seen[target] = shown
            visit(_read(target, shown, imp.span), shown, target, (*stack, target), False)
        for decl in parsed.models:
            if decl.name in program.models:
                first = program.models[decl.name]
                raise ArchError(f"model `{decl.name}` is defined twice", decl.span,
                                notes=[f"first defined at {first.span}"], kind="semantic")
            program.models[decl.name] = decl
            if is_entry:
                program.entry_models.append(decl.name)

    entry_path = Path(path).resolve() if from_file else None
    if entry_path is not None:
        files_seen[entry_path] = display
    visit(source, display, entry_path, (entry_path,) if entry_path else (), True)
    if not program.entry_models:
        raise ArchError("no model in this file", Span(display, 1, 1), hint="declare one: `model name { ... }`", kind="semantic")
    return program


def _read(path: Path, display: str, span: Span | None) -> str:
    try:
        if path.stat().st_size > 1_000_000:
            raise ArchError(f"{display} is too large to be a spec", span, kind="limit")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArchError(f"file not found: {display}", span, kind="import") from None
    except IsADirectoryError:
        raise ArchError(f"{display} is a folder, not a spec file", span, kind="import") from None
    except UnicodeDecodeError as exc:
        raise ArchError(f"{display} is not UTF-8 text ({exc.reason} at byte {exc.start})", span, kind="import") from None
    except OSError as exc:
        raise ArchError(f"cannot read {display}: {exc.strerror}", span, kind="import") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise ArchError(f"cannot read {display!r}: {exc}", span, kind="import") from None


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- extends


@dataclass
class _Merged:
    """A model's declarations after `extends`: later assignments override earlier ones."""

    decl: S.ModelDecl
    lets: dict[str, S.Let]
    assigns: dict[str, S.Assign]
    blocks: dict[str, dict[str, S.Assign]]
    block_spans: dict[str, Span]


def _override(expr: S.Expr, path: tuple[str, ...], value: S.Expr, span: Span) -> S.Expr:
    """`attention.window = 4096`: set one argument of the call already written for `attention`."""
    if not isinstance(expr, S.Call):
        raise ArchError(f"cannot set `{'.'.join(path)}` here: the value it belongs to is not a call",
                        span, hint="assign the whole value instead", kind="semantic")
    head, rest = path[0], path[1:]
    args = list(expr.args)
    for i, arg in enumerate(args):
        if arg.name == head:
            new_value = _override(arg.value, rest, value, span) if rest else value
            args[i] = S.Arg(head, new_value, span)
            break
    else:
        if rest:
            raise ArchError(f"cannot set `{'.'.join(path)}`: `{head}` is not set in `{expr.func}(...)`",
                            span, kind="semantic")
        args.append(S.Arg(head, value, span))
    return S.Call(expr.func, tuple(args), expr.span)


def _apply(assigns: dict[str, S.Assign], new: S.Assign, where: str) -> None:
    key = new.path[0]
    if len(new.path) == 1:
        assigns[key] = new
        return
    if key not in assigns:
        raise ArchError(f"cannot set `{'.'.join(new.path)}`: `{key}` is not set in {where}", new.span,
                        hint=f"assign `{key} = ...` first", kind="semantic")
    old = assigns[key]
    assigns[key] = S.Assign((key,), _override(old.value, new.path[1:], new.value, new.span), old.span)


def _check_unique(items, what: str) -> None:
    seen: dict[str, Span] = {}
    for name, span in items:
        if name in seen:
            raise ArchError(f"{what} `{name}` is set twice", span, notes=[f"first set at {seen[name]}"], kind="semantic")
        seen[name] = span


def _merge(program: Program, name: str, chain: tuple[str, ...] = ()) -> _Merged:
    decl = program.models[name]
    if name in chain:
        raise ArchError(f"model `{name}` extends itself: {' → '.join((*chain, name))}", decl.span, kind="semantic")
    if len(chain) > MAX_EXTENDS_DEPTH:
        raise ArchError(f"`extends` chain is longer than {MAX_EXTENDS_DEPTH}", decl.span, kind="limit")
    _check_unique(((l.name, l.span) for l in decl.lets), "constant")
    _check_unique((("/".join(a.path), a.span) for a in decl.assigns), "field")
    _check_unique(((b.name, b.span) for b in decl.blocks), "block")
    if decl.parent:
        if decl.parent not in program.models:
            raise ArchError(f"unknown model `{decl.parent}` in extends", decl.parent_span,
                            hint=did_you_mean(decl.parent, program.models) or "import the file that defines it",
                            kind="semantic")
        base = _merge(program, decl.parent, (*chain, name))
        merged = _Merged(decl, dict(base.lets), dict(base.assigns),
                         {k: dict(v) for k, v in base.blocks.items()}, dict(base.block_spans))
    else:
        merged = _Merged(decl, {}, {}, {}, {})
    merged.lets.update({l.name: l for l in decl.lets})
    for assign in decl.assigns:
        _apply(merged.assigns, assign, f"model `{name}`")

    pending = {b.name: b for b in decl.blocks}

    def merge_block(block: S.BlockDecl, stack: tuple[str, ...]) -> None:
        _check_unique((("/".join(a.path), a.span) for a in block.assigns), "field")
        if block.parent:
            if block.parent in stack:
                raise ArchError(f"block `{block.name}` extends itself", block.span, kind="semantic")
            if block.parent in pending:
                merge_block(pending.pop(block.parent), (*stack, block.parent))
            if block.parent not in merged.blocks:
                raise ArchError(f"unknown block `{block.parent}` in extends", block.parent_span,
                                hint=did_you_mean(block.parent, [*merged.blocks, *pending]), kind="semantic")
            assigns = dict(merged.blocks[block.parent])
        else:
            assigns = dict(merged.blocks.get(block.name, {}))  # re-declaring a parent's block refines it
        for assign in block.assigns:
            _apply(assigns, assign, f"block `{block.name}`")
        merged.blocks[block.name] = assigns
        merged.block_spans[block.name] = block.span

    while pending:
        first = next(iter(pending))
        merge_block(pending.pop(first), (first,))
    return merged


# ----------------------------------------------------------------------------- evaluation


class _Evaluator:
    """Evaluates expressions of one merged model, lazily and with cycle detection."""

    def __init__(self, merged: _Merged):
        self.m = merged
        self.values: dict[str, Any] = {}
        self.in_progress: list[str] = []

    def names(self) -> list[str]:
        return [*self.m.lets, *self.m.assigns, *self.m.blocks]

    def lookup(self, ref: S.Name) -> Any:
        name = ref.id
        if name in self.values:
            return self.values[name]
        expr = None
        if name in self.m.lets:
            expr = self.m.lets[name].value
        elif name in self.m.assigns and name not in ("layers", "encoder_layers", "decoder_layers"):
            expr = self.m.assigns[name].value
        elif name in self.m.blocks:
            return LayerList((name,))
        if expr is None:
            return Symbol(name)
        if name in self.in_progress:
            cycle = " → ".join((*self.in_progress[self.in_progress.index(name):], name))
            raise ArchError(f"`{name}` is defined in terms of itself: {cycle}", ref.span, kind="semantic")
        self.in_progress.append(name)
        try:
            value = self.eval(expr)
        finally:
            self.in_progress.pop()
        self.values[name] = value
        return value

    def eval(self, e: S.Expr) -> Any:
        if isinstance(e, S.Num):
            return e.value
        if isinstance(e, (S.Str, S.Bool)):
            return e.value
        if isinstance(e, S.NoneLit):
            return None
        if isinstance(e, S.Name):
            return self.lookup(e)
        if isinstance(e, S.Neg):
            v = self.eval(e.operand)
            self._number(v, e.operand)
            return -v
        if isinstance(e, S.BinOp):
            return self.binop(e)
        if isinstance(e, S.ListExpr):
            items = [self.eval(i) for i in e.items]
            if items and all(isinstance(i, LayerList) for i in items):
                return LayerList(tuple(n for i in items for n in i.names))
            return items
        if isinstance(e, S.Call):
            if e.func == "pattern":
                return self.pattern(e)
            return e  # component calls are turned into data by _Builder, which knows the slot
        raise AssertionError(f"unhandled expression {e!r}")

    def _number(self, v: Any, e: S.Expr) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if isinstance(v, Symbol):
                hint = did_you_mean(v, self.names())
                raise ArchError(f"unknown name `{v}`", e.span, hint=hint, kind="semantic")
            raise ArchError(f"expected a number, found {_describe(v)}", e.span, kind="semantic")
        if isinstance(v, float) and not math.isfinite(v):
            raise ArchError("this number is not finite", e.span, kind="semantic")

    def binop(self, e: S.BinOp) -> Any:
        left, right = self.eval(e.left), self.eval(e.right)
        if isinstance(left, LayerList) or isinstance(right, LayerList):
            return self.layer_op(e, left, right)
        self._number(left, e.left)
        self._number(right, e.right)
        try:
            if e.op == "+":
                out = left + right
            elif e.op == "-":
                out = left - right
            elif e.op == "*":
                out = left * right
            elif e.op in ("/", "//", "%"):
                if right == 0:
                    raise ArchError("division by zero", e.right.span, kind="semantic")
                if e.op == "/":
                    # exact when it divides: `d_model / heads` stays an integer
                    out = left // right if isinstance(left, int) and isinstance(right, int) and left % right == 0 else left / right
                else:
                    out = left // right if e.op == "//" else left % right
            else:
                if isinstance(left, int) and isinstance(right, int) and right >= 0:
                    if abs(left) > 1 and right * math.log2(abs(left)) > MAX_INT_BITS:
                        raise ArchError("this number is too large", e.span, kind="limit")
                out = float(left) ** right if isinstance(right, float) or right < 0 else left**right
        except OverflowError:
            raise ArchError("this number is too large", e.span, kind="limit") from None
        if isinstance(out, int) and out.bit_length() > MAX_INT_BITS:
            raise ArchError("this number is too large", e.span, kind="limit")
        if isinstance(out, complex) or (isinstance(out, float) and not math.isfinite(out)):
            raise ArchError("this expression has no finite real value", e.span, kind="semantic")
        return out

    def layer_op(self, e: S.BinOp, left: Any, right: Any) -> LayerList:
        if e.op == "+" and isinstance(left, LayerList) and isinstance(right, LayerList):
            out = left.names + right.names
        elif e.op == "*":
            stack, count, count_expr = (left, right, e.right) if isinstance(left, LayerList) else (right, left, e.left)
            if isinstance(count, bool) or not isinstance(count, int) or isinstance(count, LayerList):
                raise ArchError(f"a layer stack repeats a whole number of times, found {_describe(count)}",
                                count_expr.span, kind="semantic")
            if count < 0:
                raise ArchError("a repeat count cannot be negative", count_expr.span, kind="semantic")
            if len(stack.names) * count > A.MAX_LAYERS:
                raise ArchError(
                    f"this stack has {len(stack.names) * count:,} layers; the limit is {A.MAX_LAYERS:,}",
                    e.span, kind="limit",
                )
            out = stack.names * count
        else:
            raise ArchError(f"layer stacks combine with `+` (concatenate) and `* n` (repeat), not `{e.op}`",
                            e.span, kind="semantic")
        if len(out) > A.MAX_LAYERS:
            raise ArchError(f"this stack has {len(out):,} layers; the limit is {A.MAX_LAYERS:,}", e.span, kind="limit")
        return LayerList(out)

    def pattern(self, e: S.Call) -> LayerList:
        """`pattern("MMMA", M = mamba, A = attn)`: one block per character (Megatron-style)."""
        positional = [a for a in e.args if a.name is None]
        if len(positional) != 1 or not isinstance(self.eval(positional[0].value), str):
            raise ArchError("pattern takes one string and a legend: pattern(\"MMMA\", M = mamba, A = attn)",
                            e.span, kind="semantic")
        text = self.eval(positional[0].value)
        legend: dict[str, str] = {}
        for arg in e.args:
            if arg.name is None:
                continue
            value = self.eval(arg.value)
            if not (isinstance(value, LayerList) and len(value.names) == 1):
                raise ArchError(f"legend entry `{arg.name}` must name a block", arg.value.span,
                                hint=did_you_mean(str(value), self.m.blocks), kind="semantic")
            legend[arg.name] = value.names[0]
        if len(text) > A.MAX_LAYERS:
            raise ArchError(f"this pattern has {len(text):,} layers; the limit is {A.MAX_LAYERS:,}", e.span, kind="limit")
        names = []
        for i, ch in enumerate(text):
            if ch not in legend:
                raise ArchError(f"pattern character {ch!r} (position {i + 1}) is not in the legend",
                                positional[0].value.span, hint=f"add `{ch} = block_name` to the call", kind="semantic")
            names.append(legend[ch])
        return LayerList(tuple(names))


def _describe(v: Any) -> str:
    if isinstance(v, Symbol):
        return f"the name `{v}`"
    if isinstance(v, LayerList):
        return "a layer stack"
    if isinstance(v, S.Call):
        return f"a call `{v.func}(...)`"
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, list):
        return "a list"
    return repr(v)


# ----------------------------------------------------------------------------- building the AST


class _Builder:
    """Turns evaluated values into pydantic input, recording the span of every value."""

    def __init__(self, ev: _Evaluator):
        self.ev = ev
        self.data: dict[str, Any] = {}  # the pydantic input being built
        self.spans: dict[tuple, Span] = {}
        self.name_spans: dict[tuple, Span] = {}

    def value(self, expr: S.Expr, path: tuple, field_name: str) -> Any:
        self.spans[path] = expr.span
        v = self.ev.eval(expr)
        if isinstance(v, S.Call):
            return self.call(v, path, field_name)
        if isinstance(v, LayerList):
            return list(v.names)
        if isinstance(v, list):
            return [self._plain(x, expr) for x in v]
        return v

    def _plain(self, v: Any, expr: S.Expr) -> Any:
        if isinstance(v, (S.Call, LayerList, list)):
            raise ArchError(f"lists hold plain values here, found {_describe(v)}", expr.span, kind="semantic")
        return v

    def call(self, call: S.Call, path: tuple, field_name: str) -> dict:
        slot = A.FIELD_SLOT.get(field_name)
        self.spans[path] = call.span
        if slot is None:
            raise ArchError(f"`{field_name}` takes a plain value, not a call `{call.func}(...)`", call.span, kind="semantic")
        kinds = A.SLOT_KINDS[slot]
        if call.func not in kinds:
            raise ArchError(
                f"unknown {slot} kind `{call.func}`", call.span,
                hint=did_you_mean(call.func, kinds) or f"expected one of: {', '.join(kinds)}", kind="semantic",
            )
        data: dict[str, Any] = {"kind": call.func}
        for arg in call.args:
            if arg.name is None:
                raise ArchError(f"arguments of `{call.func}` are named", arg.span,
                                hint=f"write `{call.func}(name = value, ...)`", kind="semantic")
            if arg.name in data:
                raise ArchError(f"argument `{arg.name}` is given twice", arg.span, kind="semantic")
            self.name_spans[path + (arg.name,)] = arg.span
            data[arg.name] = self.value(arg.value, path + (arg.name,), arg.name)
        return data

    def fields(self, assigns: dict[str, S.Assign], path: tuple, known: tuple[str, ...], where: str) -> dict:
        data: dict[str, Any] = {}
        for key, assign in assigns.items():
            if key not in known:
                raise ArchError(f"unknown field `{key}` in {where}", assign.span,
                                hint=did_you_mean(key, known) or f"known fields: {', '.join(known)}",
                                kind="semantic")
            self.name_spans[path + (key,)] = assign.span
            data[key] = self.value(assign.value, path + (key,), key)
        return data


def _fill_defaults(data: dict, d_model: Any, b: _Builder) -> None:
    """Defaults that depend on the model: attention head_dim, Mamba dt_rank."""
    if not isinstance(d_model, int):
        return
    for block_name, block in data.get("blocks", {}).items():
        for slot in ("attention", "cross_attention"):
            att = block.get(slot)
            if isinstance(att, dict) and att.get("kind") != "mla" and "head_dim" not in att:
                heads = att.get("heads")
                if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0:
                    hd = A.default_head_dim(d_model, heads)
                    if hd is None:
                        path = ("blocks", block_name, slot, "heads")
                        raise ArchError(
                            f"d_model ({d_model}) must be divisible by heads ({heads}) to derive head_dim",
                            b.spans.get(path), hint="set head_dim explicitly, or pick heads dividing d_model",
                            kind="semantic",
                        )
                    att["head_dim"] = hd
        ssm = block.get("ssm")
        if isinstance(ssm, dict) and "dt_rank" not in ssm:
            ssm["dt_rank"] = A.default_dt_rank(d_model)


def _error_from_pydantic(err: dict, b: _Builder, file: str, model_span: Span) -> ArchError:
    loc = tuple(err["loc"])
    exc = (err.get("ctx") or {}).get("error")
    if isinstance(exc, A.FieldError):
        loc = loc + (exc.field if isinstance(exc.field, tuple) else (exc.field,))  # a path from model-level checks
    # Drop discriminator tags from the location: `attention.gqa.kv_heads` → `attention.kv_heads`.
    path: tuple = ()
    for part in loc:
        if path + (part,) in b.spans or path + (part,) in b.name_spans or any(
            k[: len(path) + 1] == path + (part,) for k in b.spans
        ):
            path = path + (part,)
    where = ".".join(str(p) for p in path)
    typ = err["type"]
    span = b.spans.get(path)
    probe = path
    while span is None and probe:
        probe = probe[:-1]
        span = b.spans.get(probe) or b.name_spans.get(probe)
    span = span or model_span
    hint = None
    if isinstance(exc, A.FieldError):
        return ArchError(exc.message, span, hint=exc.hint, kind="semantic")
    field_name = str(loc[-1]) if loc else "model"
    if typ == "extra_forbidden":
        owner = path[:-1] if path and path[-1] == loc[-1] else path
        span = b.name_spans.get(owner + (loc[-1],), span)
        kind = _kind_at(b, owner)
        allowed = _allowed_fields(kind) if kind else []
        return ArchError(f"unknown argument `{loc[-1]}`" + (f" for {kind}" if kind else ""), span,
                         hint=did_you_mean(str(loc[-1]), allowed) or (f"{kind} takes: {', '.join(allowed)}" if allowed else None),
                         kind="semantic")
    if typ == "missing":
        owner = path
        kind = _kind_at(b, owner)
        what = f"`{kind}(...)`" if kind else (where or "the model")
        return ArchError(f"missing required {'argument' if kind else 'field'} `{field_name}` in {what}", span,
                         kind="semantic")
    value = err.get("input")
    if isinstance(value, Symbol) and typ not in ("literal_error",):
        return ArchError(f"unknown name `{value}`", span, hint=did_you_mean(value, b.ev.names()), kind="semantic")
    msg = err["msg"]
    if isinstance(exc, ValueError):
        msg = str(exc)
    elif typ == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        options = [o.strip(" '") for o in expected.replace(" or ", ",").split(",") if o.strip(" '")]
        msg = f"`{field_name}` must be one of: {', '.join(options)}; found {_describe(value)}"
        if isinstance(value, str):
            hint = did_you_mean(value, options)
    else:
        msg = msg.replace("Input should be", "must be").replace("Value error, ", "")
        msg = f"`{field_name}` {msg}"
        if value is not None and not isinstance(value, (dict, list)):
            msg += f", found {_describe(value)}"
    return ArchError(msg, span, hint=hint, kind="semantic")


def _drop_knock_on(errors: list[tuple[tuple, str, ArchError]]) -> list[ArchError]:
    """A `missing` error next to another error in the same call is usually its consequence
    (a misspelled argument, or a default that could not be derived): report only the cause."""
    owners_with_cause = {loc[:-1] for loc, typ, _ in errors if typ != "missing"}
    out = [e for loc, typ, e in errors if not (typ == "missing" and len(loc) > 1 and any(
        owner[: len(loc) - 1] == loc[:-1] for owner in owners_with_cause))]  # model fields: always reported
    return list({(e.message, str(e.span)): e for e in out}.values())


def _strip_tags(loc) -> tuple:
    kinds = {k for ks in A.SLOT_KINDS.values() for k in ks}
    return tuple(p for p in loc if p not in kinds)


def _kind_at(b: _Builder, path: tuple) -> str | None:
    node: Any = b.data
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node.get("kind") if isinstance(node, dict) else None


def _allowed_fields(kind: str) -> list[str]:
    for cls in (A.Norm, A.LinearScaling, A.NTKScaling, A.YarnScaling, A.Llama3Scaling, A.Rope, A.Sinusoidal,
                A.Learned, A.Alibi, A.Relative, A.MHA, A.MQA, A.GQA, A.MLA, A.Differential, A.LinearAttention,
                A.MLP, A.GLU, A.MoE, A.Mamba):
        if kind in cls.model_fields["kind"].annotation.__args__:
            return [f for f in cls.model_fields if f != "kind"]
    return []


def build_model(program: Program, name: str) -> A.Model:
    """Resolve one model of a loaded program into a validated AST. Raises ArchError(s)."""
    merged = _merge(program, name)
    ev = _Evaluator(merged)
    b = _Builder(ev)
    decl = merged.decl
    data = b.data
    data["name"] = name
    model_fields = tuple(f for f in A.MODEL_FIELDS)
    data.update(b.fields(merged.assigns, (), model_fields, f"model `{name}`"))
    blocks: dict[str, Any] = {}
    data["blocks"] = blocks
    for block_name, assigns in merged.blocks.items():
        b.spans[("blocks", block_name)] = merged.block_spans[block_name]
        b.spans[("blocks", block_name, "name")] = merged.block_spans[block_name]
        blocks[block_name] = {"name": block_name, **b.fields(assigns, ("blocks", block_name), A.BLOCK_FIELDS,
                                                             f"block `{block_name}`")}
    for stack in ("layers", "encoder_layers", "decoder_layers"):
        if stack in data and not isinstance(data[stack], list):
            value = data[stack]
            raise ArchError(f"`{stack}` must be a stack of blocks such as `layer * 12`, found {_describe(value)}",
                            b.spans.get((stack,)), hint=did_you_mean(str(value), merged.blocks) if isinstance(value, str) else None,
                            kind="semantic")
    _fill_defaults(data, data.get("d_model"), b)
    b.spans.setdefault(("name",), decl.span)
    try:
        model = A.Model.model_validate(data)
    except ValidationError as exc:
        errors = [(_strip_tags(err["loc"]), err["type"], _error_from_pydantic(err, b, program.entry, decl.span))
                  for err in exc.errors()]
        unique = _drop_knock_on(errors)
        raise (unique[0] if len(unique) == 1 else ArchErrors(unique)) from None
    model._spans = {**b.name_spans, **b.spans}
    return model


def load_models(
    path: str | os.PathLike | None = None,
    *,
    source: str | None = None,
    name: str = "<string>",
    root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    sources: SourceMap | None = None,
) -> list[A.Model]:
    """Every model declared in the entry file, validated. Collects errors across models.

    Pass a `SourceMap` to keep the text of every file read, for rendering errors."""
    program = load_program(path, source=source, name=name, root=root, allow_outside_root=allow_outside_root,
                           sources=sources)
    models, errors = [], []
    for model_name in program.entry_models:
        try:
            models.append(build_model(program, model_name))
        except ArchErrors as exc:
            errors.extend(exc.errors)
        except ArchError as exc:
            errors.append(exc)
    if errors:
        raise ArchErrors(errors)
    return models
