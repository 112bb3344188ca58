"""The real `archc` command, run as a subprocess on the examples."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import EXAMPLES, ROOT, SPECS


def archc(*args, cwd=ROOT):
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "archlang", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_check_examples_ok():
    r = archc("check", *sorted(EXAMPLES.glob("*.arch")))
    assert r.returncode == 0, r.stderr
    assert "ok examples/llama3_8b.arch: llama3_8b" in r.stdout.replace(str(ROOT) + "/", "")


@pytest.fixture
def bad(tmp_path):
    path = tmp_path / "bad.arch"
    path.write_text((SPECS / "tiny_llama.arch").read_text().replace("kv_heads = 2", "kv_heads = 3"))
    return path


def test_check_invalid_text(bad):
    r = archc("check", bad)
    assert r.returncode == 1
    assert "bad.arch:10:47: error: heads (4) must be divisible by kv_heads (3)" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_machine_formats(bad):
    r = archc("check", "--format", "json", bad)
    assert r.returncode == 1
    (err,) = json.loads(r.stdout)["errors"]
    assert (err["line"], err["column"], err["kind"]) == (10, 47, "semantic")
    r = archc("check", "--format", "github", bad)
    assert r.stdout.startswith(f"::error file={bad},line=10,col=47::heads (4) must be divisible by kv_heads (3)")
    sarif = json.loads(archc("check", "--format", "sarif", bad).stdout)
    assert sarif["version"] == "2.1.0"
    region = sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]
    assert (region["startLine"], region["startColumn"]) == (10, 47)


def test_usage_errors_exit_2(tmp_path):
    assert archc("check", tmp_path / "missing.arch").returncode == 2
    assert archc("frobnicate").returncode == 2
    assert archc("compile", EXAMPLES / "gpt2.arch", "--passes", "fuse-qvk", "-o", tmp_path / "x.py").returncode == 2


def test_compile_writes_atomically_and_guards_foreign_files(tmp_path):
    out = tmp_path / "model.py"
    r = archc("compile", SPECS / "tiny_llama.arch", "-o", out)
    assert r.returncode == 0, r.stderr
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import torch, model; m = model.build(); print(tuple(m(torch.zeros(1, 3, dtype=torch.long)).shape))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "(1, 3, 97)"
    assert archc("compile", SPECS / "tiny_llama.arch", "-o", out).returncode == 0  # ours: may overwrite
    foreign = tmp_path / "mine.py"
    foreign.write_text("print('hand written')\n")
    r = archc("compile", SPECS / "tiny_llama.arch", "-o", foreign)
    assert r.returncode == 2 and "--force" in r.stderr
    assert foreign.read_text() == "print('hand written')\n"
    bad = tmp_path / "bad.arch"
    bad.write_text("model m {")
    assert archc("compile", bad, "-o", tmp_path / "none.py").returncode == 1
    assert not (tmp_path / "none.py").exists() and not list(tmp_path.glob(".*tmp*"))


def test_compile_prints_ir_after_passes(tmp_path):
    r = archc("compile", SPECS / "tiny_llama.arch", "-o", tmp_path / "m.py", "--print-ir-after", "fuse-qkv")
    assert "// ----- IR after fuse-qkv" in r.stderr and "qkv_proj" in r.stderr


def test_stats_json_keys():
    r = archc("stats", EXAMPLES / "mixtral_8x7b.arch", "--json", "--context", "4096")
    facts = json.loads(r.stdout)
    assert facts["params_total"] == 46_702_792_704
    for key in ("params_active", "flops_per_token", "kv_cache_bytes_per_token", "breakdown"):
        assert key in facts
    assert "46,702,792,704" in archc("stats", EXAMPLES / "mixtral_8x7b.arch").stdout


def test_diff(tmp_path):
    same = tmp_path / "same.arch"
    same.write_text("# reformatted\n" + (EXAMPLES / "mistral_7b.arch").read_text().replace("    ", "  ").replace("= 32k", "= 32768"))
    r = archc("diff", EXAMPLES / "mistral_7b.arch", same)
    assert r.returncode == 0 and "no architectural change" in r.stdout
    r = archc("diff", EXAMPLES / "mistral_7b.arch", EXAMPLES / "mixtral_8x7b.arch")
    assert r.returncode == 1
    assert "layers 0–31: ffn swiglu(hidden=14336, act=silu) → moe(" in r.stdout
    r = archc("diff", EXAMPLES / "mistral_7b.arch", EXAMPLES / "mixtral_8x7b.arch", "--json", "--fail-on", "params_total>+5%")
    data = json.loads(r.stdout)
    assert data["facts"]["params_total"]["delta"] == 46_702_792_704 - 7_241_732_096 and data["guards_tripped"]


def test_fmt(tmp_path):
    messy = tmp_path / "messy.arch"
    messy.write_text("model m{vocab=97 d_model=32 context=64 # c\nblock b{norm=rmsnorm() ffn=mlp(hidden=8)} layers=b*2}\n")
    assert archc("fmt", "--check", messy).returncode == 1
    assert archc("fmt", messy).returncode == 0
    formatted = messy.read_text()
    assert "    context = 64  # c\n" in formatted and "    block b {\n" in formatted
    assert archc("fmt", "--check", messy).returncode == 0
    assert archc("fmt", "--check", *sorted(EXAMPLES.glob("*.arch"))).returncode == 0


def test_graph(tmp_path):
    r = archc("graph", EXAMPLES / "jamba.arch", "-o", tmp_path / "j.dot")
    assert r.returncode == 0
    dot = (tmp_path / "j.dot").read_text()
    assert "× 4 (period of 8)" in dot
    assert archc("graph", EXAMPLES / "jamba.arch", "-o", tmp_path / "j.svg").returncode == 0  # no Graphviz needed
    assert "× 4 (period of 8)" in (tmp_path / "j.svg").read_text()
    if shutil.which("dot"):
        assert archc("graph", EXAMPLES / "jamba.arch", "-o", tmp_path / "g.svg", "--engine", "dot").returncode == 0
        assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")


def test_import_hf(tmp_path):
    pytest.importorskip("transformers")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "mistral", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                  "max_position_embeddings": 64, "sliding_window": 8}))
    out = tmp_path / "m.arch"
    assert archc("import-hf", config, "-o", out, "--name", "imported").returncode == 0
    assert archc("check", out).returncode == 0
    assert "attention = gqa(heads = 4, kv_heads = 2, window = 8)" in out.read_text()


def test_real_runs_are_safe_for_ci(tmp_path):
    """The whole process: hostile file names cannot forge GitHub commands, and every corpus
    input exits cleanly."""
    from .test_fuzz import CORPUS

    forged = tmp_path / "evil\n::warning::injected.arch"
    forged.write_text((SPECS / "tiny_llama.arch").read_text().replace("kv_heads = 2", "kv_heads = 3"))
    r = archc("check", "--format", "github", forged)
    (line,) = r.stdout.splitlines()
    assert r.returncode == 1 and line.startswith("::error file=")
    assert "evil%0A%3A%3Awarning%3A%3Ainjected.arch,line=10,col=47::heads (4)" in line
    r = archc("check", *sorted(CORPUS.glob("*.arch")))
    assert r.returncode in (1, 2) and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-2000:]
    r = archc("stats", "--context", "-5", SPECS / "tiny_llama.arch")
    assert r.returncode == 2 and "usage:" in r.stderr
