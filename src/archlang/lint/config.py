"""Where `archc lint` takes its settings: the `[tool.archc]` table of the nearest pyproject.toml
that has one, found by walking up from the spec's folder (as ruff and black find theirs), then
the command line on top."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from archlang.spec.errors import ArchError, did_you_mean

from .registry import RULES

KEYS = ("ignore", "tensor_parallel", "expert_parallel", "hardware")


@dataclass(frozen=True)
class LintConfig:
    tensor_parallel: int = 1  # the degree the model is meant to be trained or served at
    expert_parallel: int = 1
    hardware: str = "h100"
    ignore: frozenset[str] = frozenset()
    source: str | None = None  # the pyproject.toml these came from, if any

    def overridden(self, *, tensor_parallel=None, expert_parallel=None, hardware=None, ignore=()) -> "LintConfig":
        """These settings with the command line's on top: given degrees and hardware replace the
        file's; `--ignore` codes add to its list."""
        changes = {k: v for k, v in (("tensor_parallel", tensor_parallel), ("expert_parallel", expert_parallel),
                                     ("hardware", hardware)) if v is not None}
        config = replace(self, **changes, ignore=self.ignore | {check_code(c, "--ignore") for c in ignore})
        validate(config, "the command line")
        return config


def check_code(code: str, where: str) -> str:
    if code not in RULES:
        hint = did_you_mean(code, RULES) or "`archc lint --list-rules` lists them"
        raise ArchError(f"unknown lint rule {code!r} in {where}", hint=hint, kind="usage")
    return code


def validate(config: LintConfig, where: str) -> None:
    from archlang.estimate.hardware import HARDWARE

    for key in ("tensor_parallel", "expert_parallel"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
            raise ArchError(f"{key} in {where} must be a whole number from 1, got {value!r}", kind="usage")
    if config.hardware not in HARDWARE:
        raise ArchError(f"unknown hardware {config.hardware!r} in {where}", kind="usage",
                        hint=f"one of {', '.join(sorted(HARDWARE))}")


def find_pyproject(spec: Path) -> Path | None:
    """The nearest pyproject.toml above `spec` with a `[tool.archc]` table."""
    folder = spec.resolve().parent
    for candidate in (folder, *folder.parents):
        path = candidate / "pyproject.toml"
        if path.is_file():
            try:
                if "archc" in _read(path).get("tool", {}):
                    return path
            except ArchError:
                # a broken file is reported only if it is the one holding our table: look for
                # the table's header as text, since the file does not parse
                if "[tool.archc]" in path.read_text(encoding="utf-8", errors="replace"):
                    raise
    return None


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ArchError(f"cannot read {path}: {exc}", kind="usage") from None


def load_config(spec: Path) -> LintConfig:
    """The settings that apply to `spec`: its project's `[tool.archc]`, or the defaults."""
    path = find_pyproject(spec)
    if path is None:
        return LintConfig()
    table = _read(path)["tool"]["archc"]
    where = f"[tool.archc] of {path}"
    if not isinstance(table, dict):
        raise ArchError(f"{where} must be a table", kind="usage")
    for key in table:
        if key not in KEYS:
            raise ArchError(f"unknown setting {key!r} in {where}", kind="usage",
                            hint=did_you_mean(key, KEYS) or f"the settings are {', '.join(KEYS)}")
    ignore = table.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(c, str) for c in ignore):
        raise ArchError(f"ignore in {where} must be a list of rule codes, e.g. [\"ARC103\"]", kind="usage")
    config = LintConfig(tensor_parallel=table.get("tensor_parallel", 1), expert_parallel=table.get("expert_parallel", 1),
                        hardware=table.get("hardware", "h100"), ignore=frozenset(check_code(c, where) for c in ignore),
                        source=str(path))
    validate(config, where)
    return config


__all__ = ["LintConfig", "find_pyproject", "load_config"]
