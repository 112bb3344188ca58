"""DeepSeek-V3.2 (deepseek_v32) from its published config: the parameter count of the imported
spec equals transformers' on the meta device, its KV cache counts the indexer's keys, the
values archlang cannot compute are refused, and the parity cases are not vacuous."""

from __future__ import annotations

import warnings

import pytest
import torch

from archlang.api import compile_spec
from archlang.compiler.facts import compute_facts
from archlang.interop.hf import config_from_dict, from_hf, spec_from_config
from archlang.spec.errors import ArchError

from .test_hf_parity import CASES, hf_model

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# deepseek-ai/DeepSeek-V3.2-Exp's config.json (its fp8 quantization_config left out: storage, not function).
V32_EXP = {
    "architectures": ["DeepseekV32ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu",
    "hidden_size": 7168, "index_head_dim": 128, "index_n_heads": 64, "index_topk": 2048, "initializer_range": 0.02,
    "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v32",
    "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
    "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
    "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "tie_word_embeddings": False,
    "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "transformers_version": "4.44.2",
    "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
}


def _facts():
    return compute_facts(compile_spec(spec_from_config(dict(V32_EXP)), passes="").graph)


def test_params_total_equals_transformers_on_the_meta_device():
    config = config_from_dict(dict(V32_EXP))
    with torch.device("meta"):
        model = T.DeepseekV32ForCausalLM(config)
    expected = sum(p.numel() for p in model.parameters())
    facts = _facts()
    assert facts.params_total == expected
    # the indexers are in it: wq_b, wk, k_norm (weight and bias), weights_proj in each of 61 layers
    indexer = 64 * 128 * 1536 + 128 * 7168 + 2 * 128 + 64 * 7168
    indexers = sum(p.numel() for n, p in model.named_parameters() if ".indexer." in n)
    assert indexers == 61 * indexer
    assert facts.params_total > 671_000_000_000 + indexers - 10**9  # V3's 671B plus the indexers


def test_kv_cache_holds_the_latent_and_the_indexer_keys():
    """Per token and layer: the latent and shared rotary key (512 + 64), and the indexer's key
    (128), as transformers' DynamicIndexedLayer keeps them; bf16."""
    facts = _facts()
    assert facts.kv_cache_bytes_per_token == 61 * (512 + 64 + 128) * 2


def test_sparse_attention_flops_are_bounded_by_top_k():
    """At the full 160k context each query attends to at most 2048 keys: the attention's FLOPs
    grow with the context only through the indexer's scoring."""
    spec = spec_from_config(dict(V32_EXP))
    long = compute_facts(compile_spec(spec, passes="").graph).flops_per_token
    dense = compute_facts(compile_spec(spec.replace(", indexer = indexer(heads = 64, head_dim = 128, "
                                                    "top_k = 2048)", ""), passes="").graph).flops_per_token
    assert long < dense  # 2048 keys plus the indexer's light scoring, against ~80k keys per query


@pytest.mark.parametrize("overrides,key", [
    (dict(q_lora_rank=None), "q_lora_rank"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(layer_types=["full_attention"] * 61), "layer_types"),
    (dict(scoring_func="softmax"), "scoring_func"),
    (dict(num_key_value_heads=64), "num_key_value_heads"),
    (dict(moe_layer_freq=2), "moe_layer_freq"),
])
def test_values_archlang_cannot_compute_are_refused(overrides, key):
    with pytest.raises(ArchError) as err:
        spec_from_config({**V32_EXP, **overrides})
    assert key in str(err.value)


def test_a_narrow_indexer_head_is_refused():
    """The indexer rotates qk_rope_head_dim channels of its head: a narrower head is no model."""
    with pytest.raises(ArchError, match="indexer"):
        spec_from_config({**V32_EXP, "index_head_dim": 32})


def test_the_parity_case_attends_sparsely():
    """The deepseek_v32 parity case keeps 4 keys per query: with top-k at the length, the same
    weights give other logits, in transformers and in archlang alike."""
    sparse_hf = hf_model("deepseek_v32")
    config_cls, model_cls, kwargs = CASES["deepseek_v32"]
    dense_config = config_cls(**dict(kwargs, index_topk=64))
    dense_config._attn_implementation = "eager"
    dense_hf = model_cls(dense_config).eval()
    dense_hf.load_state_dict(sparse_hf.state_dict())
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = sparse_hf(ids).logits, dense_hf(ids).logits
        ours_sparse, ours_dense = from_hf(sparse_hf).eval()(ids), from_hf(dense_hf).eval()(ids)
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=1e-5, rtol=1e-5)  # 4 or fewer keys: nothing dropped
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-2
    torch.testing.assert_close(ours_sparse, a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours_dense, b, atol=1e-4, rtol=1e-4)
