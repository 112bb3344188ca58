"""Facts of multi-token prediction: DeepSeek-V3 with its MTP module counts what its checkpoint's
layer 61 holds, and the module stays out of the forward's FLOPs and cache."""

import os
import subprocess
import sys

import pytest
import torch

from archlang.api import compile_spec
from archlang.compiler.facts import compute_facts

from ..conftest import EXAMPLES, ROOT, SPECS
from .test_facts import hf_model


@pytest.mark.slow
def test_deepseek_v3_mtp_counts_one_moe_layer_its_projection_and_norms(tmp_path):
    text = (EXAMPLES / "deepseek_v3.arch").read_text()
    spec = tmp_path / "dsv3_mtp.arch"
    spec.write_text(text.replace("    final_norm = rmsnorm(eps = eps)\n",
                                 "    final_norm = rmsnorm(eps = eps)\n    mtp = mtp(depth = 1, block = moe)\n"))
    plain = compute_facts(compile_spec(EXAMPLES / "deepseek_v3.arch").graph)
    facts = compute_facts(compile_spec(spec).graph)
    cls, config = hf_model("deepseek_v3")
    with torch.device("meta"):
        layer = cls(config).model.layers[3]  # a MoE decoder layer, as model.layers.61 of the checkpoint is
    d = 7168
    # enorm, hnorm, shared_head.norm and eh_proj; the module's embed_tokens and shared_head.head
    # in the checkpoint are copies of the model's
    module = sum(p.numel() for p in layer.parameters()) + 3 * d + 2 * d * d
    assert facts.params_mtp == module == 11_610_067_968
    assert facts.params_total == plain.params_total + module
    assert facts.flops_per_token == plain.flops_per_token
    assert facts.kv_cache_bytes_at_context == plain.kv_cache_bytes_at_context


def test_stats_shows_how_mtp_is_counted():
    r = subprocess.run([sys.executable, "-m", "archlang", "stats", str(SPECS / "tiny_mtp.arch")], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "120"})
    facts = compute_facts(compile_spec(SPECS / "tiny_mtp.arch").graph)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if "mtp params" in l)
    assert "training only" in line and f"{facts.params_mtp:,}" in line
