"""Qwen3-Next from its published Hugging Face config: archlang's parameter count of the imported
spec equals transformers' (meta device, nothing downloaded), and its recurrent state is what the
Gated DeltaNet layers hold."""

import json
import warnings

import pytest
import torch

from archlang.api import compile_spec
from archlang.compiler.facts import compute_facts
from archlang.interop.hf import spec_from_config

from ..conftest import EXAMPLES

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# Qwen/Qwen3-Next-80B-A3B-Instruct's config.json (transformers 4.57 wrote it: legacy rope_theta and
# partial_rotary_factor at the top level, full_attention_interval instead of layer_types).
QWEN3_NEXT_80B_A3B = """{
  "architectures": ["Qwen3NextForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "full_attention_interval": 4,
  "head_dim": 256, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 5120, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_num_key_heads": 16,
  "linear_num_value_heads": 32, "linear_value_head_dim": 128, "max_position_embeddings": 262144,
  "mlp_only_layers": [], "model_type": "qwen3_next", "moe_intermediate_size": 512, "norm_topk_prob": true,
  "num_attention_heads": 16, "num_experts": 512, "num_experts_per_tok": 10, "num_hidden_layers": 48,
  "num_key_value_heads": 2, "output_router_logits": false, "partial_rotary_factor": 0.25, "rms_norm_eps": 1e-06,
  "rope_scaling": null, "rope_theta": 10000000, "router_aux_loss_coef": 0.001,
  "shared_expert_intermediate_size": 512, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.57.0.dev0", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
}"""


def hf_count(config) -> int:
    with torch.device("meta"):
        model = T.Qwen3NextForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_next") / "config.json"
    path.write_text(QWEN3_NEXT_80B_A3B)
    return spec_from_config(path, name="qwen3_next_80b_a3b")


def test_qwen3_next_80b_a3b_parameter_count(imported):
    assert "layers = [linear_attention, linear_attention, linear_attention, full_attention] * 12" in imported
    assert "position = rope(theta = 10000000, dim = 64)" in imported  # a quarter of head_dim 256
    facts = compute_facts(compile_spec(imported).graph)
    values = {k: v for k, v in json.loads(QWEN3_NEXT_80B_A3B).items() if k != "model_type"}
    assert facts.params_total == hf_count(T.Qwen3NextConfig(**values)) == 79_674_391_296
    assert 3.8e9 < facts.params_active < 3.9e9  # "A3B": about 3 billion active besides the embeddings


def test_the_example_is_the_published_model(imported):
    ours = compute_facts(compile_spec(EXAMPLES / "qwen3_next_80b_a3b.arch").graph)
    theirs = compute_facts(compile_spec(imported).graph)
    assert (ours.params_total, ours.params_active, ours.flops_per_token) == \
        (theirs.params_total, theirs.params_active, theirs.flops_per_token)


def test_recurrent_state_is_the_gated_deltanet_layers(imported):
    facts = compute_facts(compile_spec(imported).graph)  # bf16
    # 36 layers: 32 value heads · 128 · 128 in float32, and the conv window of
    # 2 · 16 · 128 + 32 · 128 = 8192 channels · 3 taps in bf16
    assert facts.ssm_state_bytes_per_sequence == 36 * (32 * 128 * 128 * 4 + 8192 * 3 * 2)
