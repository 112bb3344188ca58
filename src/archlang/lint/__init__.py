"""`archc lint`: design-review findings on valid specs, each from a rule with a stable code
(registry.py), located at the value it is about, and suppressible inline or in pyproject.toml.

    from archlang.lint import lint_models, load_config
    result = lint_models(models, load_config(path), sources)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from archlang.spec.ast import Model
from archlang.spec.errors import SourceMap, Span

from . import rules as _rules  # noqa: F401  (registers the rules)
from .config import LintConfig, load_config
from .registry import RULES, Finding, Rule

__all__ = ["RULES", "Finding", "LintConfig", "LintResult", "Rule", "lint_models", "load_config"]

# `# archc: ignore[ARC101]` or `# archc: ignore[ARC101, ARC104]`
_IGNORE = re.compile(r"#\s*archc:\s*ignore\[([^\]]*)\]")


@dataclass
class LintResult:
    findings: list[Finding] = field(default_factory=list)
    suppressed: list[Finding] = field(default_factory=list)


def _inline_codes(line: str | None) -> set[str]:
    if line is None:
        return set()
    return {code.strip() for m in _IGNORE.finditer(line) for code in m[1].split(",")}


def suppressed_inline(span: Span | None, code: str, sources: SourceMap | None) -> bool:
    """Whether the finding's line, or a comment-only line right above it, ignores `code`. A
    comment at the end of a line with code of its own covers that line alone."""
    if span is None or sources is None:
        return False
    if code in _inline_codes(sources.line(span)):
        return True
    above = sources.line(Span(span.file, span.line - 1, 1)) if span.line > 1 else None
    return above is not None and above.lstrip().startswith("#") and code in _inline_codes(above)


def lint_model(model: Model, config: LintConfig, *, whole_ir: bool = True) -> list[Finding]:
    """Every rule's findings on one model, in rule order, one per rule and source location;
    without `whole_ir`, less the rules that build the IR of every layer."""
    subject = _rules.Subject(model, config)
    findings, seen = [], set()
    for code, r in RULES.items():
        if r.whole_ir and not whole_ir:
            continue
        for hit in r.check(subject):
            span = model.span_of(*hit.path)
            key = (code, span.file, span.line, span.column) if span else (code, hit.message)
            if key in seen:  # a value inherited by several blocks is one finding at the value
                continue
            seen.add(key)
            findings.append(Finding(code, r.title, hit.message, r.why, hit.fix or r.fix, model.name, span))
    return findings


def lint_models(models: Sequence[Model], config: LintConfig, sources: SourceMap | None = None, *,
                whole_ir: bool = True) -> LintResult:
    """The findings on the models of one file, less those its settings or comments suppress."""
    result, seen = LintResult(), set()
    for model in models:
        for f in lint_model(model, config, whole_ir=whole_ir):
            key = (f.code, f.span.file, f.span.line, f.span.column) if f.span else (f.code, f.model, f.message)
            if key in seen:  # a model extending another in the same file shares its values
                continue
            seen.add(key)
            ignored = f.code in config.ignore or suppressed_inline(f.span, f.code, sources)
            (result.suppressed if ignored else result.findings).append(f)
    return result
