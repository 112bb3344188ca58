"""gpt-oss and Llama 4 beyond the shared tables: their published configs import to the committed
examples with HF's parameter counts, the parity tests depend on each feature these families add
(so they cannot pass by accident), the RoPE variants they need match transformers' tables, and
the values archlang cannot compute are refused by name."""

import json
import warnings

import pytest
import torch

from archlang.api import compile_spec, load_model, load_source
from archlang.compiler import compute_facts
from archlang.interop.hf import hf_to_archlang, spec_from_config
from archlang.interop.hf_export import _ir_text
from archlang.runtime.position import rope_inv_freq
from archlang.spec.errors import ArchError

from ..conftest import EXAMPLES
from .test_hf_parity import CASES, hf_model

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# openai/gpt-oss-20b's config.json, without its quantization_config (the weights are MXFP4 there;
# the dequantized model is what a spec describes): refused below when present.
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0, "eos_token_id": 200002,
    "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880, "initial_context_length": 4096,
    "initializer_range": 0.02, "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12, "max_position_embeddings": 131072,
    "model_type": "gpt_oss", "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
    "num_key_value_heads": 8, "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
    "rms_norm_eps": 1e-05, "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                                             "original_max_position_embeddings": 4096, "rope_type": "yarn",
                                             "truncate": False},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 201088,
}

# meta-llama/Llama-4-Scout-17B-16E-Instruct's text_config (attn_temperature_tuning written as
# true: transformers 5 refuses anything but a boolean there).
LLAMA4_SCOUT = {
    "attention_bias": False, "attention_chunk_size": 8192, "attention_dropout": 0.0, "attn_scale": 0.1,
    "attn_temperature_tuning": True, "bos_token_id": 200000, "eos_token_id": [200001, 200007, 200008],
    "floor_scale": 8192, "for_llm_compressor": False, "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120,
    "initializer_range": 0.02, "interleave_moe_layer_step": 1, "intermediate_size": 8192,
    "intermediate_size_mlp": 16384, "max_position_embeddings": 10485760, "model_type": "llama4_text",
    "moe_layers": list(range(48)), "no_rope_layers": [], "num_attention_heads": 40, "num_experts_per_tok": 1,
    "num_hidden_layers": 48, "num_key_value_heads": 8, "num_local_experts": 16, "output_router_logits": False,
    "pad_token_id": 200018, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0, "torch_dtype": "bfloat16",
    "use_cache": True, "use_qk_norm": True, "vocab_size": 202048,
}

PUBLISHED = {"gpt_oss_20b": (GPT_OSS_20B, "GptOssForCausalLM"), "llama4_scout": (LLAMA4_SCOUT, "Llama4ForCausalLM")}


def _config_json(tmp_path, config: dict):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("example", sorted(PUBLISHED))
def test_published_config_imports_to_the_example_with_hf_parameter_count(example, tmp_path):
    config, cls = PUBLISHED[example]
    imported = load_model(spec_from_config(_config_json(tmp_path, config), name=example))
    committed = load_model(EXAMPLES / f"{example}.arch")
    assert _ir_text(imported) == _ir_text(committed)
    assert (imported.dtype, imported.context) == (committed.dtype, committed.context)
    hf_config = T.AutoConfig.for_model(**{k: v for k, v in config.items() if k not in ("torch_dtype",)})
    with torch.device("meta"):
        hf = getattr(T, cls)(hf_config)
    total = compute_facts(compile_spec(spec_from_config(hf_config, name=example)).graph).params_total
    assert total == sum(p.numel() for p in hf.parameters())


def test_quantized_gpt_oss_checkpoints_are_refused_by_name(tmp_path):
    quantized = dict(GPT_OSS_20B, quantization_config={"quant_method": "mxfp4",
                                                       "modules_to_not_convert": ["model.layers.*.self_attn"]})
    with pytest.raises(ArchError) as err:
        spec_from_config(_config_json(tmp_path, quantized))
    assert "'quantization_config'" in err.value.message and "dequantized" in err.value.message


@pytest.mark.parametrize("model_type,overrides,key", [
    ("gpt_oss", dict(layer_types=["sliding_attention", "chunked_attention", "full_attention"]), "layer_types"),
    ("gpt_oss", dict(swiglu_limit=0.0), "swiglu_limit"),
    ("gpt_oss", dict(sliding_window=None), "sliding_window"),
    ("gpt_oss", dict(output_router_logits=True), "output_router_logits"),
    ("llama4_text", dict(layer_types=["sliding_attention"] * 4), "layer_types"),
    ("llama4_text", dict(attention_chunk_size=None), "attention_chunk_size"),
    ("llama4_text", dict(attn_scale=-0.1), "attn_scale"),
    ("llama4_text", dict(hidden_act="gelu"), "hidden_act"),
    ("llama4_text", dict(moe_layers=[1.5]), "moe_layers"),
])
def test_values_archlang_cannot_compute_are_refused(model_type, overrides, key):
    case = {"gpt_oss": "gpt_oss", "llama4_text": "llama4_text"}[model_type]
    config = {"model_type": model_type, **CASES[case][2], **overrides}
    with pytest.raises(ArchError) as err:
        spec_from_config(config)
    assert f"'{key}'" in err.value.message


@pytest.mark.parametrize("model_type", ["gpt_oss", "qwen2"])
def test_a_config_transformers_rejects_is_an_arch_error(model_type):
    """transformers' config classes validate as strict dataclasses; their errors are not
    ValueErrors and escaped as tracebacks."""
    config = {"model_type": model_type, "num_hidden_layers": 3, "layer_types": ["full_attention"] * 2}
    with pytest.raises(ArchError, match="(?s)transformers rejects this .* config: .*layer_types"):
        spec_from_config(config)


# ----------------------------------------------------------------------------- parity is not vacuous


def _pair(case):
    hf = hf_model(case)
    text = spec_from_config(hf.config, name="m")
    return hf, text


def _ours(text, hf):
    compiled = compile_spec(text, passes="")
    model = load_source(compiled.source, compiled.model.name).build()
    model.load_unfused_state_dict(hf_to_archlang(hf), strict=True)
    return model.eval()


def _modules(model, kind):
    from archlang import runtime as rt

    return [m for m in model.modules() if isinstance(m, getattr(rt, kind))]


KNOBS = {
    "glu clamp": ("gpt_oss", lambda m: [setattr(x, "glu_limit", None) for x in _modules(m, "MoE")]),
    "router bias": ("gpt_oss", lambda m: [x.router_bias.data.zero_() for x in _modules(m, "MoE")]),
    "sinks": ("gpt_oss", lambda m: [x.sinks.data.fill_(-1e4) for x in _modules(m, "Attention")]),
    "window": ("gpt_oss", lambda m: [setattr(x, "window", None) for x in _modules(m, "Attention")]),
    "chunk": ("llama4_text", lambda m: [setattr(x, "chunk", None) for x in _modules(m, "Attention")]),
    "l2 qk-norm": ("llama4_text", lambda m: [(setattr(x, "qk_norm", None), setattr(x, "norm_after_rope", False))
                                             for x in _modules(m, "Attention")]),
    "temperature tuning": ("llama4_text", lambda m: [setattr(x, "temperature_tuning", False)
                                                     for x in _modules(m, "Attention")]),
    "input scaling": ("llama4_text", lambda m: [setattr(x, "scale_input", False) for x in _modules(m, "MoE")]),
}


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_parity_depends_on_each_feature(knob):
    """Each feature these families add changes the logits of the tiny parity models: turning it
    off in the archlang model (same weights) breaks the match that test_hf_parity proves."""
    case, turn_off = KNOBS[knob]
    hf, text = _pair(case)
    ours = _ours(text, hf)
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids).logits
        torch.testing.assert_close(ours(ids), ref, atol=1e-4, rtol=1e-4)
        turn_off(ours)
        assert not torch.allclose(ours(ids), ref, atol=1e-3)


def test_gpt_oss_parity_depends_on_yarn_without_truncation():
    hf, text = _pair("gpt_oss")
    assert "truncate = false" in text
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        truncated = _ours(text.replace(", truncate = false", ""), hf)(ids)
        assert not torch.allclose(truncated, hf(ids).logits, atol=1e-3)


# ----------------------------------------------------------------------------- RoPE tables


def _hf_inv_freq(config):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config)


@pytest.mark.parametrize("truncate", [False, True])
def test_yarn_matches_transformers_with_and_without_truncation(truncate):
    params = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
              "truncate": truncate, "original_max_position_embeddings": 4096}
    config = T.GptOssConfig(head_dim=64, rope_parameters=params)
    ref, ref_factor = _hf_inv_freq(config)
    scaling = {"kind": "yarn", "factor": 32.0, "original_context": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
               "mscale": 1.0, "mscale_all_dim": 0.0, "truncate": truncate}
    got, factor = rope_inv_freq(64, 150000.0, scaling)
    torch.testing.assert_close(got, ref, atol=0, rtol=1e-6)
    assert factor == pytest.approx(ref_factor)
    other, _ = rope_inv_freq(64, 150000.0, dict(scaling, truncate=not truncate))
    assert not torch.allclose(other, ref)  # the bounds of these parameters are not whole numbers


def test_llama3_scaling_with_equal_frequency_factors_is_transformers_step():
    """Llama 4 Scout: low_freq_factor = high_freq_factor leaves no smoothed band."""
    params = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0, "low_freq_factor": 1.0,
              "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}
    ref, _ = _hf_inv_freq(T.Llama4TextConfig(head_dim=128, rope_parameters=params))
    got, _ = rope_inv_freq(128, 500000.0, {"kind": "llama3", "factor": 16.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 1.0, "original_context": 8192})
    torch.testing.assert_close(got, ref, atol=0, rtol=1e-6)
    assert torch.isfinite(got).all() and (got < rope_inv_freq(128, 500000.0, None)[0]).any()


def test_llama3_high_below_low_frequency_factor_is_refused():
    text = (EXAMPLES / "llama4_scout.arch").read_text().replace("high_freq_factor = 1", "high_freq_factor = 0.5")
    with pytest.raises(Exception) as err:
        compile_spec(text)
    assert "high_freq_factor must not be below low_freq_factor" in str(err.value)
