"""Errors are values: every problem archlang reports is an `ArchError` with a source span.

Library code raises; the CLI renders. `render()` gives the familiar compiler shape:

    examples/bad.arch:7:21: error: heads (32) must be divisible by kv_heads (6)
        attention = gqa(heads = 32, kv_heads = 6)
                                               ^
    hint: pick kv_heads from the divisors of 32: 1, 2, 4, 8, 16, 32
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based line and column, end exclusive."""

    file: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass
class ArchError(Exception):
    """A located, human-readable problem with a spec (or with the user's request)."""

    message: str
    span: Span | None = None
    hint: str | None = None
    notes: list[str] = field(default_factory=list)
    kind: str = "error"  # short machine-readable category, e.g. "syntax", "semantic", "import"

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        where = f"{self.span}: " if self.span else ""
        return f"{where}{self.message}"

    def render(self, sources: "SourceMap | None" = None) -> str:
        """The full multi-line message with the offending source line and a caret."""
        head = f"{self.span}: error: {self.message}" if self.span else f"error: {self.message}"
        lines = [head]
        text = sources.line(self.span) if (sources and self.span) else None
        if text is not None and self.span is not None:
            shown = text.expandtabs(1).rstrip("\n")
            lines.append(f"    {shown}")
            width = 1
            if self.span.end_line == self.span.line and self.span.end_column:
                width = max(1, self.span.end_column - self.span.column)
            lines.append("    " + " " * (self.span.column - 1) + "^" + "~" * (width - 1))
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class ArchErrors(Exception):
    """Several independent errors found in one run (validation collects them all)."""

    def __init__(self, errors: Sequence[ArchError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def render(self, sources: "SourceMap | None" = None) -> str:
        return "\n".join(e.render(sources) for e in self.errors)


def all_errors(exc: ArchError | ArchErrors) -> list[ArchError]:
    return exc.errors if isinstance(exc, ArchErrors) else [exc]


class SourceMap:
    """The text of every file read in a run, so errors can quote the line they point at."""

    def __init__(self) -> None:
        self._texts: dict[str, list[str]] = {}

    def add(self, file: str, text: str) -> None:
        self._texts[file] = text.splitlines()

    def line(self, span: Span) -> str | None:
        lines = self._texts.get(span.file)
        if lines is None or not (1 <= span.line <= len(lines)):
            return None
        return lines[span.line - 1]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean `x`?' hint for a misspelled name, or None when nothing is close."""
    matches = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean `{matches[0]}`?" if matches else None
