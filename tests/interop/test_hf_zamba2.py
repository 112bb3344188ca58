"""The zamba2 family against transformers' Zamba2ForCausalLM: logits with every weight perturbed
(LoRA adapters and the per-use projections included), cached greedy decoding, export and
from_pretrained, the published Zamba2-2.7B parameter count, and the refusals.

transformers' Zamba2 clamps dt below at time_step_min in its chunked prefill but not in its
one-token step; with perturbed weights softplus(dt + dt_bias) stays far above 0.001, so the clamp
never bites here and both of its paths compute the same function as archlang's."""

import functools
import warnings

import pytest
import torch

from archlang.api import compile_spec
from archlang.compiler.facts import compute_facts
from archlang.interop.hf import from_hf, spec_from_config
from archlang.spec.errors import ArchError

from .test_hf_parity import perturb

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_attention_heads=4, max_position_embeddings=64,
            mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, n_mamba_heads=4, chunk_size=8, adapter_rank=4,
            pad_token_id=0)
CASES = {
    # two shared blocks in turn, a hybrid first layer (its stream is the embeddings), adapters on q, k, v
    # and gate_up, RoPE, biases, B and C in two groups, 13 tokens over chunks of 8, an untied head
    "zamba2": dict(TINY, layers_block_type=["hybrid", "mamba", "hybrid", "mamba", "mamba", "hybrid", "hybrid", "mamba"],
                   num_hidden_layers=8, num_mem_blocks=2, use_shared_attention_adapter=True, use_mem_rope=True,
                   add_bias_linear=True,
                   mamba_ngroups=2, rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    # one shared block, adapters on gate_up only, no positions, GQA, tanh GELU
    "zamba2-one-block": dict(TINY, layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], num_hidden_layers=4,
                             num_mem_blocks=1, num_key_value_heads=2, hidden_act="gelu_pytorch_tanh"),
    # untied: transformers then ties no shared block either, here one block per hybrid layer; an untied head
    "zamba2-untied": dict(TINY, layers_block_type=["hybrid", "mamba", "hybrid"], num_hidden_layers=3,
                          num_mem_blocks=2, tie_word_embeddings=False),
}

# Zyphra/Zamba2-2.7B's config.json (transformers 5.23 reads the same keys; the last row holds keys it
# derives or no longer reads): 54 layers, hybrid at 6, 12, ..., 42, 47 and 51 over two shared blocks,
# Mamba-2 of 80 heads of 64 (d_state 64), 32 attention heads of 160 over 2 · 2560, no RoPE.
ZAMBA2_2_7B = dict(
    model_type="zamba2", vocab_size=32000, hidden_size=2560, intermediate_size=10240, num_hidden_layers=54,
    layers_block_type=(["mamba"] + (["mamba"] * 5 + ["hybrid"]) * 7 + ["mamba"] * 4 + ["hybrid"] + ["mamba"] * 3
                       + ["hybrid"] + ["mamba"] * 2),
    mamba_d_state=64, mamba_d_conv=4, mamba_expand=2, mamba_ngroups=1, n_mamba_heads=80, chunk_size=256,
    use_conv_bias=True, add_bias_linear=False, hidden_act="gelu", num_attention_heads=32, num_key_value_heads=32,
    num_mem_blocks=2, use_shared_attention_adapter=False, adapter_rank=128, use_mem_rope=False,
    max_position_embeddings=4096, rms_norm_eps=1e-5, time_step_min=0.001, time_step_max=0.1, time_step_floor=1e-4,
    use_long_context=False, tie_word_embeddings=True, num_logits_to_keep=1, use_mamba_kernels=True,
    use_mem_eff_path=False, attention_dropout=0.0, initializer_range=0.02, pad_token_id=0, bos_token_id=1,
    eos_token_id=2, rope_theta=10000, dtype="bfloat16",
    ffn_hidden_size=10240, use_shared_mlp_adapter=True, time_step_limit=None, attention_head_dim=160,
    attention_hidden_size=5120, kv_channels=80, num_query_groups=32, mamba_headdim=64,
    hybrid_layer_ids=[6, 12, 18, 24, 30, 36, 42, 47, 51])


def hf_model(case):
    config = T.Zamba2Config(**CASES[case])
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return perturb(T.Zamba2ForCausalLM(config)).eval()


@functools.lru_cache(maxsize=None)  # the tests only read the pair
def pair(case):
    hf = hf_model(case)
    return hf, from_hf(hf).eval()


@pytest.mark.parametrize("case", [c if c != "zamba2-untied" else pytest.param(c, marks=pytest.mark.slow)
                                  for c in sorted(CASES)])
def test_logits_match(case):
    hf, ours = pair(case)
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_every_weight_has_its_place_and_the_uses_differ():
    """Each use's adapters and projection are their own tensors: perturbed, they differ."""
    hf, ours = pair("zamba2")
    spec = spec_from_config(hf.config)
    # HF's hybrid layers 0, 2, 5, 6 are our shared-block layers 0, 3, 7, 9, each before its Mamba-2 layer
    layers = "shared0, mamba, mamba, shared1, mamba, mamba, mamba, shared0, mamba, shared1, mamba, mamba"
    assert f"layers = [{layers}]" in spec
    state = ours.state_dict()
    first, third = state["layers.0.hybrid_proj.weight.0"], state["layers.0.hybrid_proj.weight.7"]
    assert not torch.equal(first, third)
    assert torch.equal(third, hf.model.layers[5].linear.weight)
    assert torch.equal(state["layers.0.q_lora.A.7"], hf.model.layers[0].shared_transformer.self_attn
                       .linear_q_adapter_list[2][0].weight)
    assert ours.layers[7] is ours.layers[0] and ours.layers[9] is ours.layers[3]


@pytest.mark.parametrize("case", ["zamba2-one-block", pytest.param("zamba2", marks=pytest.mark.slow)])
def test_cached_greedy_generation_matches(case):
    hf, ours = pair(case)
    prompt = torch.randint(1, 97, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    assert torch.equal(ours.generate(prompt, 10), ref)


def test_published_zamba2_2_7b_parameter_count():
    spec = spec_from_config(dict(ZAMBA2_2_7B), name="zamba2_2_7b")
    ours = compute_facts(compile_spec(spec).graph).params_total
    config = T.Zamba2Config(**{k: v for k, v in ZAMBA2_2_7B.items() if k != "model_type"})
    with torch.device("meta"):
        hf = T.Zamba2ForCausalLM(config)
    assert ours == sum(p.numel() for p in hf.parameters())  # tied weights once


@pytest.mark.parametrize("key,value", [
    ("num_key_value_heads", 2),  # with the attention adapters, whose k and v are 2 · hidden_size wide
    ("layers_block_type", ["mamba", "attention"]),
    ("hidden_act", "softplus"),
    ("tie_word_embeddings", False),  # two blocks over four hybrid layers, which transformers would not share
])
def test_what_archlang_cannot_compute_is_refused_naming_the_key(key, value):
    config = dict(CASES["zamba2"], model_type="zamba2", **{key: value})
    if key == "layers_block_type":
        config["num_hidden_layers"] = len(value)
    with pytest.raises(ArchError, match=key):
        spec_from_config(config)


def test_default_rope_turns_whole_heads_whatever_partial_rotary_factor_says():
    """Zamba2's own default RoPE never reads partial_rotary_factor: it rotates all head_dim channels."""
    kwargs = dict(CASES["zamba2"], rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                                    "partial_rotary_factor": 0.5})
    config = T.Zamba2Config(**kwargs)
    rotary = T.models.zamba2.modeling_zamba2.Zamba2RotaryEmbedding(config)
    assert rotary.inv_freq.numel() == config.attention_head_dim // 2
    assert "position = rope(theta = 500)\n" in spec_from_config(config)


def test_export_refuses_shared_blocks_out_of_turn():
    from archlang.api import load_model
    from archlang.interop.hf_export import export_config

    spec = spec_from_config(T.Zamba2Config(**CASES["zamba2"]))
    spec = spec.replace("layers = [shared0, mamba, mamba, shared1,", "layers = [shared1, mamba, mamba, shared0,")
    with pytest.raises(ArchError, match="in turn"):
        export_config(load_model(spec), "zamba2")
