"""The CLI treats arguments as paths, prints user text literally, and turns every bad path or
option into a clear error (exit 1 or 2), never a crash (exit 70)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from archlang import cli
from archlang.cli import main

from ..conftest import EXAMPLES, SPECS

TINY = (SPECS / "tiny_llama.arch").read_text()
BAD = TINY.replace("kv_heads = 2", "kv_heads = 3")


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err, err
    return code, out, err


@pytest.mark.parametrize("command", ["stats", "ir", "compile", "graph"])
def test_an_argument_is_a_path_whatever_its_suffix(tmp_path, capsys, command):
    spec = tmp_path / "copy.txt"
    spec.write_text(TINY)
    extra = {"compile": ["-o", tmp_path / "m.py"], "graph": ["-o", tmp_path / "m.dot"]}.get(command, [])
    code, out, err = run(capsys, command, spec, *extra)
    assert code == 0, err
    assert "<string>" not in out + err


def test_diff_reads_paths_whatever_their_suffix(tmp_path, capsys):
    a, b = tmp_path / "a.spec", tmp_path / "b"
    a.write_text(TINY)
    b.write_text(TINY)
    assert run(capsys, "diff", a, b)[0] == 0


@pytest.mark.parametrize("name", ["q[/bold].arch", "x[bold]y.arch", "smile:x:.arch", ":thumbs_up:.arch",
                                  "esc\x1b[2Jclear.arch", "bidi\u202eevil.arch"])
def test_file_names_are_printed_literally(tmp_path, capsys, name):
    bad = tmp_path / name
    bad.parent.mkdir(exist_ok=True)  # `q[/bold].arch` is a file in a folder `q[`
    bad.write_text(BAD)
    code, _, err = run(capsys, "check", bad)
    assert code == 1
    shown = cli.literal(bad)
    assert f"{shown}:10:47: error: heads (4) must be divisible by kv_heads (3)" in err
    assert "\x1b" not in err and "\u202e" not in err
    good = tmp_path / ("ok" + name)
    good.parent.mkdir(exist_ok=True)
    good.write_text(TINY)
    code, out, err = run(capsys, "check", good)
    assert code == 0 and f"ok {cli.literal(good)}: tiny_llama" in out
    code, _, err = run(capsys, "compile", good, "-o", tmp_path / (name + ".py"))
    assert code == 0 and f"wrote {cli.literal(tmp_path / (name + '.py'))}" in err


def test_control_characters_in_messages_are_escaped(tmp_path, capsys):
    spec = tmp_path / "m.arch"
    spec.write_text(TINY.replace("block layer", "block la\x1b[2Jyer"))
    code, out, err = run(capsys, "check", spec)
    assert code == 1 and "\x1b" not in out + err


def test_output_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    code, _, err = run(capsys, "compile", SPECS / "tiny_llama.arch", "-o", tmp_path / "file.txt" / "x.py")
    assert code == 2 and "cannot write" in err and "a parent of it is a file" in err


def test_output_onto_a_directory(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    for force in ([], ["--force"]):
        code, _, err = run(capsys, "compile", SPECS / "tiny_llama.arch", "-o", tmp_path / "d", *force)
        assert code == 2 and "it is a directory" in err
    assert (tmp_path / "d").is_dir()


def test_output_in_a_read_only_place(tmp_path, capsys, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.os, "replace", refuse)  # root ignores chmod, so refuse the rename itself
    out = tmp_path / "m.py"
    code, _, err = run(capsys, "compile", SPECS / "tiny_llama.arch", "-o", out)
    assert code == 2 and "permission denied" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_output_cannot_be_the_spec(tmp_path, capsys):
    spec = tmp_path / "m.py"
    spec.write_text(TINY)
    code, _, err = run(capsys, "compile", spec, "--force")
    assert code == 2 and "is the spec itself" in err and spec.read_text() == TINY


@pytest.mark.parametrize("value", ["1" + "0" * 400, "-5", "0", str((1 << 24) + 1), "1e3", "x"])
def test_context_must_be_a_positive_bounded_number(capsys, value):
    code = main(["stats", str(SPECS / "tiny_llama.arch"), f"--context={value}"])
    err = capsys.readouterr().err
    assert code == 2 and "expected a whole number from 1 to 16,777,216" in err and len(err) < 2000
    assert main(["diff", str(SPECS / "tiny_llama.arch"), str(SPECS / "tiny_llama.arch"), f"--context={value}"]) == 2


def test_context_in_range_is_used(capsys):
    code, out, _ = run(capsys, "stats", SPECS / "tiny_llama.arch", "--json", "--context", "16")
    assert code == 0 and json.loads(out)["context"] == 16


def test_fmt_non_utf8_is_a_located_error(tmp_path, capsys):
    spec = tmp_path / "latin1.arch"
    spec.write_bytes("model m {\n    vocab = 97  # naïve café".encode() + b"\xe9\n}\n")  # columns count characters
    code, _, err = run(capsys, "fmt", "--check", spec)
    assert code == 1 and f"{spec}:2:29: error:" in err and "not UTF-8" in err and "hint: save the file as UTF-8" in err


def test_fmt_goes_on_after_a_bad_file(tmp_path, capsys):
    bad, messy = tmp_path / "bad.arch", tmp_path / "messy.arch"
    bad.write_bytes(b"\xff")
    messy.write_text("model m{vocab=97}\n")
    code, _, err = run(capsys, "fmt", bad, messy)
    assert code == 1 and f"reformatted {messy}" in err and messy.read_text().startswith("model m {\n")


def test_fmt_check_output_is_bounded(tmp_path, capsys):
    huge = tmp_path / "huge.arch"
    huge.write_text("model m { vocab = 97 }\n" + "# comment\n" * 200_000)  # 2 MB
    code, out, err = run(capsys, "fmt", "--check", huge)
    assert code == 1 and "too large" in err and len(out + err) < 2_000
    long_line = tmp_path / "long.arch"
    long_line.write_text("model m { vocab = 97 " + "a" * 800_000 + " = = }\n")  # one 800 KB line that does not parse
    code, out, err = run(capsys, "fmt", "--check", long_line)
    assert code == 1 and ": error:" in err and len(out + err) < 10_000


def test_graph_without_pydot(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)  # makes `import pydot` raise ImportError
    monkeypatch.delitem(sys.modules, "archlang.compiler.picture", raising=False)
    code, _, err = run(capsys, "graph", SPECS / "tiny_llama.arch", "-o", tmp_path / "m.dot")
    assert code == 1 and "pip install 'archlang[graph]'" in err and not (tmp_path / "m.dot").exists()


def test_graph_without_graphviz(tmp_path, capsys, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(cli.shutil, "which", lambda name, *a, **k: None if name == "dot" else real_which(name, *a, **k))
    code, _, err = run(capsys, "graph", SPECS / "tiny_llama.arch", "-o", tmp_path / "m.svg", "--engine", "dot")
    assert code == 1 and "Graphviz" in err and "apt-get install graphviz" in err
    code, _, err = run(capsys, "graph", SPECS / "tiny_llama.arch", "-o", tmp_path / "m.svg")  # drawn natively
    assert code == 0 and (tmp_path / "m.svg").read_text().startswith("<svg")
    code, _, err = run(capsys, "graph", SPECS / "tiny_llama.arch", "-o", tmp_path / "m.dot")
    assert code == 0 and (tmp_path / "m.dot").read_text().startswith("digraph")


def test_graph_when_dot_fails(tmp_path, capsys, monkeypatch):
    pytest.importorskip("pydot")
    import pydot

    def fail(*_args, **_kwargs):
        raise AssertionError('"dot" with args [] returned code: 1')

    monkeypatch.setattr(cli.shutil, "which", lambda name, *a, **k: "/usr/bin/dot")
    monkeypatch.setattr(pydot.Dot, "create", fail)
    code, _, err = run(capsys, "graph", SPECS / "tiny_llama.arch", "-o", tmp_path / "m.png", "--engine", "dot")
    assert code == 1 and "Graphviz could not draw" in err and not (tmp_path / "m.png").exists()


def test_check_reports_every_file(tmp_path, capsys):
    bad = tmp_path / "bad.arch"
    bad.write_text(BAD)
    latin1 = tmp_path / "latin1.arch"
    latin1.write_bytes(b"model m { vocab = 97 } # \xe9\n")
    folder = tmp_path / "folder.arch"
    folder.mkdir()
    good = SPECS / "tiny_llama.arch"
    code, out, err = run(capsys, "check", bad, latin1, folder, good)
    assert code == 1
    assert "bad.arch:10:47" in err and "latin1.arch is not UTF-8" in err and "folder.arch" in err
    assert f"ok {good}: tiny_llama" in out and "4 error(s) in 3 file(s)" not in err and "3 error(s) in 3 file(s)" in err
    code, out, err = run(capsys, "check", tmp_path / "missing.arch", good)
    assert code == 2 and "no such file" in err and f"ok {good}" in out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_check_a_fifo_does_not_hang(tmp_path, capsys):
    fifo = tmp_path / "pipe.arch"
    os.mkfifo(fifo)
    code, out, err = run(capsys, "check", fifo, SPECS / "tiny_llama.arch")
    assert code in (1, 2) and "pipe.arch" in err and "ok " in out
    assert run(capsys, "fmt", "--check", fifo)[0] == 2


MESSY = "model m{vocab=97 d_model=32 context=64\nblock b{norm=rmsnorm() ffn=mlp(hidden=8)} layers=b*2}\n"


def _piped(args, text: bytes):
    return subprocess.run([sys.executable, "-m", "archlang", *args], input=text, capture_output=True)


def test_fmt_reads_standard_input():
    r = _piped(["fmt", "-"], MESSY.encode())
    assert r.returncode == 0 and r.stdout.decode().startswith("model m {\n    vocab = 97\n")
    assert _piped(["fmt", "--check", "-"], MESSY.encode()).returncode == 1
    assert _piped(["fmt", "--check", "-"], r.stdout).returncode == 0  # formatted text is a fixed point
    bad = _piped(["fmt", "-"], b"model m{")
    assert bad.returncode == 1 and b"<stdin>:1:9: error" in bad.stderr and not bad.stdout
    assert b"not UTF-8" in _piped(["fmt", "-"], b"\xff\xfe").stderr
    assert _piped(["fmt", "-", "x.arch"], MESSY.encode()).returncode == 2


def test_check_reads_standard_input():
    r = _piped(["check", "-"], MESSY.encode())
    assert r.returncode == 0 and b"<stdin>: m" in r.stdout
    bad = MESSY.replace("ffn=", "attention=gqa(heads=4, kv_heads=3) ffn=")
    r = _piped(["check", "--format", "github", "-"], bad.encode())
    assert r.returncode == 1 and r.stdout.startswith(b"::error file=<stdin>,line=2,")


def test_progress_only_on_a_terminal(monkeypatch):
    files = [str(SPECS / "tiny_llama.arch")] * 4
    assert cli._progress(files, "checking") is files  # not a terminal (pytest captures stderr)
    monkeypatch.setattr(cli.Console, "is_terminal", property(lambda self: True))
    shown = cli._progress(files, "checking")
    assert shown is not files and list(shown) == files  # a bar, then the same items
    assert cli._progress(files[:2], "checking") == files[:2]  # too short to want one
