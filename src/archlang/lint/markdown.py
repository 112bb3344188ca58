"""Markdown for pull requests: `archc diff --format markdown` writes a comment (what changed, the
facts side by side, the lint findings the change adds and removes), `archc check --format
markdown` a GitHub step summary. Everything from the user (file names, values, messages) is
escaped, so a spec cannot add links, images, HTML or table cells to the page."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from archlang.cli_text import bounded, literal

from .registry import Finding

MAX_CELL = 300  # characters of one table cell or list item
MAX_ITEMS = 50  # of one list; the rest are counted

_SPECIAL = re.compile(r"([\\`*_\[\]|~])")  # what is special inside a line (each line starts with our own markup)


def escape(text: object, limit: int = MAX_CELL) -> str:
    """One line of user text, shown as written: controls escaped, markdown and HTML inert."""
    text = bounded(literal(text), limit)
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    return _SPECIAL.sub(r"\\\1", text)


def _where(f: Finding) -> str:
    return escape(f"{f.span.file}:{f.span.line}:{f.span.column}") if f.span else ""


def finding_item(f: Finding) -> str:
    where = f" {_where(f)}" if f.span else ""
    return f"- **{f.code}**{where}: {escape(f.message)}. *Fix:* {escape(f.fix)}"


def _list(items: Sequence[str], what: str) -> list[str]:
    out = list(items[:MAX_ITEMS])
    if len(items) > MAX_ITEMS:
        out.append(f"- and {len(items) - MAX_ITEMS:,} more {what}")
    return out


def _key(f: Finding) -> tuple[str, str]:
    """A finding's identity across two versions of a spec: its rule and what it says (lines move)."""
    return f.code, f.message


def lint_delta(before: Iterable[Finding], after: Iterable[Finding]) -> tuple[list[Finding], list[Finding], int]:
    """(findings the change adds, findings it resolves, findings both have)."""
    before, after = list(before), list(after)
    old, new = {_key(f) for f in before}, {_key(f) for f in after}
    return ([f for f in after if _key(f) not in old], [f for f in before if _key(f) not in new],
            sum(1 for f in after if _key(f) in old))


def diff_comment(a: str, b: str, diff, findings_a: Sequence[Finding], findings_b: Sequence[Finding],
                 tripped: Sequence[str] = ()) -> str:
    """A pull-request comment on the change from spec `a` to spec `b`."""
    out = [f"### Architecture diff: {escape(a)} → {escape(b)}", ""]
    if not diff.changed:
        out.append("No architectural change.")
    else:
        n = len(diff.changes)
        out += [f"**{n} change{'s' if n != 1 else ''}**", "", "| where | what | before | after |", "|---|---|---|---|"]
        out += [f"| {escape(c.where)} | {escape(c.what)} | {escape(c.before)} | {escape(c.after)} |"
                for c in diff.changes[:MAX_ITEMS]]
        if n > MAX_ITEMS:
            out.append(f"| and {n - MAX_ITEMS:,} more | | | |")
    if diff.notes:
        out += ["", *_list([f"- note: {escape(note)}" for note in diff.notes], "notes")]
    if diff.changed:
        out += ["", "#### Facts", "", "| fact | before | after | delta | % |", "|---|--:|--:|--:|--:|"]
        for k, (x, y) in diff.facts.items():
            pct = "" if x == 0 else f"{100 * (y - x) / x:+.2f}%"
            out.append(f"| {escape(k)} | {x:,} | {y:,} | {y - x:+,} | {pct} |")
    if tripped:
        out += ["", "#### Guards tripped", "", *[f"- {escape(t)}" for t in tripped]]
    added, resolved, kept = lint_delta(findings_a, findings_b)
    out += ["", "#### Lint", ""]
    if not (added or resolved):
        out.append(f"No new findings ({kept} unchanged)." if kept else "No findings.")
    else:
        if added:
            out += [f"New findings ({len(added)}):", "", *_list([finding_item(f) for f in added], "findings"), ""]
        if resolved:
            out += [f"Resolved ({len(resolved)}):", "", *_list([finding_item(f) for f in resolved], "findings"), ""]
        if kept:
            out.append(f"{kept} finding{'s' if kept != 1 else ''} unchanged.")
    return "\n".join(out).rstrip("\n") + "\n"


def check_summary(summary: Sequence[dict], records: Sequence[dict], findings: Sequence[Finding], *,
                  strict: bool = False) -> str:
    """A GitHub step summary of `archc check`: one row per file, then the errors and findings."""
    out = ["### archc check", "", "| file | result | models | errors | lint findings |", "|---|---|---|--:|--:|"]
    for s in summary[:MAX_ITEMS]:
        result = "ok" if s["ok"] and not (strict and s["warning_count"]) else "**failed**"
        models = ", ".join(escape(m) for m in s["models"])
        out.append(f"| {escape(s['file'])} | {result} | {models} | {s['error_count']} | {s['warning_count']} |")
    if len(summary) > MAX_ITEMS:
        out.append(f"| and {len(summary) - MAX_ITEMS:,} more files | | | | |")
    if records:
        items = []
        for r in records:
            where = escape(f"{r['file']}:{r['line']}:{r['column']}") + ": " if r["file"] and r["line"] else ""
            hint = f" *Hint:* {escape(r['hint'])}" if r["hint"] else ""
            items.append(f"- {where}{escape(r['message'])}{hint}")
        out += ["", "#### Errors", "", *_list(items, "errors")]
    if findings:
        title = "Lint findings (failing the check: --strict)" if strict else "Lint findings"
        out += ["", f"#### {title}", "", *_list([finding_item(f) for f in findings], "findings")]
    return "\n".join(out) + "\n"
