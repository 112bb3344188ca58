"""Mamba-2 from published Hugging Face configs: archlang's parameter count of the imported spec
equals transformers' (meta device, nothing downloaded); the config values archlang cannot compute
exactly are refused, naming the key; spec values the mamba2 family lacks are refused on export."""

import json
import math
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

# mistralai/Mamba-Codestral-7B-v0.1's config.json, as transformers 4.44 wrote it (JSON's Infinity kept).
CODESTRAL = """{
  "architectures": ["Mamba2ForCausalLM"], "bos_token_id": 0, "chunk_size": 256, "conv_kernel": 4,
  "eos_token_id": 0, "expand": 2, "head_dim": 64, "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.1, "layer_norm_epsilon": 1e-05, "model_type": "mamba2", "n_groups": 8,
  "norm_before_gate": true, "num_heads": 128, "num_hidden_layers": 64, "pad_token_id": 0,
  "rescale_prenorm_residual": false, "residual_in_fp32": true, "rms_norm": true, "state_size": 128,
  "tie_word_embeddings": false, "time_step_floor": 0.0001, "time_step_init_scheme": "random",
  "time_step_limit": [0.0, Infinity], "time_step_max": 0.1, "time_step_min": 0.001, "time_step_rank": 256,
  "time_step_scale": 1.0, "torch_dtype": "bfloat16", "transformers_version": "4.44.0.dev0", "use_bias": false,
  "use_cache": true, "use_conv_bias": true, "vocab_size": 32768
}"""

# state-spaces/mamba2-2.7b (mamba_ssm's config: d_model 2560, 64 layers, vocabulary 50277 padded to a
# multiple of 16, Mamba2 defaults d_state 128, headdim 64, ngroups 1, tied embeddings) in transformers' terms.
MAMBA2_2_7B = dict(model_type="mamba2", vocab_size=50288, hidden_size=2560, num_hidden_layers=64, num_heads=80,
                   head_dim=64, state_size=128, n_groups=1, expand=2, conv_kernel=4, chunk_size=256,
                   tie_word_embeddings=True)


def hf_count(config) -> int:
    with torch.device("meta"):
        model = T.Mamba2ForCausalLM(config)
    return sum(p.numel() for p in model.parameters())  # a tied head is the embedding's tensor, once


def test_codestral_config_imports_with_transformers_parameter_count(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(CODESTRAL)
    text = spec_from_config(path, name="codestral")
    assert "groups = 8" in text and "heads = 128" in text and "dt_limit" not in text
    facts = compute_facts(compile_spec(text).graph)
    config = T.Mamba2Config(**{k: v for k, v in json.loads(CODESTRAL).items() if k != "model_type"})
    assert facts.params_total == hf_count(config)
    assert 7.2e9 < facts.params_total < 7.4e9


def test_mamba2_2_7b_parameter_count():
    text = spec_from_config(dict(MAMBA2_2_7B), name="mamba2_2_7b")
    assert "tie_embeddings = true" in text
    facts = compute_facts(compile_spec(text).graph)
    config = T.Mamba2Config(**{k: v for k, v in MAMBA2_2_7B.items() if k != "model_type"})
    assert facts.params_total == hf_count(config)
    assert 2.6e9 < facts.params_total < 2.8e9


SMALL = dict(model_type="mamba2", vocab_size=97, hidden_size=32, num_hidden_layers=2, num_heads=8, head_dim=8,
             state_size=8, n_groups=2)


@pytest.mark.parametrize("key,value,words", [
    ("time_step_limit", [0.5, 0.1], "0 <= low < high"),
    ("time_step_limit", [-0.1, math.inf], "0 <= low < high"),
    ("hidden_act", "gelu", "silu"),
])
def test_values_archlang_cannot_compute_are_refused_naming_the_key(key, value, words):
    with pytest.raises(ArchError) as info:
        spec_from_config(dict(SMALL, **{key: value}))
    assert repr(key) in info.value.message and words in info.value.message


def test_a_clamp_open_above_imports_as_a_dt_limit_without_upper_end():
    text = spec_from_config(dict(SMALL, time_step_limit=[0.01, math.inf]))
    assert "dt_limit = [0.01, none]" in text


def test_a_finite_time_step_limit_is_the_spec_dt_limit():
    text = spec_from_config(dict(SMALL, time_step_limit=[0.001, 0.25]))
    assert "dt_limit = [0.001, 0.25]" in text


BASE = """model m {
    vocab = 97
    d_model = 32
    context = 64
    dtype = fp32
    final_norm = rmsnorm(eps = 1e-5)
    block b {
        norm = rmsnorm(eps = 1e-5)
        ssm = mamba2(SSM)
    }
    layers = b * 2
}
"""


@pytest.mark.parametrize("args,field", [
    ("gated_norm = false", "gated_norm"), ("norm_before_gate = true", "norm_before_gate"),
    ("d_skip = false", "d_skip"), ("norm_eps = 1e-6", "norm_eps"),
])
def test_what_transformers_mamba2_lacks_is_refused_on_export_at_its_value(args, field):
    text = BASE.replace("SSM", args)
    with pytest.raises(ArchError) as info:
        export_config(load_model(text), "mamba2")
    err = info.value
    line = text.splitlines()[err.span.line - 1]
    assert line[:err.span.column - 1].endswith(f"{field} = "), (err, line)
