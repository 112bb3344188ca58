"""The imported specs of well-known checkpoints have exactly HF's parameter count (models built on
the meta device from the published hyper-parameters, written out here: nothing is downloaded),
cached greedy generation equals transformers' for the tiny parity cases of these families, and
config values archlang cannot compute are refused by name."""

import warnings

import pytest
import torch

from archlang.api import compile_spec
from archlang.compiler import compute_facts
from archlang.interop.hf import spec_from_config
from archlang.spec.errors import ArchError

from .test_hf_parity import CASES, SMALL, _pair

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# model_type → (CausalLM class, the published config.json's architecture keys)
PUBLISHED = {
    "Qwen/Qwen3-30B-A3B": ("Qwen3MoeForCausalLM", dict(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
        moe_intermediate_size=768, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True,
        max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
        use_sliding_window=False, sliding_window=None, max_window_layers=48, attention_bias=False,
        torch_dtype="bfloat16")),
    "allenai/OLMoE-1B-7B-0924": ("OlmoeForCausalLM", dict(
        model_type="olmoe", vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8, norm_topk_prob=False,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, clip_qkv=None, attention_bias=False,
        tie_word_embeddings=False, output_router_logits=False, router_aux_loss_coef=0.01, pad_token_id=1,
        eos_token_id=50279, torch_dtype="bfloat16")),
    # its YaRN on the full layers changes no count (and its explicit attention_factor is refused today)
    "allenai/Olmo-3-1025-7B": ("Olmo3ForCausalLM", dict(
        model_type="olmo3", vocab_size=100278, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=65536, rms_norm_eps=1e-6,
        rope_theta=500000.0, sliding_window=4096, attention_bias=False, tie_word_embeddings=False,
        layer_types=["sliding_attention"] * 3 + ["full_attention"] + ["sliding_attention"] * 3 + ["full_attention"]
        + (["sliding_attention"] * 3 + ["full_attention"]) * 6, pad_token_id=100277, eos_token_id=100257,
        torch_dtype="bfloat16")),
    "LGAI-EXAONE/EXAONE-4.0-32B": ("Exaone4ForCausalLM", dict(
        model_type="exaone4", vocab_size=102400, hidden_size=5120, intermediate_size=27392, num_hidden_layers=64,
        num_attention_heads=40, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rms_norm_eps=1e-5, sliding_window=4096, sliding_window_pattern="LLLG",
        layer_types=(["sliding_attention"] * 3 + ["full_attention"]) * 16, tie_word_embeddings=False,
        rope_theta=1000000.0, rope_scaling={"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=1, eos_token_id=361, pad_token_id=0, torch_dtype="bfloat16")),
    "baidu/ERNIE-4.5-21B-A3B-PT": ("Ernie4_5_MoeForCausalLM", dict(
        model_type="ernie4_5_moe", vocab_size=103424, hidden_size=2560, intermediate_size=12288, num_hidden_layers=28,
        num_attention_heads=20, num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=True, use_bias=False, moe_num_experts=64, moe_k=6,
        moe_intermediate_size=1536, moe_num_shared_experts=2, moe_layer_start_index=1, moe_layer_end_index=27,
        moe_layer_interval=1, moe_norm_min=1e-12, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        torch_dtype="bfloat16")),
    # the keys of tencent/Hunyuan-A13B-Instruct's config.json that transformers' hunyuan_v1_moe reads
    "tencent/Hunyuan-A13B-Instruct": ("HunYuanMoEV1ForCausalLM", dict(
        model_type="hunyuan_v1_moe", vocab_size=128167, hidden_size=4096, intermediate_size=3072, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, num_experts=64, moe_topk=8,
        max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False,
        rope_scaling={"type": "dynamic", "alpha": 1000.0, "factor": 1.0, "beta_fast": 32, "beta_slow": 1,
                      "mscale": 1.0, "mscale_all_dim": 1.0},
        rope_theta=10000.0, torch_dtype="bfloat16")),
}


def _hf_count(name: str) -> int:
    cls_name, values = PUBLISHED[name]
    values = dict(values)
    config = T.AutoConfig.for_model(**values)
    with torch.device("meta"):
        model = getattr(T, cls_name)(config)
    # Tied weights once. ERNIE 4.5 keeps its router's correction bias as a frozen nn.Parameter
    # (DeepSeek-V3 the same state as a buffer): state, not a weight, which archlang never counts.
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_total_of_the_imported_spec_equals_transformers(name):
    spec = spec_from_config(dict(PUBLISHED[name][1]), name="published")
    facts = compute_facts(compile_spec(spec, passes="").graph)
    assert facts.params_total == _hf_count(name)


FAMILY_CASES = sorted(c for c in CASES if c.split("-")[0] in ("qwen3_moe", "olmoe", "olmo3", "exaone4", "ernie4_5_moe",
                                                                  "hunyuan_v1_moe"))


@pytest.mark.parametrize("case", FAMILY_CASES)
def test_greedy_generation_matches(case):
    hf, ours = _pair(case)
    prompt = torch.randint(1, 97, (1, 6))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    got = ours.generate(prompt, 10)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("model_type,overrides,key", [
    ("qwen3_moe", dict(output_router_logits=True), "output_router_logits"),
    ("qwen3_moe", dict(hidden_act="gelu"), "hidden_act"),
    ("olmoe", dict(clip_qkv=8.0), "clip_qkv"),
    ("olmoe", dict(head_dim=16), "head_dim"),
    ("olmo3", dict(layer_types=["sliding_attention", "chunked_attention"]), "layer_types"),
    ("exaone4", dict(sliding_window=None, layer_types=["sliding_attention", "full_attention"]), "layer_types"),
    ("ernie4_5_moe", dict(use_bias=True), "use_bias"),
    ("ernie4_5_moe", dict(output_router_logits=True), "output_router_logits"),
    ("hunyuan_v1_moe", dict(head_dim=8, num_experts=[4, 4], moe_topk=2), "num_experts"),
    ("hunyuan_v1_moe", dict(head_dim=8, num_experts=4, moe_topk=[2, 1, 2]), "moe_topk"),
    ("hunyuan_v1_moe", dict(head_dim=8, num_experts=4, moe_topk=2, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 1e4, "alpha": 10.0, "factor": 1.0, "high_freq_factor": 4.0}),
     "rope_parameters"),
    ("olmo3", dict(rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                                    "full_attention": {"rope_type": "su", "rope_theta": 1e4}}), "rope_parameters"),
])
def test_values_archlang_lacks_are_refused_by_name(model_type, overrides, key):
    with pytest.raises(ArchError) as err:
        spec_from_config({"model_type": model_type, **SMALL, **overrides})
    assert f"'{key}'" in err.value.message


@pytest.mark.parametrize("knob", ["correction_bias", "normalize_min"])
def test_ernie_routing_parity_is_not_vacuous(knob):
    """The perturbed correction bias and the floor on the weights' sum change the tiny model's
    logits, so its parity depends on importing both."""
    hf, ours = _pair("ernie4_5_moe")
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        ref = hf(ids).logits
        for layer in ours.layers:
            moe = getattr(layer, "moe", None)
            if moe is not None and knob == "normalize_min":
                moe.normalize_min = 0.0
            elif moe is not None:
                moe.e_score_correction_bias.zero_()
        assert not torch.allclose(ours(ids), ref, atol=1e-3)


def test_ernie_export_carries_the_correction_bias(tmp_path):
    """The correction bias is a buffer, which the export tests' perturbation leaves at zero: here it
    is not, and transformers' model loaded from the exported folder routes as archlang's does."""
    import archlang
    from archlang.api import build
    from archlang.interop.hf_export import export_hf

    from .test_hf_export import CASES as EXPORT, perturb as perturb_ours

    text = EXPORT["ernie4_5_moe"][0]
    torch.manual_seed(0)
    ours = perturb_ours(build(text, passes="")).eval()
    with torch.no_grad():
        for layer in ours.layers:
            if getattr(layer, "moe", None) is not None:
                layer.moe.e_score_correction_bias.normal_(0, 0.5)
    archlang.save(ours, tmp_path / "w.safetensors")
    export_hf(text, tmp_path / "hf", weights=tmp_path / "w.safetensors")
    theirs = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)
        for name, p in theirs.named_parameters():
            if name.endswith("e_score_correction_bias"):
                p.zero_()
        assert not torch.allclose(theirs(ids).logits, ours(ids), atol=1e-3)  # the bias mattered
