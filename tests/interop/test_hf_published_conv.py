"""LFM2 from published Hugging Face configs: archlang's parameter count and conv state of the
imported LiquidAI/LFM2-1.2B equal transformers' (meta device, nothing downloaded); the FFN width
rule against transformers' own Lfm2MLP; a left-padded batch against Lfm2ForCausalLM; the config
values archlang cannot compute are refused naming the key; spec values lfm2 lacks are refused on
export."""

import json
import warnings

import pytest
import torch

from archlang.api import compile_spec, load_model
from archlang.compiler.facts import compute_facts
from archlang.interop.hf import from_hf, spec_from_config
from archlang.interop.hf_export import export_config
from archlang.spec.errors import ArchError

from ..conftest import SPECS

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# LiquidAI/LFM2-1.2B's hyper-parameters (its config.json in transformers' terms: block_ff_dim is
# intermediate_size, tie_embedding tie_word_embeddings, rope_theta rope_parameters): 16 layers, the
# attention ones at full_attn_idxs, the rest gated short convolutions of 3 taps.
LFM2_1_2B = {
    "model_type": "lfm2", "vocab_size": 65536, "hidden_size": 2048, "intermediate_size": 12288,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
    "full_attn_idxs": [2, 5, 8, 10, 12, 14], "conv_L_cache": 3, "conv_bias": False, "norm_eps": 1e-05,
    "max_position_embeddings": 128000, "block_multiple_of": 256, "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": True, "tie_word_embeddings": True, "dtype": "bfloat16",
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0,
}
LFM2_1_2B_PARAMS = 1_170_340_608  # Liquid AI's published count


def hf_count(config) -> int:
    with torch.device("meta"):
        model = T.Lfm2ForCausalLM(config)
    return sum(p.numel() for p in model.parameters())  # the tied head is the embedding's tensor, once


def _config(values: dict):
    return T.Lfm2Config(**{k: v for k, v in values.items() if k != "model_type"})


def test_lfm2_1_2b_parameter_count_and_conv_state(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LFM2_1_2B))
    text = spec_from_config(path, name="lfm2_1_2b")
    # 2/3 of 12288, times 1.0, rounded up to 256
    assert "ffn = swiglu(hidden = 8192)" in text and "ssm = short_conv(kernel = 3)" in text
    assert "layers = [conv, conv, attn, conv, conv, attn, conv, conv, attn, conv, attn, conv, attn, conv, attn, conv]" \
        in text
    facts = compute_facts(compile_spec(text).graph)
    assert facts.params_total == hf_count(_config(LFM2_1_2B)) == LFM2_1_2B_PARAMS
    # ten conv layers, each keeping its last 2 inputs of 2048 channels in bfloat16
    assert facts.ssm_state_bytes_per_sequence == 10 * 2 * 2048 * 2
    # six attention layers of 8 key/value heads of 64 channels, keys and values in bfloat16
    assert facts.kv_cache_bytes_per_token == 6 * 2 * 8 * 64 * 2


# The keys Liquid AI's training code writes beside transformers' (none of which transformers reads).
TRAINING_KEYS = {"block_dim": 2048, "block_norm_eps": 1e-05, "block_use_swiglu": True, "block_use_xavier_init": True,
                 "block_mlp_init_scale": 1.0, "block_out_init_scale": 1.0, "conv_dim": 2048, "conv_dim_out": 2048,
                 "conv_use_xavier_init": True, "num_heads": 32, "theta": 1000000.0, "use_pos_enc": True}


def test_training_code_keys_change_nothing():
    assert spec_from_config(dict(LFM2_1_2B, **TRAINING_KEYS)) == spec_from_config(dict(LFM2_1_2B))


@pytest.mark.parametrize("intermediate,multiplier,multiple,auto", [
    (12288, 1.0, 256, True), (50, 1.5, 16, True), (100, 0.75, 24, True), (48, 1.5, 16, False),
    (6656, 1.0, 256, True),
])
def test_ffn_width_is_the_one_transformers_builds(intermediate, multiplier, multiple, auto):
    values = dict(model_type="lfm2", vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, layer_types=["conv", "full_attention"], intermediate_size=intermediate,
                  block_ffn_dim_multiplier=multiplier, block_multiple_of=multiple, block_auto_adjust_ff_dim=auto)
    with torch.device("meta"):
        width = T.Lfm2ForCausalLM(_config(values)).model.layers[0].feed_forward.w1.out_features
    assert f"ffn = swiglu(hidden = {width})" in spec_from_config(values)


SMALL = dict(model_type="lfm2", vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, layer_types=["conv", "full_attention", "conv"],
             max_position_embeddings=64)


@pytest.mark.parametrize("key,value,words", [
    ("layer_types", ["conv", "sliding_attention", "conv"], "layer type 'sliding_attention' is not mapped"),
    ("block_ffn_dim_multiplier", -1.0, "positive"),
    ("rope_parameters", {"rope_type": "su", "rope_theta": 1e6}, "'su'"),
])
def test_values_archlang_cannot_compute_are_refused_naming_the_key(key, value, words):
    with pytest.raises(ArchError) as info:
        spec_from_config(dict(SMALL, **{key: value}))
    assert repr(key) in info.value.message and words in info.value.message


def test_left_padding_matches_transformers():
    """A left-padded row's real tokens: the same logits as Lfm2ForCausalLM's with the same mask."""
    config = _config(dict(SMALL, conv_bias=False))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = T.Lfm2ForCausalLM(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = from_hf(hf).eval()
    ids = torch.randint(1, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, 4:], ref[1, 4:], atol=1e-4, rtol=1e-4)


LFM2_SPEC = """model m {
    vocab = 97
    d_model = 32
    context = 64
    dtype = fp32
    position = rope(theta = 10000)
    final_norm = rmsnorm(eps = 1e-5)
    block conv {
        norm = rmsnorm(eps = 1e-5)
        ssm = short_conv(SSM)
        ffn = swiglu(hidden = 48)
    }
    block attn {
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 4, kv_heads = 2, qk_norm = rmsnorm(eps = 1e-5))
        ffn = swiglu(hidden = 48)
    }
    layers = LAYERS
}
"""


@pytest.mark.parametrize("ssm,layers,needle", [
    ("bias = true", "[conv, attn]", "lfm2's conv_bias sets both"),
    ("kernel = 3", "conv * 2", "no attention layer"),
])
def test_spec_values_lfm2_lacks_are_refused_on_export(ssm, layers, needle):
    text = LFM2_SPEC.replace("SSM", ssm).replace("LAYERS", layers)
    if "attn" not in layers:  # RoPE is refused on a model of conv layers only
        text = text.replace("    position = rope(theta = 10000)\n", "")
    m = load_model(text)
    with pytest.raises(ArchError) as info:
        export_config(m, model_type="lfm2")
    assert needle in info.value.message


def test_convolutions_that_differ_are_refused_on_export():
    with pytest.raises(ArchError) as info:
        export_config(load_model(SPECS / "tiny_lfm2.arch"), model_type="lfm2")
    assert "short convolutions" in info.value.message
