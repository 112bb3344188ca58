"""Reading Hugging Face configs: every key of every supported model type is classified (mapped,
irrelevant, or refused at values archlang lacks), and bad config files give located ArchErrors."""

import json
import subprocess
import sys
import warnings

import pytest

from archlang.interop import hf_config
from archlang.interop.hf import SPEC_WRITERS, spec_from_config
from archlang.spec.errors import ArchError

from .test_hf_parity import CASES, SMALL

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")


def test_every_supported_type_has_one_table():
    assert set(SPEC_WRITERS) == set(hf_config.TABLES)


@pytest.mark.parametrize("model_type", sorted(hf_config.TABLES))
def test_every_default_key_is_classified(model_type):
    """A key transformers adds to a config class is noticed here, not dropped by the importer."""
    keys = T.AutoConfig.for_model(model_type).to_dict()
    unclassified = set(keys) - set(hf_config.table(model_type))
    assert not unclassified, f"{model_type}: classify {sorted(unclassified)} in archlang/interop/hf_config.py"
    for name, rule in hf_config.table(model_type).items():
        assert rule.how in ("mapped", "irrelevant", "checked")
        assert rule.how != "irrelevant" or rule.reason, f"{model_type}.{name}: say why it is irrelevant"
    if model_type == "deepseek_v2":  # its default num_experts_per_tok is None: the defaults are no model
        with pytest.raises(ArchError, match="top_k"):
            spec_from_config(T.AutoConfig.for_model(model_type))
    elif model_type == "t5":  # t5 drops inside its FFNs and after its final norm, where archlang has no dropout
        with pytest.raises(ArchError, match="'dropout_rate' = 0.1"):
            spec_from_config(T.AutoConfig.for_model(model_type))
        spec_from_config(T.AutoConfig.for_model(model_type, dropout_rate=0.0))
    elif model_type == "glm4_moe":  # 4096 / 96 heads floors head_dim to 42: half of it is an odd RoPE width
        with pytest.raises(ArchError, match="rope dim must be even, got 21"):
            spec_from_config(T.AutoConfig.for_model(model_type))
    elif model_type == "hunyuan_v1_moe":  # head_dim defaults to None, with which transformers builds no model
        with pytest.raises(ArchError, match="needs head_dim"):
            spec_from_config(T.AutoConfig.for_model(model_type))
    else:
        spec_from_config(T.AutoConfig.for_model(model_type))  # the defaults themselves are expressible


def _llama(**overrides):
    return {"model_type": "llama", **SMALL, **overrides}


@pytest.mark.parametrize("overrides,needle", [
    (dict(hidden_act="quick_gelu"), "quick_gelu"),
    (dict(some_new_switch=3), "'some_new_switch' (= 3)"),
    (dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0, "attention_factor": 2.0}),
     "'dynamic'"),
    (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, True],
                           "long_factor": [1.0, 2.0]}), "short_factor"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "attention_factor": 2.0,
                           "original_max_position_embeddings": 16}), "attention_factor"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "truncate": "no",
                           "original_max_position_embeddings": 16}), "truncate"),
    (dict(dtype="float64"), "'dtype' = \"float64\""),
])
def test_llama_values_archlang_lacks_are_refused(overrides, needle):
    with pytest.raises(ArchError) as err:
        spec_from_config(_llama(**overrides))
    assert needle in str(err.value)


@pytest.mark.parametrize("model_type,overrides,key", [
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    ("gpt2", dict(tie_word_embeddings=False), "tie_word_embeddings"),
    ("qwen2_moe", dict(use_sliding_window=True), "use_sliding_window"),
    ("qwen2_moe", dict(output_router_logits=True), "output_router_logits"),
    ("gemma2", dict(attention_bias=True), "attention_bias"),
    ("deepseek_v2", dict(topk_method="noaux_tc", n_group=2, topk_group=1), "topk_method"),
    ("deepseek_v2", dict(topk_method="group_limited_greedy", n_group=3, topk_group=1, n_routed_experts=64,
                         num_experts_per_tok=6), "n_group"),
    ("deepseek_v3", dict(n_group=8, topk_group=9), "n_group"),
    ("deepseek_v3", dict(n_group=256, topk_group=4), "n_group"),  # one expert per group: no top-2 score
    ("deepseek_v3", dict(n_group=8, topk_group=1, num_experts_per_tok=40), "n_group"),
    ("deepseek_v3", dict(attention_bias=True), "attention_bias"),
    ("glm4_moe", dict(use_qk_norm=True), "use_qk_norm"),
    ("glm4_moe", dict(n_group=3, topk_group=1), "n_group"),
    ("deepseek_v2", dict(mlp_bias=True), "mlp_bias"),
    ("t5", dict(is_decoder=True, dropout_rate=0.0), "is_decoder"),
    # dropouts at places archlang has none: inside t5's FFNs, on MLA's probabilities; Mixtral's router jitter
    ("t5", dict(dropout_rate=0.1), "dropout_rate"),
    ("deepseek_v2", dict(attention_dropout=0.1, num_experts_per_tok=2), "attention_dropout"),
    ("deepseek_v3", dict(attention_dropout=0.1), "attention_dropout"),
    ("mixtral", dict(router_jitter_noise=0.01), "router_jitter_noise"),
    ("bert", dict(is_decoder=True), "is_decoder"),
])
def test_other_families_refuse_what_they_do_not_map(model_type, overrides, key):
    config = T.AutoConfig.for_model(model_type, **overrides)
    with pytest.raises(ArchError) as err:
        spec_from_config(config)
    assert repr(key) in str(err.value)


def test_llama_attention_bias_is_mapped_with_every_parameter():
    """HF Llama's attention_bias biases o_proj too: the spec says so, and counts what HF counts."""
    from archlang.api import compile_spec
    from archlang.compiler import compute_facts

    config = T.LlamaConfig(**CASES["llama-biases"][2])
    text = spec_from_config(config)
    assert "bias = true, out_bias = true" in text
    params = compute_facts(compile_spec(text).graph).params_total
    assert params == T.LlamaForCausalLM(config).num_parameters()


@pytest.mark.parametrize("dtype,word", [(None, "fp32"), ("float32", "fp32"), ("bfloat16", "bf16"), ("float16", "fp16")])
def test_spec_takes_the_config_dtype(dtype, word):
    assert f"dtype = {word}\n" in spec_from_config(_llama(dtype=dtype))
    assert f"dtype = {word}\n" in spec_from_config(_llama(torch_dtype=dtype))  # the name older configs use


# ----------------------------------------------------------------------------- reading config.json


def _write(tmp_path, data: bytes):
    path = tmp_path / "config.json"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data,needle", [
    (b"[1, 2]", "must hold a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"model_type": "llama", "name": "caf\xe9"}', "not UTF-8"),
    (json.dumps({"vocab_size": 97}).encode(), "no 'model_type'"),
    (json.dumps({"model_type": "gpt-7"}).encode(), "model_type 'gpt-7' is not supported"),
    (json.dumps(_llama(hidden_size="64")).encode(), "'hidden_size' must be an integer, not \"64\""),
    (json.dumps(_llama(num_hidden_layers=True)).encode(), "'num_hidden_layers' must be an integer, not true"),
    (json.dumps(_llama(rms_norm_eps="small")).encode(), "'rms_norm_eps' must be a number"),
    (json.dumps(_llama(attention_bias=1)).encode(), "'attention_bias' must be true or false"),
    (json.dumps(_llama(rope_parameters={"rope_type": "linear", "rope_theta": "x", "factor": 2})).encode(),
     "must be a number"),
    (json.dumps(_llama(layer_types=7)).encode(), "'layer_types' (= 7) is not known"),  # not a llama key
    (json.dumps({"model_type": "qwen2", **SMALL, "layer_types": 7}).encode(), "'layer_types' must be a list"),
])
def test_bad_config_files_are_arch_errors(tmp_path, data, needle):
    path = _write(tmp_path, data)
    with pytest.raises(ArchError) as err:
        spec_from_config(path)
    assert needle in err.value.message
    assert str(path) in str(err.value)


def test_errors_point_at_the_key_or_the_syntax_error(tmp_path):
    path = _write(tmp_path, b'{\n  "model_type": "llama",\n  "hidden_size": "64"\n}')
    with pytest.raises(ArchError) as err:
        spec_from_config(path)
    assert (err.value.span.line, err.value.span.column) == (3, 3)
    path = _write(tmp_path, b'{\n  "model_type": "llama",\n  "hidden_size": 64,,\n}')
    with pytest.raises(ArchError) as err:
        spec_from_config(path)
    assert (err.value.span.line, err.value.span.column) == (3, 21)


def test_import_hf_command_reports_bad_files_without_a_traceback(tmp_path):
    for i, data in enumerate([b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}", json.dumps(_llama(hidden_size="64")).encode(),
                              json.dumps(_llama(attention_bias=True, hidden_act="quick_gelu")).encode()]):
        path = _write(tmp_path, data)
        out = tmp_path / f"m{i}.arch"
        run = subprocess.run([sys.executable, "-m", "archlang", "import-hf", str(path), "-o", str(out)],
                             capture_output=True, text=True)
        assert run.returncode == 1, run.stderr
        assert "error:" in run.stderr and "Traceback" not in run.stderr and "internal error" not in run.stderr
        assert not out.exists()


def test_older_key_names_are_read_as_transformers_reads_them(tmp_path):
    config = _llama(rope_theta=500000.0, torch_dtype="bfloat16", eos_token_id=[1, 2], rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})
    text = spec_from_config(_write(tmp_path, json.dumps(config).encode()))
    assert "rope(theta = 500000, scaling = llama3(factor = 8" in text
    assert "dtype = bf16\n" in text


@pytest.mark.parametrize("config,needle", [
    (_llama(num_attention_heads=0), "transformers rejects"),
    (_llama(num_key_value_heads=3), "heads (4) must be divisible by kv_heads (3)"),
    (_llama(rms_norm_eps=-1.0), "`eps` must be greater than 0"),
    ({"model_type": "qwen2", **SMALL, "num_hidden_layers": 10**9}, "over archlang's 4096 layers"),
    ({"model_type": "qwen2_moe", **SMALL, "decoder_sparse_step": 0}, "does not describe a model"),
])
def test_values_that_make_no_valid_model_are_refused_in_the_configs_terms(config, needle):
    """An imported spec always passes check: no spec is written that `archc check` would refuse."""
    with pytest.raises(ArchError) as err:
        spec_from_config(config)
    assert needle in err.value.message
