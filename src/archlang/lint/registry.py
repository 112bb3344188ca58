"""The rule registry of `archc lint`: every rule's stable code, title, why and fix, in one table
that `--list-rules`, the SARIF driver and docs/lint.md are all generated from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

from archlang.spec.errors import Span

CODE = re.compile(r"ARC\d{3}")


@dataclass(frozen=True)
class Hit:
    """What a rule function yields: where in the AST (a path as `Model.span_of` takes it), what
    it found, and, where the fix depends on the values, the concrete fix."""

    path: tuple[str, ...]
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class Rule:
    code: str
    name: str  # kebab-case, for SARIF and readers who prefer words to numbers
    title: str
    why: str
    fix: str
    check: Callable[..., Iterator[Hit]] = field(compare=False, repr=False)
    # Builds the IR of every layer, whose cost grows with depth: `archc lint` runs it, `archc
    # check` (whose work grows only with the number of block kinds) does not.
    whole_ir: bool = False


@dataclass(frozen=True)
class Finding:
    """One located finding of one rule on one model."""

    code: str
    title: str
    message: str
    why: str
    fix: str
    model: str
    span: Span | None

    def to_json(self) -> dict:
        s = self.span
        return {"code": self.code, "title": self.title, "model": self.model, "message": self.message,
                "why": self.why, "fix": self.fix, "file": s.file if s else None, "line": s.line if s else None,
                "column": s.column if s else None, "end_line": s.end_line if s else None,
                "end_column": s.end_column if s else None}


RULES: dict[str, Rule] = {}


def rule(code: str, name: str, title: str, *, why: str, fix: str, whole_ir: bool = False):
    """Register a rule function under a stable code (never reused once published)."""
    assert CODE.fullmatch(code) and code not in RULES, code

    def register(check):
        RULES[code] = Rule(code, name, title, " ".join(why.split()), " ".join(fix.split()), check, whole_ir)
        return check

    return register
