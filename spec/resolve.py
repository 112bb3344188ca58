"""Syntax → AST: follow `import`s, apply `extends`, evaluate constants, validate with pydantic.

Every value handed to pydantic is recorded with the span it came from, so a validation error
on `blocks.layer.attention.kv_heads` points at the `6` the user wrote, not at the model.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import ast as A
from . import syntax as S
from . import value_types as VT
from .errors import ArchError, ArchErrors, SourceMap, Span, all_errors, did_you_mean
from .names import class_name
from .parser import parse_recovering, strip_bom

MAX_IMPORT_DEPTH = 16  # a chain of 16 imports is allowed, a 17th is refused
MAX_EXTENDS_DEPTH = 32
MAX_INT_BITS = 128  # larger integers are certainly mistakes; refuse before arithmetic explodes
MAX_EVAL_DEPTH = 200  # expressions evaluated inside one another, through `let` references
MAX_LETS = 1024  # `let` constants in one model, after `extends`
MAX_BLOCKS = 1024  # block declarations in one model, after `extends`
MAX_FILE_BYTES = 1_000_000  # one spec file
MAX_TOTAL_BYTES = 8_000_000  # every file read for one entry, imports included
# Pseudo-filesystems: their "regular files" are views of the machine, never specs.
_SPECIAL_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


class _KnockOn(ArchError):
    """An error caused by another one already reported: it marks the value bad, silently."""


class Symbol(str):
    """A bare word that names no constant or block: `decoder`, `pre`, `silu`, `bf16`."""


@dataclass(frozen=True)
class LayerList:
    """The value of a layer-stack expression: block names, one per layer, and its pipeline stage
    marks: the index of the first layer of every stage after the first, with where each `|` is."""

    names: tuple[str, ...]
    marks: tuple[int, ...] = ()
    mark_spans: tuple[Span, ...] = ()

    def __add__(self, other: "LayerList") -> "LayerList":
        shift = len(self.names)
        return LayerList(self.names + other.names, self.marks + tuple(m + shift for m in other.marks),
                         self.mark_spans + other.mark_spans)


# ----------------------------------------------------------------------------- loading


@dataclass
class Program:
    """Every model declaration reachable from an entry file, by name."""

    entry: str
    models: dict[str, S.ModelDecl] = field(default_factory=dict)
    entry_models: list[str] = field(default_factory=list)
    sources: SourceMap = field(default_factory=SourceMap)
    # Syntax errors recovered from, and the line ranges they damaged, by file.
    syntax_errors: list[ArchError] = field(default_factory=list)
    damaged: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    bytes_read: int = 0


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

    Files may not leave `root` unless `allow_outside_root` is set, so a spec from a stranger
    cannot read arbitrary files. `root` defaults to the real folder holding the entry path as
    written; the entry itself (symlinks followed) must lie inside it too. Imports resolve
    relative to the importing file. Only regular files are read, within byte limits.
    """
    program = Program(entry=str(path) if source is None else name,
                      sources=sources if sources is not None else SourceMap())
    from_file = source is None
    if from_file:
        if path is None:
            raise ValueError("give a path or a source string")
        display = str(path)
        entry = Path(path)
        try:
            base = entry.absolute().parent.resolve()
            entry_path = entry.resolve()
        except (OSError, ValueError, RuntimeError) as exc:
            raise ArchError(f"cannot read {display!r}: {exc}", None, kind="import") from None
        root_dir = Path(root).resolve() if root else base
        if not allow_outside_root and not _is_within(entry_path, root_dir):
            raise ArchError(f"{display} is a link to a file outside the project folder {str(root_dir)!r}", None,
                            hint="pass --allow-outside-root to read it anyway", kind="import")
        source = _read(entry_path, display, None, program)
    else:
        display = name
        entry_path = None
        base = Path(root or os.getcwd()).resolve()
        root_dir = Path(root).resolve() if root else base
    files_seen: dict[Path, str] = {}

    def visit(text: str, file_display: str, file_path: Path | None, stack: tuple[Path, ...], is_entry: bool):
        text = strip_bom(text)
        program.sources.add(file_display, text)
        parsed, errors, damaged = parse_recovering(text, file_display)
        program.syntax_errors.extend(errors)
        program.damaged.setdefault(file_display, []).extend(damaged)
        if parsed is None:
            return
        here = file_path.parent if file_path else base
        for imp in parsed.imports:
            try:
                target = (here / imp.path).resolve()
            except (OSError, ValueError, RuntimeError) as exc:
                raise ArchError(f"cannot import {imp.path!r}: {exc}", imp.span, kind="import") from None
            if not allow_outside_root and not _is_within(target, root_dir):
                raise ArchError(
                    f"import of {imp.path!r} leaves the project folder {str(root_dir)!r}",
                    imp.span, hint="keep imported specs inside the project, or pass --allow-outside-root",
                    kind="import",
                )
            if target in stack:
                chain = " → ".join(p.name for p in (*stack, target))
                raise ArchError(f"import cycle: {chain}", imp.span, kind="import")
            if len(stack) > MAX_IMPORT_DEPTH:
                raise ArchError(f"imports are nested more than {MAX_IMPORT_DEPTH} deep", imp.span, kind="limit")
            if target in files_seen:
                continue
            shown = os.path.relpath(target) if not Path(imp.path).is_absolute() else str(target)
            files_seen[target] = shown
            visit(_read(target, shown, imp.span, program), shown, target, (*stack, target), False)
        for decl in parsed.models:
            if decl.name in program.models:
                first = program.models[decl.name]
                raise ArchError(f"model `{decl.name}` is defined twice", decl.span,
                                notes=[f"first defined at {first.span}"], kind="semantic")
            program.models[decl.name] = decl
            if is_entry:
                program.entry_models.append(decl.name)

    if entry_path is not None:
        files_seen[entry_path] = display
    visit(source, display, entry_path, (entry_path,) if entry_path else (), True)
    if not program.entry_models:
        if program.syntax_errors:
            errors = program.syntax_errors
            raise errors[0] if len(errors) == 1 else ArchErrors(errors)
        raise ArchError("no model in this file", Span(display, 1, 1), hint="declare one: `model name { ... }`", kind="semantic")
    return program


def read_spec(path: str | os.PathLike, display: str | None = None) -> str:
    """The text of one spec file, on its own (as `archc fmt` reads it): the same rules as every
    file a spec run reads."""
    return _read(Path(path), display or str(path), None, Program(entry=display or str(path)))


def _read(path: Path, display: str, span: Span | None, program: Program) -> str:
    """The text of one spec file: a regular file only (never a FIFO, device or socket, never
    under /proc, /sys or /dev), within the per-file and per-run byte limits."""
    if any(_is_within(path, special) for special in _SPECIAL_ROOTS):
        raise ArchError(f"{display} is a special system file, not a spec", span, kind="import")
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not hang; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ArchError(f"file not found: {display}", span, kind="import") from None
    except IsADirectoryError:
        raise ArchError(f"{display} is a folder, not a spec file", span, kind="import") from None
    except OSError as exc:
        raise ArchError(f"cannot read {display}: {exc.strerror}", span, kind="import") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise ArchError(f"cannot read {display!r}: {exc}", span, kind="import") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ArchError(f"{display} is a folder, not a spec file", span, kind="import")
        if not stat.S_ISREG(info.st_mode):
            raise ArchError(f"{display} is not a regular file (a pipe, device or socket)", span, kind="import")
        budget = min(MAX_FILE_BYTES, MAX_TOTAL_BYTES - program.bytes_read)
        chunks, size = [], 0
        while size <= budget:
            chunk = os.read(fd, min(65536, budget + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ArchError(f"cannot read {display}: {exc.strerror}", span, kind="import") from None
    finally:
        os.close(fd)
    if size > budget:
        if budget < MAX_FILE_BYTES:
            raise ArchError(f"the specs read in this run exceed {MAX_TOTAL_BYTES:,} bytes", span, kind="limit")
        raise ArchError(f"{display} is too large to be a spec (more than {MAX_FILE_BYTES:,} bytes)", span, kind="limit")
    program.bytes_read += size
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1:].decode("utf-8", errors="replace")) + 1
        where = span or Span(display, line, column)
        raise ArchError(f"{display} is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column {column} "
                        "cannot start or continue a character)", where, hint="save the file as UTF-8",
                        kind="encoding") from None


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
    if len(decl.lets) > MAX_LETS or len(decl.blocks) > MAX_BLOCKS:
        what, count, limit = ("`let` constants", len(decl.lets), MAX_LETS) if len(decl.lets) > MAX_LETS else (
            "blocks", len(decl.blocks), MAX_BLOCKS)
        raise ArchError(f"model `{name}` declares {count:,} {what}; the limit is {limit:,}", decl.span, kind="limit")
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
    if len(merged.lets) > MAX_LETS:
        raise ArchError(f"model `{name}` has {len(merged.lets):,} `let` constants; the limit is {MAX_LETS:,}",
                        decl.span, kind="limit")
    for assign in decl.assigns:
        _apply(merged.assigns, assign, f"model `{name}`")

    pending = {b.name: b for b in decl.blocks}

    def merge_block(block: S.BlockDecl, stack: tuple[str, ...]) -> None:
        _check_unique((("/".join(a.path), a.span) for a in block.assigns), "field")
        if block.parent:
            if block.parent in stack:
                raise ArchError(f"block `{block.name}` extends itself", block.span, kind="semantic")
            if len(stack) > MAX_EXTENDS_DEPTH:
                raise ArchError(f"`extends` chain of blocks is longer than {MAX_EXTENDS_DEPTH}", block.span, kind="limit")
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
    if len(merged.blocks) > MAX_BLOCKS:
        raise ArchError(f"model `{name}` has {len(merged.blocks):,} blocks; the limit is {MAX_BLOCKS:,}",
                        decl.span, kind="limit")
    return merged


# ----------------------------------------------------------------------------- evaluation


class _Evaluator:
    """Evaluates expressions of one merged model, lazily and with cycle detection."""

    def __init__(self, merged: _Merged):
        self.m = merged
        self.values: dict[str, Any] = {}
        self.in_progress: list[str] = []
        self.depth = 0

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
        field_info = A.Model.model_fields.get(name) if name not in self.m.lets else None
        if field_info is not None and _value_kind(value) not in (VT.accepted(field_info.annotation) or {_value_kind(value)}):
            # `d_model = true`: reported once, at the field; its uses are knock-ons.
            raise _KnockOn(f"`{name}` has a value of the wrong type", ref.span)
        self.values[name] = value
        return value

    def eval(self, e: S.Expr) -> Any:
        # The parser bounds one expression's depth; `let` references can chain expressions, so
        # the evaluator bounds the total before Python's own recursion limit is near.
        if self.depth >= MAX_EVAL_DEPTH:
            raise ArchError(f"this expression is nested more than {MAX_EVAL_DEPTH} levels deep through `let` "
                            "references (the limit on evaluation depth)", e.span,
                            hint="shorten the chain of constants", kind="limit")
        self.depth += 1
        try:
            return self._eval(e)
        finally:
            self.depth -= 1

    def _eval(self, e: S.Expr) -> Any:
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
                return sum(items[1:], items[0])
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
        if e.op == "|":
            return self.stage_mark(e, left, right)
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
        except ZeroDivisionError:
            raise ArchError(f"`{e.op}` by zero: {_describe(left)} {e.op} {_describe(right)} has no value", e.span,
                            kind="semantic") from None
        if isinstance(out, int) and out.bit_length() > MAX_INT_BITS:
            raise ArchError("this number is too large", e.span, kind="limit")
        if isinstance(out, complex) or (isinstance(out, float) and not math.isfinite(out)):
            raise ArchError("this expression has no finite real value", e.span, kind="semantic")
        return out

    def stage_mark(self, e: S.BinOp, left: Any, right: Any) -> LayerList:
        """`a | b`: the layers of a then b, with a pipeline stage starting at b's first layer."""
        for side, expr in ((left, e.left), (right, e.right)):
            if isinstance(side, Symbol):
                raise ArchError(f"unknown name `{side}`", expr.span, hint=did_you_mean(side, self.names()),
                                kind="semantic")
            if not isinstance(side, LayerList):
                raise ArchError(f"a stage mark `|` separates the stages of a layer stack, found {_describe(side)} "
                                f"on its {'left' if expr is e.left else 'right'}", e.op_span or e.span,
                                hint="write it between stacks of blocks: `layers = dense * 2 | moe * 4`",
                                kind="semantic")
        for side, where in ((left, "before"), (right, "after")):
            if not side.names:
                raise ArchError(f"the stage {where} this mark has no layers", e.op_span or e.span,
                                hint="every pipeline stage needs at least one layer; remove this `|`", kind="semantic")
        mark = LayerList((), (0,), (e.op_span or e.span,))
        return left + mark + right

    def layer_op(self, e: S.BinOp, left: Any, right: Any) -> LayerList:
        if e.op == "+" and isinstance(left, LayerList) and isinstance(right, LayerList):
            joined = left + right
        elif e.op == "*":
            stack, count, count_expr = (left, right, e.right) if isinstance(left, LayerList) else (right, left, e.left)
            if isinstance(count, bool) or not isinstance(count, int) or isinstance(count, LayerList):
                raise ArchError(f"a layer stack repeats a whole number of times, found {_describe(count)}",
                                count_expr.span, kind="semantic")
            if count < 0:
                raise ArchError("a repeat count cannot be negative", count_expr.span, kind="semantic")
            if stack.marks and count != 1:
                raise ArchError("a stage mark inside a repeated group would repeat with it", stack.mark_spans[0],
                                hint="mark the stages outside the repeat: `(a + b) * 2 | (a + b) * 2`",
                                kind="semantic")
            if len(stack.names) * count > A.MAX_LAYERS:
                raise ArchError(
                    f"this stack has {len(stack.names) * count:,} layers; the limit is {A.MAX_LAYERS:,}",
                    e.span, kind="limit",
                )
            joined = LayerList(stack.names * count, stack.marks, stack.mark_spans)  # marks only when count is 1
        else:
            raise ArchError(f"layer stacks combine with `+` (concatenate), `* n` (repeat) and `|` (a pipeline stage "
                            f"mark), not `{e.op}`", e.span, kind="semantic")
        if len(joined.names) > A.MAX_LAYERS:
            raise ArchError(f"this stack has {len(joined.names):,} layers; the limit is {A.MAX_LAYERS:,}", e.span,
                            kind="limit")
        return joined

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


def _value_kind(v: Any) -> str:
    """The kind of an evaluated value, in value_types' terms."""
    if isinstance(v, bool):
        return VT.BOOL
    if isinstance(v, int):
        return VT.INTEGER
    if isinstance(v, float):
        return VT.NUMBER
    if isinstance(v, Symbol):
        return VT.WORD
    if isinstance(v, str):
        return VT.STRING
    if v is None:
        return VT.NONE
    if isinstance(v, S.Call):
        return VT.CALL
    if isinstance(v, LayerList):
        return "a layer stack"
    return VT.LIST


class _Builder:
    """Turns evaluated values into pydantic input, recording the span of every value.

    Every field is checked on its own, so one run reports the errors of every field; a field
    that fails is left out of the input and its path remembered, so the errors pydantic would
    give as a consequence (a missing field, a default that cannot be derived) are not reported."""

    def __init__(self, ev: _Evaluator):
        self.ev = ev
        self.data: dict[str, Any] = {}  # the pydantic input being built
        self.spans: dict[tuple, Span] = {}
        self.name_spans: dict[tuple, Span] = {}
        self.errors: list[ArchError] = []
        self.bad_paths: set[tuple] = set()
        self._span_prefixes: set[tuple] | None = None
        self.stage_marks: LayerList | None = None  # the `layers` value, when it has stage marks

    def span_prefixes(self) -> set[tuple]:
        """Every prefix of a path that has a span, built once: mapping thousands of errors to
        their values stays linear."""
        if self._span_prefixes is None:
            self._span_prefixes = {k[:i] for k in self.spans for i in range(1, len(k) + 1)}
        return self._span_prefixes

    def value(self, expr: S.Expr, path: tuple, field_name: str, annotation: Any = None) -> Any:
        self.spans[path] = expr.span
        if isinstance(expr, S.Name) and annotation is not None and self._is_word_of(expr.id, field_name, annotation):
            # An enumeration word means itself, even where a block or constant has the same name
            # (`placement = post` in a model with a block named `post`).
            return Symbol(expr.id)
        v = self.ev.eval(expr)
        self._check_type(v, expr, field_name, annotation)
        if isinstance(v, S.Call):
            return self.call(v, path, field_name)
        if isinstance(v, LayerList):
            if v.marks:
                self._stage_marks(v, path)
            return list(v.names)
        if isinstance(v, list):
            return [self._plain(x, expr) for x in v]
        return v

    def _stage_marks(self, v: LayerList, path: tuple) -> None:
        if path != ("layers",):
            where = f"`{path[0]}`" if len(path) == 1 else f"`{'.'.join(map(str, path))}`"
            raise ArchError(f"stage marks `|` cut a decoder's `layers` into pipeline stages; {where} takes none",
                            v.mark_spans[0], hint="remove the `|`", kind="semantic")
        self.stage_marks = v
        self.spans[("stage_marks",)] = v.mark_spans[0]
        for k, span in enumerate(v.mark_spans):
            self.spans[("stage_marks", k)] = span

    @staticmethod
    def _is_word_of(name: str, field_name: str, annotation: Any) -> bool:
        allowed = VT.words(annotation)
        if field_name == "dtype":
            allowed |= A.DTYPE_ALIASES.keys()
        return name in allowed

    def _check_type(self, v: Any, expr: S.Expr, field_name: str, annotation: Any) -> None:
        kinds = VT.accepted(annotation) if annotation is not None else None
        if kinds is None:
            return
        got = _value_kind(v)
        if got == VT.LIST and got in kinds:
            items = VT.element_kinds(annotation) or frozenset()
            spans = [x.span for x in expr.items] if isinstance(expr, S.ListExpr) else [expr.span] * len(v)
            for x, span in zip(v, spans):
                if not isinstance(x, (S.Call, LayerList, list)) and _value_kind(x) not in items:
                    raise ArchError(f"`{field_name}`: each item is expected to be {VT.describe_expected(items)}, "
                                    f"got {VT.describe_kind(_value_kind(x))}", span, kind="type")
            return
        if got in kinds:
            return
        if got == VT.WORD:  # a bare word that names no constant or block
            raise ArchError(f"unknown name `{v}`", expr.span, hint=did_you_mean(v, self.ev.names()), kind="semantic")
        hint = None
        if got == VT.STRING and VT.WORD in kinds:
            hint = f"an enumeration value is a bare word: write {v} without quotes"
        elif got == VT.STRING and kinds & {VT.INTEGER, VT.NUMBER}:
            hint = f"write the number without quotes: {v}"
        elif got == VT.CALL and VT.CALL not in kinds:
            raise ArchError(f"`{field_name}` takes {VT.describe_expected(kinds)}, not a call `{v.func}(...)`",
                            expr.span, kind="type")
        article = got if got.startswith("a ") else VT.describe_kind(got)
        raise ArchError(f"`{field_name}`: expected {VT.describe_expected(kinds)}, got {article}", expr.span,
                        hint=hint, kind="type")

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
        cls = A.SLOT_CLASSES[slot][call.func]
        data: dict[str, Any] = {"kind": call.func}
        for arg in call.args:
            if arg.name is None:
                self._record(ArchError(f"arguments of `{call.func}` are named", arg.span,
                                       hint=f"write `{call.func}(name = value, ...)`", kind="semantic"), path)
                continue
            if arg.name in data:
                self._record(ArchError(f"argument `{arg.name}` is given twice", arg.span, kind="semantic"),
                             path + (arg.name,))
                continue
            self.name_spans[path + (arg.name,)] = arg.span
            field_info = cls.model_fields.get(arg.name)
            annotation = field_info.annotation if field_info is not None and arg.name != "kind" else None
            try:
                data[arg.name] = self.value(arg.value, path + (arg.name,), arg.name, annotation)
            except ArchError as exc:
                self._record(exc, path + (arg.name,))
        return data

    def _record(self, exc: ArchError, path: tuple) -> None:
        if not isinstance(exc, _KnockOn):
            self.errors.append(exc)
        self.bad_paths.add(path)

    def fields(self, assigns: dict[str, S.Assign], path: tuple, owner: type, known: tuple[str, ...], where: str) -> dict:
        data: dict[str, Any] = {}
        for key, assign in assigns.items():
            if key not in known:
                self._record(ArchError(f"unknown field `{key}` in {where}", assign.span,
                                       hint=did_you_mean(key, known) or f"known fields: {', '.join(known)}",
                                       kind="semantic"), path + (key,))
                continue
            self.name_spans[path + (key,)] = assign.span
            field_info = owner.model_fields.get(key)
            try:
                data[key] = self.value(assign.value, path + (key,), key, field_info.annotation if field_info else None)
            except ArchError as exc:
                self._record(exc, path + (key,))
        return data


def _fill_defaults(data: dict, d_model: Any, b: _Builder) -> None:
    """Defaults that depend on the model: attention head_dim, Mamba dt_rank, Gated DeltaNet key_dim,
    mlstm key_dim and value_dim."""
    if not isinstance(d_model, int):
        return
    for block_name, block in data.get("blocks", {}).items():
        for slot in ("attention", "cross_attention"):
            att = block.get(slot)
            if isinstance(att, dict) and att.get("kind") != "mla" and "head_dim" not in att:
                heads = att.get("heads")
                if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0:
                    # a hybrid = zamba2() block's attention reads concat(x, embeddings): 2 * d_model wide
                    width = 2 * d_model if block.get("hybrid") is not None else d_model
                    hd = A.default_head_dim(width, heads)
                    if hd is None:
                        path = ("blocks", block_name, slot, "heads")
                        b.bad_paths.add(("blocks", block_name, slot, "head_dim"))
                        b.errors.append(ArchError(
                            f"d_model ({d_model}) must be divisible by heads ({heads}) to derive head_dim",
                            b.spans.get(path), hint="set head_dim explicitly, or pick heads dividing d_model",
                            kind="semantic",
                        ))
                        continue
                    att["head_dim"] = hd
        ssm = block.get("ssm")
        if isinstance(ssm, dict) and ssm.get("kind") == "mamba2":
            _fill_mamba2_heads(ssm, d_model, ("blocks", block_name, "ssm"), b)
        elif isinstance(ssm, dict) and ssm.get("kind") == "gated_deltanet":
            _fill_key_dim(ssm, d_model, ("blocks", block_name, "ssm"), b)
        elif isinstance(ssm, dict) and ssm.get("kind") in ("gla", "retention", "lightning"):
            _fill_key_dim(ssm, d_model, ("blocks", block_name, "ssm"), b, heads_field="heads")
        elif isinstance(ssm, dict) and ssm.get("kind") == "kda":
            _fill_key_dim(ssm, d_model, ("blocks", block_name, "ssm"), b, heads_field="heads", dim_field="head_dim")
        elif isinstance(ssm, dict) and ssm.get("kind") == "mamba" and "dt_rank" not in ssm:
            ssm["dt_rank"] = A.default_dt_rank(d_model)
        elif isinstance(ssm, dict) and ssm.get("kind") == "mlstm":
            _fill_mlstm_dims(ssm, d_model, ("blocks", block_name, "ssm"), b)
        elif isinstance(ssm, dict) and ssm.get("kind") == "slstm":
            heads = ssm.get("heads")
            if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 and d_model % heads:
                path = ("blocks", block_name, "ssm", "heads")
                b.bad_paths.add(path)
                b.errors.append(ArchError(f"d_model ({d_model}) must be divisible by heads ({heads}): each slstm "
                                          "head owns d_model / heads channels", b.spans.get(path),
                                          hint="pick heads dividing d_model", kind="semantic"))


def _fill_key_dim(ssm: dict, d_model: int, path: tuple, b: _Builder, heads_field: str = "key_heads",
                  dim_field: str = "key_dim") -> None:
    """The gated linear mixers' key_dim, when not written: d_model / key_heads (gla and retention:
    / heads), as attention's head_dim."""
    heads = ssm.get(heads_field)
    if dim_field in ssm or not isinstance(heads, int) or isinstance(heads, bool) or heads <= 0:
        return  # written, or the field's own check reports the bad value
    if d_model % heads:
        b.bad_paths.add(path + (dim_field,))
        b.errors.append(ArchError(f"d_model ({d_model}) must be divisible by {heads_field} ({heads}) to derive {dim_field}",
                                  b.spans.get(path + (heads_field,)) or b.spans.get(path),
                                  hint=f"set {dim_field} explicitly, or pick {heads_field} dividing d_model",
                                  kind="semantic"))
        return
    ssm[dim_field] = d_model // heads


def _fill_mlstm_dims(ssm: dict, d_model: int, path: tuple, b: _Builder) -> None:
    """mlstm's key_dim and value_dim, when not written: d_model / (2 · heads) and d_model / heads
    (xLSTM-7B's qk_dim_factor 0.5 and v_dim_factor 1)."""
    heads = ssm.get("heads")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads <= 0:
        return  # the field's own check reports the bad value
    for field, width in (("key_dim", d_model // 2 if d_model % 2 == 0 else None), ("value_dim", d_model)):
        if field in ssm:
            continue
        if width is None or width % heads:
            b.bad_paths.add(path + (field,))
            share = "d_model / 2" if field == "key_dim" else "d_model"
            b.errors.append(ArchError(f"{field} defaults to {share} / heads, and {share} (d_model = {d_model}) "
                                      f"does not split into {heads} heads", b.spans.get(path + ("heads",))
                                      or b.spans.get(path),
                                      hint=f"set {field} explicitly, or pick heads dividing {share}", kind="semantic"))
            continue
        ssm[field] = width // heads


def _fill_mamba2_heads(ssm: dict, d_model: int, path: tuple, b: _Builder) -> None:
    """Mamba-2's heads and head_dim, whose product is d_inner = expand · d_model: the one not
    written follows from the other (head_dim = 64 when neither is). Both written and no expand:
    they fix d_inner alone, and expand is none."""
    def number(key, default=None):
        v = ssm.get(key, default)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    if ssm.get("expand") is None and "heads" in ssm and "head_dim" in ssm:
        ssm["expand"] = None
        return  # the fields' own checks report a bad heads or head_dim
    if "expand" in ssm and ssm["expand"] is None:
        b.bad_paths.update({path + ("heads",), path + ("head_dim",)})
        b.errors.append(ArchError(
            "mamba2: expand = none leaves d_inner to heads × head_dim, and they are not both written",
            b.spans.get(path + ("expand",)) or b.spans.get(path),
            hint="write both heads and head_dim, or an integer expand", kind="semantic"))
        return

    expand, heads, head_dim = number("expand", 2), number("heads"), number("head_dim")
    if expand is None or ("heads" in ssm and heads is None) or ("head_dim" in ssm and head_dim is None):
        return  # the field's own check reports the bad value
    d_inner = expand * d_model
    if heads is None:
        head_dim = head_dim or A.MAMBA2_HEAD_DIM
        where, wrong = "head_dim" if "head_dim" in ssm else "expand", d_inner % head_dim
    elif head_dim is None:
        where, wrong = "heads", d_inner % heads
    else:
        where, wrong = "heads", heads * head_dim != d_inner
    if wrong:
        written = f"heads ({heads}) × head_dim ({head_dim}) is not" if heads and "head_dim" in ssm else \
            f"{'heads' if heads else 'head_dim'} ({heads or head_dim}) does not divide"
        b.bad_paths.update({path + ("heads",), path + ("head_dim",)})
        b.errors.append(ArchError(
            f"mamba2: {written} d_inner = expand ({expand}) × d_model ({d_model}) = {d_inner}",
            b.spans.get(path + (where,)) or b.spans.get(path),
            hint="heads × head_dim must equal expand × d_model: write one of them (or neither: head_dim = 64)",
            kind="semantic"))
        return
    ssm.setdefault("heads", d_inner // head_dim if heads is None else heads)
    ssm.setdefault("head_dim", d_inner // heads if head_dim is None else head_dim)


def _error_from_pydantic(err: dict, b: _Builder, file: str, model_span: Span) -> ArchError:
    loc = tuple(err["loc"])
    exc = (err.get("ctx") or {}).get("error")
    if isinstance(exc, A.FieldError):
        loc = loc + (exc.field if isinstance(exc.field, tuple) else (exc.field,))  # a path from model-level checks
    # Drop discriminator tags from the location: `attention.gqa.kv_heads` → `attention.kv_heads`.
    path: tuple = ()
    for part in loc:
        if path + (part,) in b.spans or path + (part,) in b.name_spans or path + (part,) in b.span_prefixes():
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
        allowed = _allowed_fields(A.FIELD_SLOT.get(str(owner[-1])) if owner else None, kind) if kind else []
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
    """Drop the discriminator tags pydantic puts after a slot's field (`attention.gqa.heads`); a
    field named as a kind (`mtp = mtp(...)`) is kept, as the tag is only what follows a slot."""
    out: list = []
    for p in loc:
        slot = A.FIELD_SLOT.get(str(out[-1])) if out else None
        if slot is not None and p in A.SLOT_KINDS[slot]:
            continue
        out.append(p)
    return tuple(out)


def _kind_at(b: _Builder, path: tuple) -> str | None:
    node: Any = b.data
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node.get("kind") if isinstance(node, dict) else None


def _allowed_fields(slot: str | None, kind: str) -> list[str]:
    """The arguments `kind` takes in `slot`: `linear` attention and `linear` scaling differ."""
    cls = A.SLOT_CLASSES.get(slot or "", {}).get(kind)
    return [f for f in cls.model_fields if f != "kind"] if cls else []


_DERIVED = ("head_dim", "dt_rank", "key_dim")  # filled from d_model by _fill_defaults


def _is_knock_on(loc: tuple, typ: str, is_field_error: bool, bad: set[tuple]) -> bool:
    """Whether a pydantic error is a consequence of a value already reported (and left out)."""
    owner = loc[:-1]
    if typ == "missing":
        if loc in bad:
            return True
        siblings = [p[-1] for p in bad if p[:-1] == owner and p]
        if loc and did_you_mean(str(loc[-1]), [str(x) for x in siblings]):  # `vocabb = 100` for `vocab`
            return True
        if loc[-1:] and loc[-1] in _DERIVED and (("d_model",) in bad or any(p[:len(owner)] == owner for p in bad)):
            return True
        return False
    if is_field_error or typ in ("value_error", "assertion_error"):  # cross-field checks saw an incomplete owner
        return any(p[: len(owner)] == owner for p in bad)
    return False


def _check_class_names(name: str, merged: _Merged) -> list[ArchError]:
    """Two spec names that become one Python class would make the generated module define the
    class twice, the second silently replacing the first."""
    errors = []
    seen: dict[str, tuple[str, Span | None]] = {class_name(name): (f"model `{name}`", merged.decl.span)}
    for block_name, span in merged.block_spans.items():
        try:
            cls = class_name(block_name, "Block")
        except ValueError:
            continue  # not an identifier: the AST reports it
        if cls in seen:
            first, first_span = seen[cls]
            errors.append(ArchError(
                f"block `{block_name}` and {first} would both become the class `{cls}` in generated code",
                span, notes=[f"{first} is declared at {first_span}"] if first_span else [],
                hint=f"rename block `{block_name}`", kind="semantic"))
        else:
            seen[cls] = (f"block `{block_name}`", span)
    return errors


def _check_relative_position(model: A.Model) -> list[ArchError]:
    """T5's relative bias is learned per attention head; a stack without attention has no heads."""
    if not isinstance(model.position, A.Relative):
        return []
    errors = []
    for stack, layers in model.stacks().items():
        if not any(model.blocks[n].attention is not None for n in layers):
            errors.append(ArchError(
                f"position = relative() needs an attention block in {'the ' + stack + ' stack' if stack != 'layers' else 'the layers'}",
                model.span_of("position"), hint="relative position bias is learned per attention head; "
                "use a block with attention, or drop `position`", kind="semantic"))
    return errors


def build_model(program: Program, name: str, *, syntax_errors_reported: bool = False) -> A.Model:
    """Resolve one model of a loaded program into a validated AST. Raises ArchError(s), every
    independent error of the model at once. A program recovered from syntax errors is refused
    unless the caller reports those itself (`syntax_errors_reported`), as load_models does."""
    if program.syntax_errors and not syntax_errors_reported:
        errors = program.syntax_errors
        raise errors[0] if len(errors) == 1 else ArchErrors(errors)
    merged = _merge(program, name)
    ev = _Evaluator(merged)
    b = _Builder(ev)
    decl = merged.decl
    data = b.data
    data["name"] = name
    data.update(b.fields(merged.assigns, (), A.Model, A.MODEL_FIELDS, f"model `{name}`"))
    if b.stage_marks is not None:
        family = data.get("family", "decoder")
        if family != "decoder" and isinstance(family, str):
            b.errors.append(ArchError(
                f"stage marks `|` cut a decoder's `layers` into pipeline stages; this model's family is {family}",
                b.stage_marks.mark_spans[0], hint="remove the `|` (pipeline parallelism splits decoders only)",
                kind="semantic"))
        else:
            data["stage_marks"] = list(b.stage_marks.marks)
    blocks: dict[str, Any] = {}
    data["blocks"] = blocks
    for block_name, assigns in merged.blocks.items():
        b.spans[("blocks", block_name)] = merged.block_spans[block_name]
        b.spans[("blocks", block_name, "name")] = merged.block_spans[block_name]
        blocks[block_name] = {"name": block_name, **b.fields(assigns, ("blocks", block_name), A.Block, A.BLOCK_FIELDS,
                                                             f"block `{block_name}`")}
    for stack in ("layers", "encoder_layers", "decoder_layers", "entropy_layers", "global_layers"):
        if stack in data and not isinstance(data[stack], list):
            value = data.pop(stack)
            b.errors.append(ArchError(
                f"`{stack}` must be a stack of blocks such as `layer * 12`, found {_describe(value)}",
                b.spans.get((stack,)), hint=did_you_mean(str(value), merged.blocks) if isinstance(value, str) else None,
                kind="semantic"))
            b.bad_paths.add((stack,))
    b.errors.extend(_check_class_names(name, merged))
    _fill_defaults(data, data.get("d_model"), b)
    b.spans.setdefault(("name",), decl.span)
    errors = list(b.errors)
    model = None
    try:
        model = A.Model.model_validate(data)
    except ValidationError as exc:
        found = []
        for err in exc.errors():
            loc = _strip_tags(err["loc"])
            field_error = (err.get("ctx") or {}).get("error")
            is_field_error = isinstance(field_error, A.FieldError)
            if is_field_error:
                loc = loc + (field_error.field,)
            if _is_knock_on(loc, err["type"], is_field_error, b.bad_paths):
                continue
            found.append((loc, err["type"], _error_from_pydantic(err, b, program.entry, decl.span)))
        errors.extend(_drop_knock_on(found))
    if model is not None:
        model._spans = {**b.name_spans, **b.spans}
        errors.extend(_check_relative_position(model))
    if errors:
        raise errors[0] if len(errors) == 1 else ArchErrors(errors)
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
    models, errors = [], list(program.syntax_errors)
    for model_name in program.entry_models:
        try:
            models.append(build_model(program, model_name, syntax_errors_reported=True))
        except (ArchError, ArchErrors) as exc:
            errors.extend(e for e in all_errors(exc) if not _is_damaged(program, model_name, e))
    if errors:
        raise errors[0] if len(errors) == 1 else ArchErrors(errors)
    return models


def _is_damaged(program: Program, model_name: str, error: ArchError) -> bool:
    """Whether a semantic error may be a knock-on of a syntax error recovered from: it lies in a
    declaration the recovery blanked part of, or reports a missing field of a damaged model."""
    if not program.syntax_errors:
        return False
    decl = program.models[model_name]
    ranges = program.damaged.get(decl.span.file, [])
    model_lines = (decl.span.line, decl.end_line or decl.span.line)
    if error.message.startswith("missing required") and any(
            model_lines[0] <= start <= model_lines[1] for start, _ in ranges):
        return True
    if error.span is None or error.span.file != decl.span.file:
        return False
    return any(start <= error.span.line <= end for start, end in ranges)
