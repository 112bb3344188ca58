"""Markdown for pull requests: `archc diff --format markdown` (a comment: changes, fact deltas,
the lint findings the change adds and resolves) and `archc check --format markdown` (a step
summary), on the examples."""

from __future__ import annotations

import json
import re

from archlang.lint.markdown import escape

from ..conftest import EXAMPLES
from .test_cli import run


def _row_cells(line: str) -> int:
    """Cells of a markdown table row, not counting escaped pipes."""
    return len(re.split(r"(?<!\\)\|", line)) - 2


def test_diff_comment_on_two_examples(capsys):
    a, b = EXAMPLES / "llama3_8b.arch", EXAMPLES / "mistral_7b.arch"
    code, out, _ = run(capsys, "diff", "--format", "markdown", a, b)
    _, js, _ = run(capsys, "diff", "--json", a, b)
    facts = json.loads(js)["facts"]
    assert code == 1 and out.startswith("### Architecture diff: ")
    assert "**4 changes**" in out and "| model | vocab | 128256 | 32000 |" in out
    params = facts["params_total"]
    assert (f"| params\\_total | {params['before']:,} | {params['after']:,} | {params['delta']:+,} | "
            f"{params['percent']:+.2f}% |") in out
    assert "#### Lint\n\nNo findings." in out  # neither has any
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert all(_row_cells(line) in (4, 5) for line in rows)


def test_diff_comment_lists_new_and_resolved_findings(capsys, tmp_path):
    gpt2 = (EXAMPLES / "gpt2.arch").read_text()
    padded = tmp_path / "gpt2_padded.arch"
    padded.write_text(gpt2.replace("vocab = 50257", "vocab = 50304"))
    code, out, _ = run(capsys, "diff", "--format", "markdown", EXAMPLES / "gpt2.arch", padded)
    assert code == 1 and "| model | vocab | 50257 | 50304 |" in out
    assert "Resolved (1):\n\n- **ARC102** " in out and "1 finding unchanged." in out and "New findings" not in out
    code, out, _ = run(capsys, "diff", "--format", "markdown", padded, EXAMPLES / "gpt2.arch")
    assert "New findings (1):\n\n- **ARC102** " in out and "pad vocab to 50,304" in out


def test_diff_comment_without_a_change(capsys):
    code, out, _ = run(capsys, "diff", "--format", "markdown", EXAMPLES / "gpt2.arch", EXAMPLES / "gpt2.arch")
    assert code == 0 and "No architectural change." in out and "#### Facts" not in out
    assert "No new findings (2 unchanged)." in out


def test_diff_comment_shows_tripped_guards(capsys, tmp_path):
    code, out, _ = run(capsys, "diff", "--format", "markdown", "--fail-on", "params_total>+5%",
                       EXAMPLES / "mistral_7b.arch", EXAMPLES / "llama3_8b.arch")
    assert code == 1 and "#### Guards tripped\n\n- params\\_total" in out


def test_check_step_summary_on_the_examples(capsys, tmp_path):
    files = sorted(EXAMPLES.glob("*.arch"))
    code, out, _ = run(capsys, "check", "--format", "markdown", *files)
    _, js, _ = run(capsys, "check", "--format", "json", *files)
    data = json.loads(js)
    assert code == 0 and out.startswith("### archc check\n")
    for f in data["files"]:
        assert f"| {escape(f['file'])} | ok | {escape(f['models'][0])} | 0 | {f['warning_count']} |" in out
    assert out.count("\n- **ARC") == len(data["warnings"])
    code, out, _ = run(capsys, "check", "--strict", "--format", "markdown", EXAMPLES / "gpt2.arch")
    assert code == 1 and "| **failed** |" in out and "#### Lint findings (failing the check: --strict)" in out


def test_check_step_summary_of_an_invalid_spec_with_a_hostile_name(capsys, tmp_path):
    spec = tmp_path / "x|y[a](http:evil)<img src=x>.arch"
    spec.write_text((EXAMPLES / "llama3_8b.arch").read_text().replace("kv_heads = 8", "kv_heads = 7"))
    code, out, _ = run(capsys, "check", "--format", "markdown", spec)
    assert code == 1 and "#### Errors" in out and "must be divisible by kv\\_heads \\(7\\)" not in out
    assert "must be divisible by kv\\_heads (7)" in out and "*Hint:*" in out
    assert "<img" not in out and "[a](" not in out and "&lt;img" in out
    (row,) = [line for line in out.splitlines() if line.startswith("| ") and "failed" in line]
    assert _row_cells(row) == 5
