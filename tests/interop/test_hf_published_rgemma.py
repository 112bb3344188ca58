"""RecurrentGemma from its published Hugging Face config: archlang's parameter count and recurrent
state of the imported google/recurrentgemma-2b equal transformers' (meta device, nothing
downloaded); generation far past the attention window equals transformers'; the config values
archlang cannot compute are refused naming the key; spec values recurrent_gemma lacks are
refused on export."""

import json
import warnings

import pytest
import torch

from archlang.api import compile_spec, load_model
from archlang.compiler.facts import compute_facts
from archlang.interop.hf import from_hf, spec_from_config
from archlang.interop.hf_export import export_config
from archlang.spec.errors import ArchError

from .test_hf_parity import perturb

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# google/recurrentgemma-2b's config.json: 26 layers cycling (recurrent, recurrent, attention), an
# RG-LRU as wide as the model, local MQA over 2048 tokens, an MLP of intermediate_size / 2.
RECURRENTGEMMA_2B = {
    "architectures": ["RecurrentGemmaForCausalLM"], "model_type": "recurrent_gemma", "attention_bias": False,
    "attention_window_size": 2048, "block_types": ["recurrent", "recurrent", "attention"], "bos_token_id": 2,
    "conv1d_width": 4, "embeddings_scale_by_sqrt_dim": True, "eos_token_id": 1,
    "final_w_init_variance_scale": 0.07692307692307693, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 2560, "intermediate_size": 15360, "logits_soft_cap": 30.0, "lru_width": 2560,
    "num_attention_heads": 10, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0,
    "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "torch_dtype": "float32",
    "transformers_version": "4.40.0.dev0", "vocab_size": 256000, "w_init_variance_scale": 0.01,
}


def hf_count(config) -> int:
    with torch.device("meta"):
        model = T.RecurrentGemmaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())  # the tied head is the embedding's tensor, once


def _config(values: dict):
    from archlang.interop.hf import config_from_dict

    return config_from_dict(dict(values))


def test_recurrentgemma_2b_parameter_count_and_state(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(RECURRENTGEMMA_2B))
    text = spec_from_config(path, name="recurrentgemma_2b")
    assert "ssm = rglru(heads = 10, conv_size = 4)" in text
    assert "attention = mqa(heads = 10, out_bias = true, window = 2048)" in text
    assert "ffn = geglu(hidden = 7680, act = gelu_tanh, bias = true)" in text
    assert "embedding_scale = 50.5" in text  # sqrt(2560) = 50.596 held in bfloat16
    assert "position = rope(theta = 10000, dim = 128)" in text  # half of each 256-wide head
    facts = compute_facts(compile_spec(text).graph)
    assert facts.params_total == hf_count(_config(RECURRENTGEMMA_2B)) == 2_682_862_080
    # 18 recurrent layers: a 3-token conv window of 2560 channels (float32) and a float32 state of 2560
    assert facts.ssm_state_bytes_per_sequence == 18 * (3 * 2560 * 4 + 2560 * 4)
    # 8 attention layers of one key/value head of 256 channels, keys and values in float32
    assert facts.kv_cache_bytes_per_token == 8 * 2 * 256 * 4


TINY = dict(model_type="recurrent_gemma", vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=1, attention_window_size=3, conv1d_width=3,
            block_types=["recurrent", "attention"], pad_token_id=0)


def test_generation_far_past_the_window_matches_transformers():
    """30 new tokens after a 5-token prompt, with a 3-token window: transformers' ring buffer wraps
    many times; archlang's cache keeps the last window of keys and the recurrent state."""
    config = _config(TINY)
    config._attn_implementation = "eager"
    torch.manual_seed(3)
    hf = perturb(T.RecurrentGemmaForCausalLM(config), std=0.3).eval()
    ours = from_hf(hf).eval()
    prompt = torch.randint(1, 97, (2, 5))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    got = ours.generate(prompt, 30)
    assert torch.equal(got, ref)
    assert len(set(ref[0, 5:].tolist())) > 3  # not a constant continuation that any cache would give


@pytest.mark.parametrize("key,value,needle", [
    ("block_types", ["recurrent", "mlp"], "'recurrent' and 'attention'"),
    ("embeddings_scale_by_sqrt_dim", False, "always scales"),
    ("logits_soft_cap", 0.0, "positive"),
    ("hidden_activation", "gelu_10", "activations are"),
])
def test_values_archlang_cannot_compute_are_refused_naming_the_key(key, value, needle):
    with pytest.raises(ArchError) as err:
        spec_from_config(dict(TINY, **{key: value}))
    assert repr(key) in err.value.message and needle in err.value.message


def test_training_only_keys_change_nothing():
    assert spec_from_config(dict(TINY, w_init_variance_scale=0.5, final_w_init_variance_scale=0.1)) == \
        spec_from_config(dict(TINY))


def test_lru_width_other_than_d_model_is_written():
    text = spec_from_config(dict(TINY, lru_width=48))
    assert "ssm = rglru(heads = 4, width = 48, conv_size = 3)" in text


SPEC = """model m {
    vocab = 97
    d_model = 32
    context = 64
    dtype = fp32
    tie_embeddings = true
    embedding_scale = SCALE
    logit_softcap = 30
    position = rope(theta = 10000, dim = 4)
    final_norm = rmsnorm(eps = 1e-6, unit_offset = true)
    block recurrent {
        norm = rmsnorm(eps = 1e-6, unit_offset = true)
        ssm = rglru(heads = RHEADS, act = RACT)
        ffn = geglu(hidden = 24, act = gelu_tanh, bias = true)
    }
    block local {
        norm = rmsnorm(eps = 1e-6, unit_offset = true)
        attention = mqa(heads = 4, out_bias = OUT_BIAS, WINDOW)
        ffn = geglu(hidden = 24, act = gelu_tanh, bias = true)
    }
    layers = [recurrent, local, recurrent]
}
"""
GOOD = {"SCALE": "5.65625", "RHEADS": "4", "RACT": "gelu_tanh", "OUT_BIAS": "true", "WINDOW": "window = 3"}


def _spec(**edits) -> str:
    text = SPEC
    for k, v in {**GOOD, **edits}.items():
        text = text.replace(k, v)
    return text


def test_the_good_spec_exports():
    assert export_config(load_model(_spec()), "recurrent_gemma").model_type == "recurrent_gemma"


@pytest.mark.parametrize("edit,needle", [
    ({"SCALE": "5.656854249492381"}, "held in bfloat16"),  # the exact sqrt(32): transformers rounds it
    ({"RHEADS": "2"}, "num_attention_heads sets both"),
    ({"RACT": "silu"}, "one hidden_activation"),
    ({"OUT_BIAS": "false"}, "o_proj always has a bias"),
    ({"WINDOW": "bias = false"}, "local: it needs a window"),
])
def test_spec_values_recurrent_gemma_lacks_are_refused_on_export(edit, needle):
    with pytest.raises(ArchError) as err:
        export_config(load_model(_spec(**edit)), "recurrent_gemma")
    assert needle in err.value.message
