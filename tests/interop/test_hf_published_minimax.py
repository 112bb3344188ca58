"""MiniMax from its published hyper-parameters: archlang's parameter count and caches of the
imported MiniMaxAI/MiniMax-Text-01 equal transformers' (meta device, nothing downloaded); the
config values archlang cannot compute are refused naming the key; spec values minimax lacks are
refused on export; the normed_residual placement and the residual weights are checked where the
spec writes them."""

import json
import warnings

import pytest
import torch

from archlang.api import compile_spec, load_model
from archlang.compiler.facts import compute_facts
from archlang.interop.hf import config_from_dict, spec_from_config
from archlang.interop.hf_export import export_config
from archlang.spec.errors import ArchError, ArchErrors

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# MiniMaxAI/MiniMax-Text-01's hyper-parameters in transformers' terms (the -hf port's keys): 80
# layers, a softmax-attention layer after every seven lightning layers, 32 experts of which 2 are
# chosen, every residual add weighing its normalised input by alpha = (2 · 80)^0.25 ≈ 3.5566.
ALPHA = 3.5565588200778455
MINIMAX_TEXT_01 = {
    "model_type": "minimax", "vocab_size": 200064, "hidden_size": 6144, "intermediate_size": 9216,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128,
    "hidden_act": "silu", "max_position_embeddings": 10240000, "rms_norm_eps": 1e-05, "tie_word_embeddings": False,
    "num_local_experts": 32, "num_experts_per_tok": 2, "block_size": 256, "sliding_window": None,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0},
    "layer_types": ["linear_attention"] * 7 + ["full_attention"] + (["linear_attention"] * 7 + ["full_attention"]) * 9,
    "full_attn_alpha_factor": ALPHA, "full_attn_beta_factor": 1.0, "linear_attn_alpha_factor": ALPHA,
    "linear_attn_beta_factor": 1.0, "mlp_alpha_factor": ALPHA, "mlp_beta_factor": 1.0, "dtype": "bfloat16",
    "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0, "output_router_logits": False,
    "initializer_range": 0.02,
}


def hf_count(values: dict) -> int:
    with torch.device("meta"):
        model = T.MiniMaxForCausalLM(config_from_dict(values))
    return sum(p.numel() for p in model.parameters())


def test_minimax_text_01_parameter_count_and_caches(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(MINIMAX_TEXT_01))
    text = spec_from_config(path, name="minimax_text_01")
    assert "ssm = lightning(heads = 64, key_dim = 128, chunk = 256)" in text
    assert "mixer_residual = [3.5565588200778455, 1]" in text
    assert "layers = [linear, linear, linear, linear, linear, linear, linear, full] * 10" in text
    facts = compute_facts(compile_spec(text).graph)
    assert facts.params_total == hf_count(MINIMAX_TEXT_01)
    assert round(facts.params_total / 1e9) == 456  # MiniMax's published 456B
    # and 45.9B active per token, which MiniMax counts without the embedding and the output head
    assert round((facts.params_active - 2 * 200064 * 6144) / 1e9, 1) == 45.9
    # 70 lightning layers, each a 128 x 128 float32 state per head
    assert facts.ssm_state_bytes_per_sequence == 70 * 64 * 128 * 128 * 4
    # 10 attention layers of 8 key/value heads of 128 channels, keys and values in bfloat16
    assert facts.kv_cache_bytes_per_token == 10 * 2 * 8 * 128 * 2


TINY = dict(model_type="minimax", vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
            max_position_embeddings=64)


@pytest.mark.parametrize("key,value,needle", [
    ("hidden_act", "gelu", "silu"),
    ("router_jitter_noise", 0.1, "jitter"),
    ("output_router_logits", True, "load-balancing"),
    ("mlp_alpha_factor", -1.0, "positive"),
    ("linear_attn_beta_factor", 0, "positive"),
    ("layer_types", ["linear_attention", "moe"], "not mapped"),
])
def test_values_archlang_cannot_compute_are_refused_naming_the_key(key, value, needle):
    with pytest.raises(ArchError) as err:
        spec_from_config(dict(TINY, **{key: value}))
    assert repr(key) in err.value.message and needle in err.value.message


def test_partial_rope_is_refused():
    """transformers' MiniMax rotates whole heads whatever partial_rotary_factor says; archlang would
    rotate part of each head, so the key is refused rather than mapped either way."""
    with pytest.raises(ArchError, match="partial_rotary_factor"):
        spec_from_config(dict(TINY, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                     "partial_rotary_factor": 0.5}))


SPEC = """model m {
    vocab = 97
    d_model = 32
    context = 64
    dtype = fp32
    position = rope(theta = 10000)
    final_norm = rmsnorm(eps = 1e-5)
    block linear {
        norm = rmsnorm(eps = 1e-5, placement = normed_residual)
        ssm = LIGHTNING
        ffn = moe(experts = 4, top_k = 2, expert = swiglu(hidden = 24))
        mixer_residual = [2, 1]
    }
    block full {
        norm = rmsnorm(eps = 1e-5, placement = normed_residual)
        attention = ATTENTION
        ffn = moe(experts = 4, top_k = 2, expert = swiglu(hidden = 24))
    }
    layers = [linear, full]
}
"""
GOOD = {"LIGHTNING": "lightning(heads = 4)", "ATTENTION": "gqa(heads = 4, kv_heads = 2)"}


def _spec(**edits) -> str:
    text = SPEC
    for k, v in {**GOOD, **edits}.items():
        text = text.replace(k, v)
    return text


def test_the_good_spec_exports():
    assert export_config(load_model(_spec()), "minimax").model_type == "minimax"


@pytest.mark.parametrize("edit,needle", [
    ({"LIGHTNING": "lightning(heads = 2)"}, "num_attention_heads and head_dim set both"),
    ({"LIGHTNING": "lightning(heads = 4, act = gelu)"}, "shares hidden_act"),
    ({"LIGHTNING": "lightning(heads = 4, value_dim = 16)"}, "one head_dim"),
    ({"ATTENTION": "gqa(heads = 4, kv_heads = 2, bias = true)"}, "biases"),
    ({"normed_residual": "pre"}, "placement = normed_residual"),
])
def test_spec_values_minimax_lacks_are_refused_on_export(edit, needle):
    with pytest.raises(ArchError) as err:
        export_config(load_model(_spec(**edit)), "minimax")
    assert needle in err.value.message


@pytest.mark.parametrize("text,needle", [
    ("block b {\n        norm = rmsnorm()\n        attention = mha(heads = 4)\n        ffn_residual = [2, 1]\n    }",
     "ffn_residual weighs a residual add"),
    ("block b {\n        norm = rmsnorm()\n        attention = mha(heads = 4)\n        ffn = mlp(hidden = 8)\n"
     "        parallel = true\n        mixer_residual = [2, 1]\n    }", "not implemented on a parallel block"),
    ("block b {\n        norm = rmsnorm()\n        attention = mha(heads = 4)\n        mixer_residual = [0, 1]\n    }",
     "greater than 0"),
])
def test_residual_weights_are_refused_where_they_mean_nothing(text, needle):
    spec = f"model m {{\n    vocab = 97\n    d_model = 32\n    context = 64\n    {text}\n    layers = b * 2\n}}\n"
    with pytest.raises((ArchError, ArchErrors)) as err:
        load_model(spec)
    assert needle in str(err.value)


def test_unit_residual_weights_are_the_plain_add():
    """[1, 1] adds nothing to the IR: the same graph as writing no weights."""
    from archlang.interop.hf_export import _ir_text

    plain = load_model(_spec().replace("        mixer_residual = [2, 1]\n", ""))
    unit = load_model(_spec().replace("mixer_residual = [2, 1]", "mixer_residual = [1, 1]"))
    weighed = load_model(_spec())
    assert _ir_text(unit) == _ir_text(plain) != _ir_text(weighed)
