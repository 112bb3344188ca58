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
        """The full multi-line message with the offending source line and a caret.

        The line is cut to an excerpt around the column and its control characters are shown
        escaped, so a hostile spec cannot flood a log or move the terminal's cursor."""
        head = f"{self.span}: error: {self.message}" if self.span else f"error: {self.message}"
        lines = [visible(head)]
        text = sources.line(self.span) if (sources and self.span) else None
        if text is not None and self.span is not None:
            width = 1
            if self.span.end_line == self.span.line and self.span.end_column:
                width = max(1, self.span.end_column - self.span.column)
            shown, caret, caret_width = excerpt(text, self.span.column, width)
            lines.append(f"    {shown}")
            lines.append("    " + " " * caret + "^" + "~" * (caret_width - 1))
        for note in self.notes:
            lines.append(visible(f"note: {note}"))
        if self.hint:
            lines.append(visible(f"hint: {self.hint}"))
        return "\n".join(lines)


EXCERPT_CHARS = 200  # of a quoted source line, around the column an error points at

# Characters that would act on a terminal rather than show: C0 and C1 controls, DEL, and the
# bidirectional overrides and isolates that reorder what is displayed (CVE-2021-42574).
_INVISIBLE = {*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
              *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF}


def _visible_char(ch: str) -> str:
    code = ord(ch)
    if code == 0x09:
        return " "  # a tab is one column, as in the parser's column count
    if code in _INVISIBLE:
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def visible(text: str) -> str:
    """`text` with every control character escaped (newlines kept: messages may span lines)."""
    return "\n".join("".join(_visible_char(ch) for ch in line) for line in text.split("\n"))


def excerpt(line: str, column: int, width: int = 1) -> tuple[str, int, int]:
    """A displayable excerpt of a source line around `column` (1-based): the text, the caret's
    offset in it, and the caret's width, with `…` where the line was cut."""
    start = max(0, min(column - 1 - EXCERPT_CHARS // 2, len(line) - EXCERPT_CHARS))
    end = min(len(line), start + EXCERPT_CHARS)
    shown = "…" if start > 0 else ""
    caret = caret_end = None
    for i in range(start, end):
        if i == column - 1:
            caret = len(shown)
        if i == column - 1 + width:
            caret_end = len(shown)
        shown += _visible_char(line[i])
    if caret is None:  # the column is past the end of the line (e.g. end of file)
        caret = len(shown)
    if caret_end is None:
        caret_end = len(shown)
    if end < len(line):
        shown += "…"
    return shown, caret, max(1, caret_end - caret)


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
        # Lines as the parser counts them: only "\n" ends one (not \x0c, \x1c, \u2028, ...).
        self._texts[file] = [line.removesuffix("\r") for line in text.split("\n")]

    def line(self, span: Span) -> str | None:
        lines = self._texts.get(span.file)
        if lines is None or not (1 <= span.line <= len(lines)):
            return None
        return lines[span.line - 1]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean `x`?' hint for a misspelled name, or None when nothing is close."""
    matches = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean `{matches[0]}`?" if matches else None
