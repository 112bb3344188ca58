"""Logit parity with Hugging Face transformers models holding the same (random) weights, float32,
atol 1e-4. The HF models are tiny random configs: nothing is downloaded."""

import warnings

import pytest
import torch

from archlang.interop.hf import from_hf, spec_from_config

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)

CASES = {
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, SMALL),
    "llama3-scaled-rope": (T.LlamaConfig, T.LlamaForCausalLM, dict(SMALL, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "llama-linear-rope": (T.LlamaConfig, T.LlamaForCausalLM, dict(SMALL, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(SMALL, sliding_window=5)),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, SMALL),
    "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, dict(SMALL, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM, dict(SMALL, num_experts=4, num_experts_per_tok=2,
                                                                 moe_intermediate_size=16, shared_expert_intermediate_size=24)),
    "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM, dict(SMALL, head_dim=8, sliding_window=5, query_pre_attn_scalar=8)),
    "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    "jamba": (T.JambaConfig, T.JambaForCausalLM, dict(SMALL, num_hidden_layers=4, num_experts=4, attn_layer_period=2,
                                                      attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                                                      mamba_dt_rank=4)),
    "bert": (T.BertConfig, T.BertModel, dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=64)),
}


def _pair(case):
    config_cls, model_cls, kwargs = CASES[case]
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"
    hf = model_cls(config).eval()
    return hf, from_hf(hf).eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match(case):
    hf, ours = _pair(case)
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        ref = hf(ids)
        got = ours(ids)
    if case == "bert":
        torch.testing.assert_close(got[0], ref.last_hidden_state, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[1], ref.pooler_output, atol=1e-4, rtol=1e-4)
    else:
        torch.testing.assert_close(got, ref.logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["llama", "mistral", "gemma2"])
def test_greedy_generation_matches(case):
    hf, ours = _pair(case)
    prompt = torch.randint(1, 97, (1, 6))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 10), ref)


def test_imported_spec_is_a_readable_spec():
    config = T.MixtralConfig(**CASES["mixtral"][2])
    text = spec_from_config(config, name="tiny_mixtral")
    assert "ffn = moe(experts = 4, top_k = 2, expert = swiglu(hidden = 48))" in text
    assert "layers = layer * 2" in text
