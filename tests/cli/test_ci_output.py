"""CI-facing output: GitHub workflow commands that user text cannot forge, machine formats that
stay valid JSON, bounded output however many errors a file has, and exit codes that gate CI."""

import json
import os
import re

import pytest

from archlang import cli
from archlang.cli import main

from ..conftest import EXAMPLES, SPECS

BAD = (SPECS / "tiny_llama.arch").read_text().replace("kv_heads = 2", "kv_heads = 3")


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err, err
    return code, out, err


def many_errors(n: int, one_line: bool) -> str:
    """A model with `n` blocks, each with the same invalid attention."""
    sep = " " if one_line else "\n"
    blocks = sep.join(f"block b{i} {{ attention = gqa(heads = 4, kv_heads = 3) ffn = mlp(hidden = 8) }}" for i in range(n))
    return f"model m {{{sep}vocab = 97{sep}d_model = 32{sep}context = 64{sep}{blocks}{sep}layers = b0 * 2{sep}}}\n"


HOSTILE = ["evil\n::warning::injected.arch", "a,line=999,col=1.arch", "pct%0A::error::x.arch", "colon:name.arch",
           "cr\r::notice::x.arch", 'quote"back\\slash.arch', "esc\x1b[31m.arch"]


def test_github_commands_cannot_be_forged_by_file_names(tmp_path, capsys):
    files = []
    for name in HOSTILE:
        path = tmp_path / name
        path.write_text(BAD)
        files.append(path)
    code, out, _ = run(capsys, "check", "--format", "github", *files)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == len(HOSTILE) and all(line.startswith("::error file=") for line in lines)
    for line in lines:  # exactly one file/line/col property each, and the location is the real one
        props = line[len("::error "):line.index("::", 2)]
        assert re.fullmatch(r"file=[^,:]*,line=10,col=47", props), props
    assert "a%2Cline=999%2Ccol=1.arch,line=10,col=47" in out
    assert "colon%3Aname.arch" in out and "pct%250A%3A%3Aerror%3A%3Ax.arch" in out
    assert "evil%0A%3A%3Awarning%3A%3Ainjected.arch," in out and "cr%0D%3A%3Anotice" in out and "esc\\x1b[31m.arch" in out


def test_github_message_cannot_start_a_command(tmp_path, capsys):
    path = tmp_path / "m.arch"
    path.write_text(BAD.replace("block layer", "block layer\n::warning::x"))  # a syntax error quoting the text
    code, out, _ = run(capsys, "check", "--format", "github", path)
    assert code == 1 and all(line.startswith("::error") for line in out.splitlines()) and len(out.splitlines()) >= 1


@pytest.mark.parametrize("fmt", ["json", "sarif"])
def test_machine_formats_stay_valid_json_for_hostile_names(tmp_path, capsys, fmt):
    files = []
    for name in HOSTILE:
        path = tmp_path / name
        path.write_text(BAD)
        files.append(path)
    undecodable = os.fsdecode(os.fsencode(str(tmp_path)) + b"/latin\xe9.arch")  # a file name that is not UTF-8
    with open(os.fsencode(undecodable), "w") as f:
        f.write(BAD)
    code, out, _ = run(capsys, "check", "--format", fmt, *files, undecodable)
    assert code == 1
    data = json.loads(out)
    if fmt == "json":
        assert [e["file"] for e in data["errors"]] == [str(f) for f in files] + [undecodable]
    else:
        uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in data["runs"][0]["results"]]
        assert uris == [str(f) for f in files] + [undecodable]


def test_text_output_of_an_undecodable_file_name(tmp_path, capsys):
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/latin\xe9.arch")
    with open(os.fsencode(name), "w") as f:
        f.write(BAD)
    code, _, err = run(capsys, "check", name)
    assert code == 1 and "latin\\udce9.arch:10:47" in err


@pytest.mark.parametrize("fmt", ["text", "json", "github", "sarif"])
def test_errors_per_file_are_capped_in_every_format(tmp_path, capsys, fmt):
    spec = tmp_path / "many.arch"
    spec.write_text(many_errors(120, one_line=True))  # one 10 KB line quoted by every error
    code, out, err = run(capsys, "check", "--format", fmt, spec)
    assert code == 1
    assert len(out + err) < 100_000
    if fmt == "text":
        assert err.count(": error: heads (4)") == cli.MAX_ERRORS_PER_FILE and "and 70 more errors in" in err
        assert all(len(line) < 1_000 for line in err.splitlines())
    elif fmt == "json":
        data = json.loads(out)
        assert len(data["errors"]) == cli.MAX_ERRORS_PER_FILE and data["truncated"]
        assert data["files"][0]["error_count"] == 120 and data["files"][0]["errors_omitted"] == 70
    elif fmt == "github":
        lines = out.splitlines()
        assert len(lines) == cli.MAX_ERRORS_PER_FILE + 1 and "and 70 more errors in" in lines[-1]
    else:
        run_ = json.loads(out)["runs"][0]
        assert len(run_["results"]) == cli.MAX_ERRORS_PER_FILE
        (note,) = run_["invocations"][0]["toolExecutionNotifications"]
        assert "and 70 more errors in" in note["message"]["text"]


def test_errors_are_capped_for_compile_too(tmp_path, capsys):
    spec = tmp_path / "many.arch"
    spec.write_text(many_errors(80, one_line=False))
    code, out, err = run(capsys, "compile", spec, "-o", tmp_path / "m.py")
    assert code == 1 and err.count(": error: heads (4)") == cli.MAX_ERRORS_PER_FILE and "and 30 more errors" in err
    assert not (tmp_path / "m.py").exists()


@pytest.mark.slow
@pytest.mark.parametrize("one_line", [True, False], ids=["one line", "separate lines"])
def test_a_thousand_errors_print_little(tmp_path, capsys, one_line):
    spec = tmp_path / "many.arch"
    spec.write_text(many_errors(1_000, one_line))
    code, out, err = run(capsys, "check", spec)
    assert code == 1 and len(out + err) < 100_000 and "and 950 more errors" in err


@pytest.mark.slow
def test_four_thousand_blocks_are_one_error_at_the_block_limit(tmp_path, capsys):
    spec = tmp_path / "many.arch"
    spec.write_text(many_errors(4_000, one_line=True))
    code, out, err = run(capsys, "check", spec)
    assert code == 1 and len(out + err) < 10_000 and "1024" in err.replace(",", "")


def test_diff_fail_on_gates_only_on_guards(capsys):
    a, b = EXAMPLES / "mistral_7b.arch", EXAMPLES / "mixtral_8x7b.arch"
    assert run(capsys, "diff", a, b)[0] == 1  # without guards: 1 when different
    assert run(capsys, "diff", a, a)[0] == 0
    code, _, err = run(capsys, "diff", a, b, "--fail-on", "params_total>+1000%")
    assert code == 0 and "guard tripped" not in err  # allowed change
    code, _, err = run(capsys, "diff", a, b, "--fail-on", "params_total>+1000%", "--fail-on", "params_total>+5%")
    assert code == 1 and "guard tripped" in err
    code, out, _ = run(capsys, "diff", a, b, "--json", "--fail-on", "params_total>+1000%")
    assert code == 0 and json.loads(out)["guards_tripped"] == []
    assert run(capsys, "diff", a, a, "--fail-on", "params_total>+5%")[0] == 0


@pytest.mark.parametrize("args", [
    ("diff", EXAMPLES / "deepseek_v3.arch", EXAMPLES / "llama4_scout.arch"),
    ("stats", EXAMPLES / "deepseek_v3.arch"),
    ("estimate", EXAMPLES / "deepseek_v3.arch", "--gpus", "64", "--ep", "8", "--fsdp"),
])
def test_an_80_column_log_wraps_numbers_and_never_cuts_them(capsys, monkeypatch, args):
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = run(capsys, *args)
    assert "…" not in out
    if args[0] == "diff":  # 671,026,404,352 parameters, folded over two lines of its cell
        cells = [line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 6]
        assert "671,026,404,352" in "".join(cells)
