"""Findings are suppressed by an inline comment at the finding (or alone on the line above), or
by `ignore` in the nearest pyproject.toml with a [tool.archc] table; the command line overrides
the file's settings."""

from __future__ import annotations

import pytest

from archlang.lint import LintConfig, load_config
from archlang.spec.errors import ArchError

from .conftest import lint_text, spec_text


def codes(result):
    return sorted(f.code for f in result.findings)


def test_a_comment_on_the_line_suppresses_that_code(tmp_path):
    text = spec_text(vocab="1000  # archc: ignore[ARC102]")
    result = lint_text(text, tmp_path / "m.arch")
    assert codes(result) == [] and [f.code for f in result.suppressed] == ["ARC102"]


def test_a_comment_alone_on_the_line_above_suppresses(tmp_path):
    text = spec_text(vocab="1000").replace("    vocab = 1000", "    # archc: ignore[ARC102]  (the checkpoint's size)\n"
                                                              "    vocab = 1000")
    assert codes(lint_text(text, tmp_path / "m.arch")) == []


def test_a_trailing_comment_covers_its_own_line_only(tmp_path):
    text = spec_text(vocab="1000").replace("model m {", "model m {  # archc: ignore[ARC102]")
    assert codes(lint_text(text, tmp_path / "m.arch")) == ["ARC102"]


def test_another_code_does_not_suppress(tmp_path):
    assert codes(lint_text(spec_text(vocab="1000  # archc: ignore[ARC103]"), tmp_path / "m.arch")) == ["ARC102"]


def test_several_codes_in_one_comment(tmp_path):
    text = spec_text(vocab="1000", ffn="swiglu(hidden = 500)  # archc: ignore[ARC102, ARC104]")
    assert codes(lint_text(text, tmp_path / "m.arch")) == ["ARC102"]


def write_project(root, settings: str):
    (root / "pyproject.toml").write_text(f"[project]\nname = \"x\"\n\n[tool.archc]\n{settings}\n")
    sub = root / "specs" / "deep"
    sub.mkdir(parents=True)
    return sub / "m.arch"


def test_pyproject_settings_are_found_walking_up(tmp_path):
    spec = write_project(tmp_path, 'ignore = ["ARC102"]\ntensor_parallel = 4\nexpert_parallel = 2\nhardware = "h200"')
    (spec.parent / "pyproject.toml").write_text("[project]\nname = \"inner\"\n")  # nearer, but no [tool.archc]
    config = load_config(spec)
    assert config == LintConfig(tensor_parallel=4, expert_parallel=2, hardware="h200", ignore=frozenset({"ARC102"}),
                                source=str(tmp_path / "pyproject.toml"))
    result = lint_text(spec_text(vocab="1000", attention="gqa(heads = 8, kv_heads = 2)"), spec, config)
    assert codes(result) == ["ARC106"] and [f.code for f in result.suppressed] == ["ARC102"]
    # the command line overrides the degrees and adds to ignore
    overridden = config.overridden(tensor_parallel=1, ignore=["ARC104"])
    assert overridden.tensor_parallel == 1 and overridden.ignore == {"ARC102", "ARC104"}
    assert codes(lint_text(spec_text(vocab="1000", attention="gqa(heads = 8, kv_heads = 2)"), spec, overridden)) == []


def test_no_pyproject_means_defaults(tmp_path):
    assert load_config(tmp_path / "m.arch") == LintConfig()


@pytest.mark.parametrize("settings,says", [
    ('ignore = ["ARC1O2"]', "unknown lint rule 'ARC1O2'"),
    ('ignore = "ARC102"', "must be a list of rule codes"),
    ("tensor_paralel = 8", "unknown setting 'tensor_paralel'"),
    ("tensor_parallel = 0", "tensor_parallel"),
    ("tensor_parallel = true", "tensor_parallel"),
    ('hardware = "h1000"', "unknown hardware 'h1000'"),
    ("ignore = [", "cannot read"),
])
def test_bad_settings_are_usage_errors(tmp_path, settings, says):
    spec = write_project(tmp_path, settings)
    with pytest.raises(ArchError) as exc:
        load_config(spec)
    assert says in exc.value.message and exc.value.kind == "usage"


def test_unknown_code_on_the_command_line_suggests_one():
    with pytest.raises(ArchError) as exc:
        LintConfig().overridden(ignore=["ARC10"])
    assert exc.value.kind == "usage" and "did you mean" in exc.value.hint
