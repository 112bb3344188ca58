"""`archc lint` and the lint side of `archc check`: exit codes, formats, --list-rules, and the
generated docs/lint.md kept current."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from archlang.cli import main
from archlang.lint import RULES
from archlang.lint.report import rules_markdown

from ..conftest import EXAMPLES, ROOT
from .conftest import spec_text

BAD = spec_text(attention="gqa(heads = 8, kv_heads = 3)")


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err, err
    return code, out, err


@pytest.fixture
def specs(tmp_path):
    (tmp_path / "clean.arch").write_text(spec_text())
    (tmp_path / "odd.arch").write_text(spec_text(vocab="1000"))
    (tmp_path / "bad.arch").write_text(BAD)
    return tmp_path


def test_exit_codes_in_a_subprocess(specs):
    def archc(*args):
        p = subprocess.run([sys.executable, "-m", "archlang", *map(str, args)], capture_output=True, text=True,
                           timeout=120)
        assert "Traceback" not in p.stderr
        return p

    assert archc("lint", specs / "clean.arch").returncode == 0
    p = archc("lint", specs / "odd.arch", specs / "clean.arch")
    assert p.returncode == 1 and f"{specs / 'odd.arch'}:2:13: warning[ARC102]" in p.stderr and "pad vocab to 1,024" in p.stderr
    p = archc("lint", specs / "bad.arch")
    assert p.returncode == 2 and "error: heads (8) must be divisible by kv_heads (3)" in p.stderr
    assert archc("lint", "--ignore", "ARC999", specs / "odd.arch").returncode == 2
    assert archc("check", specs / "odd.arch").returncode == 0
    assert archc("check", "--strict", specs / "odd.arch").returncode == 1


@pytest.mark.parametrize("args", [["--tp", "0", "SPEC"], ["--hardware", "tpu9", "SPEC"], ["--ignore", "ARC1", "SPEC"],
                                  ["--list-rules", "SPEC"], ["--list-rules", "--format", "sarif"], [],
                                  ["--format", "markdown", "SPEC"]])
def test_usage_errors(capsys, specs, args):
    code, _, err = run(capsys, "lint", *[specs / "odd.arch" if a == "SPEC" else a for a in args])
    assert code == 2 and "error" in err


def test_missing_file_is_a_usage_error(capsys, specs):
    code, _, err = run(capsys, "lint", specs / "nope.arch")
    assert code == 2 and "no such file" in err


def test_bad_project_settings_are_a_usage_error(capsys, specs):
    (specs / "pyproject.toml").write_text("[tool.archc]\ntensor_parallel = -1\n")
    code, _, err = run(capsys, "lint", specs / "clean.arch")
    assert code == 2 and "tensor_parallel" in err


def test_json(capsys, specs):
    code, out, _ = run(capsys, "lint", "--format", "json", specs / "odd.arch", specs / "clean.arch")
    data = json.loads(out)
    assert code == 1 and not data["ok"] and [w["code"] for w in data["warnings"]] == ["ARC102"]
    w = data["warnings"][0]
    assert (w["line"], w["column"], w["end_column"], w["model"]) == (2, 13, 17, "m") and w["fix"] == "pad vocab to 1,024"
    assert [f["warning_count"] for f in data["files"]] == [1, 0]


def test_github(capsys, specs):
    code, out, _ = run(capsys, "lint", "--format", "github", specs / "odd.arch")
    (line,) = out.splitlines()
    assert code == 1 and line.startswith(f"::warning file={specs / 'odd.arch'},line=2,col=13,title=ARC102 ")


def _keys(value, prefix=""):
    """Every key path of a JSON value, lists collapsed to their items."""
    if isinstance(value, dict):
        return {k for key, v in value.items() for k in {prefix + key} | _keys(v, prefix + key + ".")}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v, prefix)}
    return set()


def test_sarif_has_the_structure_of_checks(capsys, specs):
    _, check_out, _ = run(capsys, "check", "--format", "sarif", specs / "bad.arch")
    code, out, _ = run(capsys, "lint", "--format", "sarif", specs / "odd.arch", specs / "clean.arch")
    check_sarif, lint_sarif = json.loads(check_out), json.loads(out)
    assert code == 1
    # everything check's SARIF has, lint's has, at the same paths; lint adds rule descriptions only
    assert _keys(check_sarif) <= _keys(lint_sarif)
    extra = {k for k in _keys(lint_sarif) - _keys(check_sarif) if not k.startswith("runs.tool.driver.rules.")}
    assert not extra, extra
    assert check_sarif["version"] == lint_sarif["version"] == "2.1.0"
    run_ = lint_sarif["runs"][0]
    (result,) = run_["results"]
    assert result["ruleId"] == "ARC102" and result["level"] == "warning"
    assert result["locations"][0]["physicalLocation"]["region"] == {"startLine": 2, "startColumn": 13, "endLine": 2,
                                                                    "endColumn": 17}
    (rule,) = run_["tool"]["driver"]["rules"]
    assert rule["id"] == "ARC102" and rule["fullDescription"]["text"] == RULES["ARC102"].why


def test_check_shows_findings_as_warnings(capsys, specs):
    code, out, err = run(capsys, "check", specs / "odd.arch")
    assert code == 0 and "ok " in out and "warning[ARC102]" in err
    code, out, _ = run(capsys, "check", "--format", "json", specs / "odd.arch")
    data = json.loads(out)
    assert code == 0 and data["ok"] and [w["code"] for w in data["warnings"]] == ["ARC102"]
    code, out, _ = run(capsys, "check", "--warnings-as-errors", "--format", "json", specs / "odd.arch")
    assert code == 1 and not json.loads(out)["ok"]
    code, out, _ = run(capsys, "check", "--strict", "--format", "github", specs / "odd.arch")
    assert code == 1 and out.startswith("::error file=")
    code, out, _ = run(capsys, "check", "--format", "sarif", specs / "odd.arch", specs / "bad.arch")
    levels = sorted(r["level"] for r in json.loads(out)["runs"][0]["results"])
    assert code == 1 and levels == ["error", "warning"]


def test_check_honours_project_settings(capsys, specs):
    (specs / "pyproject.toml").write_text('[tool.archc]\nignore = ["ARC102"]\n')
    code, _, err = run(capsys, "check", "--strict", specs / "odd.arch")
    assert code == 0 and "ARC102" not in err


def test_cli_settings_override_the_project(capsys, specs):
    (specs / "gqa.arch").write_text(spec_text(attention="gqa(heads = 8, kv_heads = 2)"))
    (specs / "pyproject.toml").write_text("[tool.archc]\ntensor_parallel = 4\n")
    assert run(capsys, "lint", specs / "gqa.arch")[0] == 1
    assert run(capsys, "lint", "--tp", "2", specs / "gqa.arch")[0] == 0
    assert run(capsys, "lint", "--ignore", "ARC106", specs / "gqa.arch")[0] == 0


def test_list_rules(capsys):
    code, out, _ = run(capsys, "lint", "--list-rules")
    assert code == 0 and all(f"{c}  {r.name}: {r.title}" in out for c, r in RULES.items())
    code, out, _ = run(capsys, "lint", "--list-rules", "--format", "json")
    assert [r["code"] for r in json.loads(out)] == sorted(RULES)


def test_docs_are_current():
    """docs/lint.md is `archc lint --list-rules --format markdown`; regenerate it after changing a rule."""
    assert (ROOT / "docs" / "lint.md").read_text() == rules_markdown()


def test_every_rule_is_documented_with_a_why_and_a_fix():
    for r in RULES.values():
        assert r.title and len(r.why) > 80 and r.fix, r.code


def test_lint_examples_runs_clean_of_errors(capsys):
    code, out, err = run(capsys, "lint", "--format", "json", *sorted(EXAMPLES.glob("*.arch")))
    data = json.loads(out)
    assert code == 1 and data["errors"] == [] and all(f["ok"] for f in data["files"])


def test_github_properties_cannot_be_forged_by_a_file_name(capsys, tmp_path):
    spec = tmp_path / "a,line=999,col=1\n::error::x.arch"
    spec.write_text(spec_text(vocab="1000"))
    code, out, _ = run(capsys, "lint", "--format", "github", spec)
    (line,) = out.splitlines()
    assert code == 1 and ",line=2,col=13,title=ARC102 " in line and "a%2Cline=999%2Ccol=1%0A%3A%3Aerror%3A%3Ax.arch" in line


def test_findings_per_file_are_capped(capsys, tmp_path):
    blocks = " ".join(f"block b{i} {{ norm = rmsnorm(eps = 1e-5) attention = gqa(heads = 8, kv_heads = 8, head_dim = {36 + 8 * i}) }}"
                      for i in range(60))
    layers = ", ".join(f"b{i}" for i in range(60))
    spec = tmp_path / "many.arch"
    spec.write_text(f"model m {{ vocab = 1024 d_model = 256 context = 64 {blocks} layers = [{layers}] }}\n")
    code, out, err = run(capsys, "lint", spec)
    assert code == 1 and err.count("warning[ARC101]") == 50 and "and 10 more findings in" in err
    code, out, _ = run(capsys, "lint", "--format", "json", spec)
    data = json.loads(out)
    assert len(data["warnings"]) == 50 and data["truncated"] and data["files"][0]["warning_count"] == 60


def test_check_leaves_the_whole_ir_rules_to_lint(capsys, tmp_path):
    """check's work grows with the number of block kinds, not depth: ARC116 (which lowers every
    layer) runs in `archc lint` only."""
    big = tmp_path / "big.arch"
    big.write_text(spec_text(d_model="16384", ffn="swiglu(hidden = 65536)", attention="gqa(heads = 128, kv_heads = 8)",
                             layers="layer * 20"))
    _, out, _ = run(capsys, "check", "--format", "json", big)
    assert json.loads(out)["warnings"] == []
    _, out, _ = run(capsys, "lint", "--format", "json", big)
    assert [w["code"] for w in json.loads(out)["warnings"]] == ["ARC116"]
    assert [c for c, r in RULES.items() if r.whole_ir] == ["ARC116"]


def test_capped_findings_of_a_file_named_error_stay_warnings(capsys, tmp_path):
    blocks = " ".join(f"block b{i} {{ norm = rmsnorm(eps = 1e-5) attention = gqa(heads = 8, kv_heads = 8, head_dim = {36 + 8 * i}) }}"
                      for i in range(55))
    spec = tmp_path / "error.arch"
    spec.write_text(f"model m {{ vocab = 1024 d_model = 256 context = 64 {blocks} layers = [{', '.join(f'b{i}' for i in range(55))}] }}\n")
    code, out, _ = run(capsys, "lint", "--format", "github", spec)
    lines = out.splitlines()
    assert code == 1 and len(lines) == 51 and all(line.startswith("::warning ") for line in lines)
    assert "and 5 more findings in" in lines[-1]


@pytest.mark.parametrize("path", sorted((ROOT / "tests" / "fuzz_corpus").glob("*.arch")), ids=lambda p: p.name)
def test_lint_exits_cleanly_on_the_fuzz_corpus(capsys, path):
    code, _, _ = run(capsys, "lint", path)  # run() asserts: no traceback, no internal error
    assert code in (0, 1, 2)
