"""The benchmark scripts run (at tiny sizes); their numbers live in bench/README.md, not in tests."""

import subprocess
import sys

import pytest

from .conftest import ROOT


def run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_compile_benchmark_runs():
    r = run(ROOT / "bench" / "compile.py", "--repeat", "1")
    assert r.returncode == 0, r.stderr
    assert "hybrid_128 (synthetic)" in r.stdout and "torch imported by the compiler: False" in r.stdout


def test_forward_benchmark_runs():
    pytest.importorskip("transformers")
    r = run(ROOT / "bench" / "forward.py", "--quick")
    assert r.returncode == 0, r.stderr
    assert "worst ratio vs HF sdpa" in r.stdout and "jamba-like" in r.stdout


def test_generation_benchmark_runs():
    pytest.importorskip("transformers")
    r = run(ROOT / "bench" / "generate.py", "--quick")
    assert r.returncode == 0, r.stderr
    assert "of limit" in r.stdout and "mixtral-like" in r.stdout and "self k=4" in r.stdout


def test_kernel_benchmark_explains_itself_without_a_gpu():
    r = run(ROOT / "bench" / "kernels.py")
    assert r.returncode == 0, r.stderr
    assert "needs a CUDA GPU" in r.stdout
