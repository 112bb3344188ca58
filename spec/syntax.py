"""Syntax nodes: the parse tree of a .arch file as plain immutable data, every node with its span.

These are unevaluated: `head_dim = d_model / heads` is a `BinOp`. `resolve.py` evaluates them
into the pydantic AST after `extends` and `import` are applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .errors import Span


@dataclass(frozen=True)
class Num:
    value: int | float
    text: str
    span: Span


@dataclass(frozen=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class NoneLit:
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class Arg:
    name: str | None  # None for a positional argument
    value: "Expr"
    span: Span


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / // % ** and `|`, a pipeline stage mark between layer stacks
    left: "Expr"
    right: "Expr"
    span: Span
    op_span: Span | None = None  # of the operator itself, where a stage mark's errors point


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    span: Span


Expr = Union[Num, Str, Bool, NoneLit, Name, Call, ListExpr, BinOp, Neg]


@dataclass(frozen=True)
class Assign:
    path: tuple[str, ...]  # `attention.window = 4096` has path ("attention", "window")
    value: Expr
    span: Span  # of the path, where "unknown field" errors point


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class BlockDecl:
    name: str
    parent: str | None
    assigns: tuple[Assign, ...]
    span: Span
    parent_span: Span | None = None
    end_line: int | None = None  # of the closing `}`
    end_column: int | None = None  # just after the closing `}`


@dataclass(frozen=True)
class ModelDecl:
    name: str
    parent: str | None
    lets: tuple[Let, ...]
    assigns: tuple[Assign, ...]
    blocks: tuple[BlockDecl, ...]
    span: Span
    parent_span: Span | None = None
    end_line: int | None = None  # of the closing `}`
    end_column: int | None = None  # just after the closing `}`


@dataclass(frozen=True)
class Import:
    path: str
    span: Span


@dataclass(frozen=True)
class SourceFile:
    path: str
    imports: tuple[Import, ...]
    models: tuple[ModelDecl, ...]
