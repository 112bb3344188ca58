"""What kind of value each AST field takes, read from its pydantic annotation.

The resolver checks every value against this before pydantic sees it, because pydantic's lax
mode would coerce `true` to 1 and `"8"` to 8. A bool is not an integer, a string is not a
number, and an enumeration value is a bare word (`bf16`), not a string (`"bf16"`).
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

# Kinds of value, as the resolver sees them.
INTEGER, NUMBER, BOOL, WORD, STRING, NONE, CALL, LIST = "integer", "number", "bool", "word", "string", "none", "call", "list"

LAYERS = "a layer stack"  # what a block's name evaluates to (the resolver's kind of a LayerList)


class BlockName(str):
    """The type of a field that names one of the model's blocks (mtp's `block`). Written as a
    bare name (`block = moe`), it evaluates to a one-layer stack, which this type unwraps."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        from pydantic_core import core_schema

        def one_block(v):
            if isinstance(v, (list, tuple)):
                if len(v) != 1:
                    raise ValueError(f"this names one block, found a stack of {len(v)} layers")
                return v[0]
            return v

        return core_schema.no_info_before_validator_function(one_block, core_schema.str_schema())


_ARTICLE = {
    INTEGER: "an integer", NUMBER: "a number", BOOL: "true or false", WORD: "a word", STRING: "a string",
    NONE: "none", CALL: "a call", LIST: "a list", LAYERS: "a block name",
}


def accepted(annotation: Any) -> frozenset[str] | None:
    """The kinds of value a field with this annotation accepts; None when it is not checked here."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return accepted(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        out: set[str] = set()
        for arg in get_args(annotation):
            kinds = accepted(arg)
            if kinds is None:
                return None
            out |= kinds
        return frozenset(out)
    if origin is Literal:
        return frozenset({WORD})
    if annotation is type(None):
        return frozenset({NONE})
    if annotation is BlockName:
        return frozenset({LAYERS})
    if annotation is bool:
        return frozenset({BOOL})
    if annotation is int:
        return frozenset({INTEGER})
    if annotation is float:  # an integer is a fine value for a float field
        return frozenset({INTEGER, NUMBER})
    if annotation is str:
        return frozenset({STRING})
    if origin in (tuple, list) and {INTEGER, NUMBER, WORD} & (element_kinds(annotation) or set()):
        # a list of integers (byte_latent's ngrams), numbers (longrope's factors) or words (lora's targets)
        return frozenset({LIST})
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return frozenset({CALL})
    return None


def element_kinds(annotation: Any) -> frozenset[str] | None:
    """The kinds of value each item of a list field takes (`[3, 4, 5]` for a tuple of ints); None
    when the field is not a list. Each item is checked: pydantic would read `[3, true]` as (3, 1)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return element_kinds(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return next((k for k in map(element_kinds, get_args(annotation)) if k is not None), None)
    if origin in (tuple, list):  # tuple[X, ...], list[X], or a fixed tuple (dt_limit's [lo, hi]): any of its kinds
        kinds = [accepted(arg) for arg in get_args(annotation) if arg is not Ellipsis]
        return None if None in kinds else frozenset().union(*kinds)
    return None


def words(annotation: Any) -> frozenset[str]:
    """The enumeration words a field accepts (`pre`, `post`, `sandwich` for a placement)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return words(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return frozenset().union(*(words(arg) for arg in get_args(annotation)))
    if origin is Literal:
        return frozenset(a for a in get_args(annotation) if isinstance(a, str))
    return frozenset()


def describe_expected(kinds: frozenset[str]) -> str:
    """`{"integer", "number", "none"}` → "a number or none"."""
    shown = [k for k in (NUMBER, INTEGER, BOOL, WORD, STRING, CALL, LIST, LAYERS, NONE) if k in kinds]
    if NUMBER in kinds:
        shown.remove(INTEGER)
    words = [_ARTICLE[k] for k in shown]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def describe_kind(kind: str) -> str:
    """The kind of a value given: "a string", "a boolean"."""
    return "a boolean" if kind == BOOL else _ARTICLE.get(kind, kind)
