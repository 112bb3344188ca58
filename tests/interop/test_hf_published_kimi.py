"""Kimi Linear from its published Hugging Face config: archlang's parameter count of the imported
spec equals transformers' (meta device, nothing downloaded), its recurrent state is what the KDA
layers hold, and the layer lists of Moonshot's linear_attn_config place the layers."""

import json
import warnings

import pytest
import torch

from archlang.api import compile_spec
from archlang.compiler.facts import compute_facts
from archlang.interop.hf import spec_from_config
from archlang.spec import ArchError

from ..conftest import EXAMPLES

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# moonshotai/Kimi-Linear-48B-A3B-Instruct's config.json (Moonshot's own code wrote it: KDA's settings and
# the 1-based layer lists in linear_attn_config, DeepSeek-V3's routing under Moonshot's names).
KIMI_LINEAR_48B_A3B = """{
  "architectures": ["KimiLinearForCausalLM"], "bos_token_id": 163584, "dtype": "bfloat16", "eos_token_id": 163586,
  "first_k_dense_replace": 1, "head_dim": 72, "hidden_act": "silu", "hidden_size": 2304, "initializer_range": 0.02,
  "intermediate_size": 9216, "is_linear_attn": true, "kv_lora_rank": 512,
  "linear_attn_config": {"full_attn_layers": [4, 8, 12, 16, 20, 24, 27], "head_dim": 128,
                         "kda_layers": [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26],
                         "num_heads": 32, "short_conv_kernel_size": 4},
  "mla_use_nope": true, "model_max_length": 1048576, "model_type": "kimi_linear", "moe_intermediate_size": 1024,
  "moe_layer_freq": 1, "moe_renormalize": true, "moe_router_activation_func": "sigmoid", "num_attention_heads": 32,
  "num_expert_group": 1, "num_experts": 256, "num_experts_per_token": 8, "num_hidden_layers": 27,
  "num_key_value_heads": 32, "num_nextn_predict_layers": 0, "num_shared_experts": 1, "pad_token_id": 163839,
  "q_lora_rank": null, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-05,
  "rope_scaling": null, "rope_theta": 10000.0, "routed_scaling_factor": 2.446, "tie_word_embeddings": false,
  "topk_group": 1, "use_cache": true, "v_head_dim": 128, "vocab_size": 163840
}"""


def hf_count(config) -> int:
    with torch.device("meta"):
        model = T.KimiLinearForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    path = tmp_path_factory.mktemp("kimi_linear") / "config.json"
    path.write_text(KIMI_LINEAR_48B_A3B)
    return spec_from_config(path, name="kimi_linear_48b_a3b")


def test_kimi_linear_48b_a3b_parameter_count(imported):
    assert "ssm = kda(heads = 32, head_dim = 128, conv_size = 4, norm_eps = 1e-05)" in imported
    assert "mla(heads = 32, kv_lora_rank = 512, rope_head_dim = 64, nope_head_dim = 128, v_head_dim = 128)" in imported
    assert "position" not in imported  # NoPE everywhere
    facts = compute_facts(compile_spec(imported).graph)
    values = {k: v for k, v in json.loads(KIMI_LINEAR_48B_A3B).items() if k != "model_type"}
    assert facts.params_total == hf_count(T.KimiLinearConfig(**values)) == 49_122_675_072
    assert 2.5e9 < facts.params_active < 3.5e9  # "A3B"


def test_the_example_is_the_published_model(imported):
    ours = compute_facts(compile_spec(EXAMPLES / "kimi_linear_48b_a3b.arch").graph)
    theirs = compute_facts(compile_spec(imported).graph)
    assert (ours.params_total, ours.params_active, ours.flops_per_token, ours.ssm_state_bytes_per_sequence) == \
        (theirs.params_total, theirs.params_active, theirs.flops_per_token, theirs.ssm_state_bytes_per_sequence)


def test_linear_attn_config_places_the_layers(imported):
    layers = imported.split("layers = [")[1].split("]")[0].split(", ")
    attn = [i + 1 for i, kind in enumerate(layers) if kind == "attn"]
    assert attn == [4, 8, 12, 16, 20, 24, 27] and layers[0] == "linear_dense"  # 1-based, as the config numbers them


def test_recurrent_state_is_the_kda_layers(imported):
    facts = compute_facts(compile_spec(imported).graph)  # bf16
    # 20 KDA layers: 32 heads · 128 · 128 in float32, and the conv window of 3 · 32 · 128 channels · 3 taps in bf16
    assert facts.ssm_state_bytes_per_sequence == 20 * (32 * 128 * 128 * 4 + 3 * 32 * 128 * 3 * 2)


@pytest.mark.parametrize("key,value,match", [
    ("mla_use_nope", False, "no RoPE"),
    ("moe_router_activation_func", "softmax", "sigmoid"),
    ("hidden_act", "gelu", "silu"),
    ("attention_bias", True, "no biases"),
    ("num_key_value_heads", 8, "one key/value head per query head"),
    # layer 4 in both lists: transformers would silently make it a KDA layer
    ("linear_attn_config", {"full_attn_layers": [4], "kda_layers": list(range(1, 28)), "num_heads": 32,
                            "head_dim": 128, "short_conv_kernel_size": 4}, "every layer once"),
    ("linear_attn_config", {"num_heads": 32, "expand_v": 2}, "expand_v"),
])
def test_values_archlang_cannot_express_are_refused_by_name(tmp_path, key, value, match):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(json.loads(KIMI_LINEAR_48B_A3B), **{key: value})))
    with pytest.raises(ArchError, match=match) as err:
        spec_from_config(path)
    assert repr(key) in str(err.value)
