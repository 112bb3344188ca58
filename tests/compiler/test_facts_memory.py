"""The memory facts `archc stats` prints: the weights in the spec's dtype and one sequence's cache
at the full context."""

import json
import subprocess
import sys
from pathlib import Path

from archlang.api import compile_spec
from archlang.compiler.facts import compute_facts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_weight_bytes_follow_the_dtype():
    g = compile_spec(EXAMPLES / "llama3_8b.arch").graph
    bf16, fp32 = compute_facts(g), compute_facts(g, dtype="float32")
    assert bf16.weight_bytes == 2 * 8_030_261_248  # Llama-3-8B's published count, two bytes each
    assert fp32.weight_bytes == 2 * bf16.weight_bytes


def test_cache_at_context_holds_kv_and_recurrent_state():
    facts = compute_facts(compile_spec(EXAMPLES / "jamba.arch").graph)
    # 4 attention layers × 8 kv heads × 128 × (k and v) × 2 bytes × 262,144 tokens, plus the Mamba states
    assert facts.kv_cache_bytes_at_context == 4 * 8 * 128 * 2 * 2 * 262_144
    assert facts.cache_bytes_at_context == facts.kv_cache_bytes_at_context + facts.ssm_state_bytes_per_sequence > 0


def test_stats_prints_them():
    run = subprocess.run([sys.executable, "-m", "archlang", "stats", str(EXAMPLES / "jamba.arch")],
                         capture_output=True, text=True, env={"COLUMNS": "120", "PATH": ""})
    assert run.returncode == 0, run.stderr
    assert "weights (bfloat16)" in run.stdout and "103,140,646,656 B" in run.stdout
    assert "cache / sequence at 262,144 tokens" in run.stdout
    as_json = json.loads(subprocess.run([sys.executable, "-m", "archlang", "stats", "--json",
                                         str(EXAMPLES / "jamba.arch")], capture_output=True, text=True).stdout)
    assert as_json["weight_bytes"] == 2 * as_json["params_total"]
