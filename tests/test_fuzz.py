"""Fuzzing: random valid specs compile, build and format stably; mutated specs and random text
either compile or raise archlang's own located error — never another exception; and the CLI
exits 0, 1 or 2 on any input file (tests/fuzz_corpus holds the inputs that once crashed it).
`bench/fuzz.py` runs the same properties for as long as you like."""

import contextlib
import io
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archlang.api import build, compile_spec, load_model
from archlang.cli import main
from archlang.spec import ArchError, ArchErrors
from archlang.spec.format import format_source

from .conftest import EXAMPLES, SPECS
from .strategies import mutated, valid_spec

SOURCES = [p.read_text() for p in sorted(EXAMPLES.glob("*.arch")) + sorted(SPECS.glob("*.arch"))]


def fails_cleanly(text: str) -> None:
    try:
        compile_spec(text, passes="")
    except (ArchError, ArchErrors) as exc:
        for e in exc.errors if isinstance(exc, ArchErrors) else [exc]:
            assert e.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_spec())
def test_random_valid_specs_build_and_run(text):
    model = build(text)
    ids = torch.randint(0, load_model(text).vocab, (1, 6))
    out = model(ids)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(out).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_spec())
def test_fmt_is_idempotent_and_keeps_the_meaning(text):
    once = format_source(text)
    assert format_source(once) == once
    assert load_model(once).model_dump() == load_model(text).model_dump()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SOURCES))
def test_mutated_specs_fail_cleanly(text):
    fails_cleanly(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_fails_cleanly(text):
    fails_cleanly(text)


@pytest.mark.parametrize("text", ["", "\n", "model", "model m {}", "\ufeffmodel m { }", "model m { layers = 1 }"])
def test_degenerate_inputs(text):
    with pytest.raises((ArchError, ArchErrors)):
        compile_spec(text)


# ----------------------------------------------------------------------------- the CLI contract
# Whatever the input, `archc` exits 0, 1 or 2; 70 ("internal error") is reserved for bugs.

CORPUS = Path(__file__).parent / "fuzz_corpus"
CLEAN_EXITS = {0, 1, 2}


def run_cli(*args) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([str(a) for a in args])
    return code, out.getvalue()


def exits_cleanly(*args) -> None:
    code, output = run_cli(*args)
    assert code in CLEAN_EXITS, f"archc {' '.join(map(str, args))} exited {code}:\n{output[:2000]}"
    assert "Traceback" not in output and "internal error" not in output, output[:2000]


def corpus_cases():
    return [pytest.param(path, id=path.name) for path in sorted(CORPUS.glob("*.arch"))]


@pytest.mark.parametrize("path", corpus_cases())
def test_corpus_check_exits_cleanly(path):
    exits_cleanly("check", path)


@pytest.mark.parametrize("path", corpus_cases())
def test_corpus_fmt_check_exits_cleanly(path):
    exits_cleanly("fmt", "--check", path)


def test_corpus_files_are_small():
    assert all(p.stat().st_size < 64_000 for p in CORPUS.glob("*.arch"))


def spec_bytes():
    return st.one_of(mutated(SOURCES).map(str.encode), st.text(max_size=200).map(str.encode), st.binary(max_size=200))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=spec_bytes())
def test_no_input_makes_the_cli_exit_70(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("cli")
    spec = folder / "fuzzed.arch"
    spec.write_bytes(data)
    exits_cleanly("check", spec)
    exits_cleanly("compile", spec, "-o", folder / "out.py")
    exits_cleanly("fmt", "--check", spec)
    exits_cleanly("stats", spec, "--json")
    exits_cleanly("ir", spec)
    exits_cleanly("diff", SPECS / "tiny_llama.arch", spec)
    code, _ = run_cli("fmt", spec)  # in place: the file is either formatted or left as it was
    assert code in CLEAN_EXITS and (code == 1) <= (spec.read_bytes() == data)
    assert sorted(p.name for p in folder.iterdir()) in (["fuzzed.arch"], ["fuzzed.arch", "out.py"])


@pytest.mark.slow
def test_coverage_guided_fuzzer_runs(tmp_path):
    pytest.importorskip("atheris")
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, root / "bench" / "fuzz.py", "--coverage-guided", "--seconds", "5", "--work", tmp_path],
                       capture_output=True, text=True, cwd=root, timeout=300)
    assert "inputs tried" in r.stdout and "distinct failures" in r.stdout, r.stdout + r.stderr
    assert r.returncode in (0, 1)  # 1: it found failures, listed above
