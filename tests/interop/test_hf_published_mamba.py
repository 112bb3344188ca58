"""Mamba-1 and Falcon-Mamba from published Hugging Face configs: archlang's parameter count of the
imported spec equals transformers' (meta device, nothing downloaded) and the published size; the
config values archlang cannot compute exactly are refused, naming the key; spec values a family
lacks are refused on export at the value."""

import json
import warnings

import pytest
import torch

from archlang.api import compile_spec, load_model
from archlang.compiler.facts import compute_facts
from archlang.interop.hf import spec_from_config
from archlang.interop.hf_export import export_config
from archlang.spec.errors import ArchError

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# state-spaces/mamba-2.8b-hf's config.json (mamba_ssm's keys n_layer, rms_norm and fused_add_norm kept).
MAMBA_2_8B = """{
  "architectures": ["MambaForCausalLM"], "bos_token_id": 0, "conv_kernel": 4, "eos_token_id": 0, "expand": 2,
  "fused_add_norm": true, "hidden_act": "silu", "hidden_size": 2560, "initializer_range": 0.1,
  "intermediate_size": 5120, "layer_norm_epsilon": 1e-05, "model_type": "mamba", "n_layer": 64,
  "num_hidden_layers": 64, "pad_token_id": 0, "rescale_prenorm_residual": false, "residual_in_fp32": true,
  "rms_norm": true, "state_size": 16, "time_step_floor": 0.0001, "time_step_init_scheme": "random",
  "time_step_max": 0.1, "time_step_min": 0.001, "time_step_rank": 160, "time_step_scale": 1.0,
  "torch_dtype": "float32", "transformers_version": "4.39.0.dev0", "use_bias": false, "use_cache": true,
  "use_conv_bias": true, "vocab_size": 50280
}"""

# tiiuae/falcon-mamba-7b's config.json: expand 16 beside intermediate_size 8192, which transformers
# reads (the mixer is 2 · hidden_size wide); untied embeddings over a 65024-token vocabulary.
FALCON_MAMBA_7B = """{
  "architectures": ["FalconMambaForCausalLM"], "bos_token_id": 0, "conv_kernel": 4, "eos_token_id": 11,
  "expand": 16, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.1, "intermediate_size": 8192,
  "layer_norm_epsilon": 1e-05, "model_type": "falcon_mamba", "num_hidden_layers": 64, "pad_token_id": 11,
  "rescale_prenorm_residual": false, "residual_in_fp32": true, "state_size": 16, "tie_word_embeddings": false,
  "time_step_floor": 0.0001, "time_step_init_scheme": "random", "time_step_max": 0.1, "time_step_min": 0.001,
  "time_step_rank": 256, "time_step_scale": 1.0, "torch_dtype": "bfloat16", "transformers_version": "4.43.0.dev0",
  "use_bias": false, "use_cache": true, "use_conv_bias": true, "vocab_size": 65024
}"""

PUBLISHED = {  # the sizes the checkpoints are known by, to the parameter
    "mamba": (MAMBA_2_8B, T.MambaConfig, T.MambaForCausalLM, 2_768_345_600),
    "falcon_mamba": (FALCON_MAMBA_7B, T.FalconMambaConfig, T.FalconMambaForCausalLM, 7_272_665_088),
}


def hf_count(config_cls, model_cls, config: dict) -> int:
    with torch.device("meta"):
        model = model_cls(config_cls(**{k: v for k, v in config.items() if k != "model_type"}))
    return sum(p.numel() for p in model.parameters())  # a tied head is the embedding's tensor, once


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_published_config_imports_with_transformers_and_published_parameter_count(family, tmp_path):
    text, config_cls, model_cls, published = PUBLISHED[family]
    path = tmp_path / "config.json"
    path.write_text(text)
    spec = spec_from_config(path, name=family)
    facts = compute_facts(compile_spec(spec).graph)
    assert facts.params_total == hf_count(config_cls, model_cls, json.loads(text)) == published


def test_falcon_mamba_7b_is_two_hidden_sizes_wide_with_weightless_norms(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(FALCON_MAMBA_7B)
    spec = spec_from_config(path, name="falcon_mamba_7b")
    assert "expand = 2," in spec and "inner_norms = weightless" in spec and "dt_rank = 256" in spec


SMALL = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=8)


@pytest.mark.parametrize("family", ["mamba", "falcon_mamba"])
@pytest.mark.parametrize("key,value,words", [
    ("hidden_act", "gelu", "silu"),
    ("intermediate_size", 48, "multiple (expand) of hidden_size"),
])
def test_values_archlang_cannot_compute_are_refused_naming_the_key(family, key, value, words):
    with pytest.raises(ArchError) as info:
        spec_from_config(dict(SMALL, model_type=family, **{key: value}))
    assert repr(key) in info.value.message and words in info.value.message


BASE = """model m {
    vocab = 97
    d_model = 32
    context = 64
    dtype = fp32
    final_norm = rmsnorm(eps = 1e-5)
    block b {
        norm = rmsnorm(eps = 1e-5)
        ssm = mamba(SSM)
    }
    layers = b * 2
}
"""


@pytest.mark.parametrize("model_type,args,field", [
    ("falcon_mamba", "inner_norms = true", "inner_norms"),
    ("falcon_mamba", "inner_norms = false", "inner_norms"),
    ("mamba", "inner_norms = weightless", "inner_norms"),
    ("mamba", "inner_norms = true", "inner_norms"),
    ("mamba", "norm_eps = 1e-5", "norm_eps"),
])
def test_what_each_family_lacks_is_refused_on_export_at_its_value(model_type, args, field):
    text = BASE.replace("SSM", args)
    with pytest.raises(ArchError) as info:
        export_config(load_model(text), model_type)
    err = info.value
    line = text.splitlines()[err.span.line - 1]
    assert line[:err.span.column - 1].endswith(f"{field} = "), (err, line)


def test_a_weightless_mamba_exports_as_falcon_mamba_and_a_plain_one_as_mamba():
    assert export_config(load_model(BASE.replace("SSM", "inner_norms = weightless"))).model_type == "falcon_mamba"
    assert export_config(load_model(BASE.replace("SSM", "d_state = 8"))).model_type == "mamba"


JAMBA = """model m {
    vocab = 97
    d_model = 32
    context = 64
    dtype = fp32
    final_norm = rmsnorm(eps = 1e-6)
    block mamba {
        norm = rmsnorm(eps = 1e-6)
        ssm = mamba(d_state = 8, dt_rank = 4, inner_norms = NORMS)
        ffn = swiglu(hidden = 48)
    }
    block attn {
        norm = rmsnorm(eps = 1e-6)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 48)
    }
    layers = [mamba, attn] * 2
}
"""


@pytest.mark.parametrize("norms", ["weightless", "false"])
def test_jamba_takes_only_weighted_inner_norms(norms):
    """Jamba's inner norms have weights: a hybrid with weightless ones (or none) is refused at
    the value, by the round trip that every export makes."""
    assert export_config(load_model(JAMBA.replace("NORMS", "true"))).model_type == "jamba"
    text = JAMBA.replace("NORMS", norms)
    with pytest.raises(ArchError) as info:
        export_config(load_model(text))
    err = info.value
    line = text.splitlines()[err.span.line - 1]
    assert line[:err.span.column - 1].endswith("inner_norms = "), (err, line)
