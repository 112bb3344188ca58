"""Falcon-H1 from its published Hugging Face config: archlang's parameter count of the imported
spec equals transformers' (meta device, nothing downloaded); cached greedy decoding equals
transformers'; the multipliers reach the spec; the config values archlang cannot compute
exactly are refused, naming the key."""

import warnings

import pytest
import torch

from archlang.api import compile_spec, load_model
from archlang.compiler.facts import compute_facts
from archlang.interop.hf import from_hf, spec_from_config
from archlang.interop.hf_export import export_config
from archlang.spec.errors import ArchError

from .test_hf_parity import CASES, _pair

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# tiiuae/Falcon-H1-7B-Base's config.json in transformers 5.23's names: 44 layers of attention
# (12 heads, 2 KV heads of 128) beside Mamba-2 (24 heads of 128 = mamba_d_ssm 3072, one group,
# d_state 256), a SwiGLU of 12288, RoPE theta 1e11, and its µP multipliers. The keys TII's
# training code writes and transformers never reads (attn_layer_indices, mamba_use_mlp,
# mlp_expansion_factor) are in it too.
FALCON_H1_7B = dict(
    model_type="falcon_h1", vocab_size=130049, hidden_size=3072, intermediate_size=12288, num_hidden_layers=44,
    num_attention_heads=12, num_key_value_heads=2, head_dim=128, hidden_act="silu", max_position_embeddings=262144,
    rms_norm_eps=1e-5, attention_bias=False, mlp_bias=False, attention_dropout=0.0, tie_word_embeddings=False,
    mamba_d_ssm=3072, mamba_n_heads=24, mamba_d_head=128, mamba_n_groups=1, mamba_d_state=256, mamba_d_conv=4,
    mamba_expand=2, mamba_chunk_size=256, mamba_conv_bias=True, mamba_proj_bias=False, mamba_rms_norm=True,
    mamba_norm_before_gate=False, projectors_bias=False, time_step_limit=[0.0, float("inf")],
    embedding_multiplier=5.656854249492381, lm_head_multiplier=0.0390625, key_multiplier=0.390625,
    attention_in_multiplier=1.0, attention_out_multiplier=0.9375, ssm_in_multiplier=1.25,
    ssm_out_multiplier=0.23570226039551587, mlp_multipliers=[0.8838834764831844, 0.5859375],
    ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
    attn_layer_indices=None, mamba_use_mlp=True, mlp_expansion_factor=8, num_logits_to_keep=1,
    initializer_range=0.02, pad_token_id=0, bos_token_id=1, eos_token_id=11, dtype="bfloat16",
    rope_parameters={"rope_type": "default", "rope_theta": 100000000000.0})


def hf_count(config) -> int:
    with torch.device("meta"):
        model = T.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def test_published_config_imports_with_transformers_parameter_count():
    text = spec_from_config(dict(FALCON_H1_7B), name="falcon_h1_7b")
    facts = compute_facts(compile_spec(text).graph)
    assert facts.params_total == hf_count(T.AutoConfig.for_model(**FALCON_H1_7B))
    assert 7.5e9 < facts.params_total < 7.7e9, facts.params_total  # "7B": 7.59B as TII counts it
    # both caches: the attention's keys and values per token, the Mamba-2 state per sequence
    assert facts.kv_cache_bytes_per_token == 44 * 2 * 2 * 128 * 2
    assert facts.ssm_state_bytes_per_sequence == 44 * (3 * (3072 + 2 * 256) * 2 + 4 * 3072 * 256)


def test_published_multipliers_reach_the_spec():
    text = spec_from_config(dict(FALCON_H1_7B), name="falcon_h1_7b")
    for needle in ("mixers = parallel(attention_out = 0.9375, ssm_in = 1.25, ssm_out = 0.23570226039551587)",
                   "key_multiplier = 0.390625", "embedding_scale = 5.656854249492381", "logit_scale = 0.0390625",
                   "gate_multiplier = 0.8838834764831844, down_multiplier = 0.5859375",
                   "in_proj_multipliers = [0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738]",
                   "heads = 24, head_dim = 128", "norm_eps = 1e-05", "rope(theta = 100000000000)"):
        assert needle in text, needle
    assert "gated_norm" not in text and "norm_before_gate" not in text  # the gated norm, after the gate


@pytest.mark.parametrize("case", ["falcon_h1", "falcon_h1-norm-before-gate-biases-tied"])
def test_greedy_generation_matches(case):
    hf, ours = _pair(case)
    prompt = torch.randint(1, 97, (1, 6))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    assert torch.equal(ours.generate(prompt, 10), ref)


def test_cached_greedy_with_a_dt_clamp_equals_transformers_full_forward():
    """transformers clamps dt in its chunked prefill and not in its one-token step (as its other
    Mamba-2 hybrids do); archlang clamps in both, as the prefill does."""
    hf, ours = _pair("falcon_h1-plain-dt-clamp")
    for seed in range(3):
        torch.manual_seed(seed)
        prompt = torch.randint(1, 97, (1, 6))
        got = ours.generate(prompt, 10)
        with torch.no_grad():
            full = hf(got).logits
        assert torch.equal(full[0, 5:-1].argmax(-1), got[0, 6:])


def test_the_multipliers_are_not_vacuous():
    """The same weights with every multiplier back at 1 give other logits: the parity case
    checks each multiplier's place, not a multiplier that does nothing."""
    config_cls, model_cls, kwargs = CASES["falcon_h1"]
    hf, ours = _pair("falcon_h1")
    ids = torch.randint(0, 97, (2, 9))
    plain = {k: 1.0 for k in ("key_multiplier", "attention_in_multiplier", "attention_out_multiplier",
                              "ssm_in_multiplier", "ssm_out_multiplier", "embedding_multiplier", "lm_head_multiplier")}
    with torch.no_grad():
        base = ours(ids)
        for key, one in [*plain.items(), ("mlp_multipliers", [1.0, 1.0]), ("ssm_multipliers", [1.0] * 5)]:
            changed = model_cls(config_cls(**dict(kwargs, **{key: one})))
            changed.load_state_dict(hf.state_dict())
            changed = from_hf(changed.eval()).eval()
            assert (changed(ids) - base).abs().max() > 1e-3, key


@pytest.mark.parametrize("changes,key", [
    (dict(mamba_proj_bias=True), "mamba_proj_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(key_multiplier=-0.5), "key_multiplier"),
    (dict(ssm_out_multiplier=0.0), "ssm_out_multiplier"),
    (dict(mlp_multipliers=[1.0, -2.0]), "mlp_multipliers"),
    (dict(ssm_multipliers=[1.0, 1.0, 1.0, 1.0]), "ssm_multipliers"),
    (dict(time_step_limit=[0.5, 0.1]), "time_step_limit"),
])
def test_values_archlang_cannot_compute_are_refused_naming_the_key(changes, key):
    with pytest.raises(ArchError) as info:
        spec_from_config(dict(FALCON_H1_7B, **changes))
    assert repr(key) in info.value.message, info.value.message


def _tiny(block: str, model: str = "") -> str:
    return f"""model m {{
    vocab = 97
    d_model = 32
    context = 64
    position = rope(theta = 10000)
    final_norm = rmsnorm(eps = 1e-5)
{model}    block layer {{
        norm = rmsnorm(eps = 1e-5)
{block}        ffn = swiglu(hidden = 48)
    }}
    layers = layer * 2
}}"""


_PARALLEL = """        mixers = parallel()
        attention = gqa(heads = 4, kv_heads = 2)
        ssm = mamba2(d_state = 8, heads = 4, head_dim = 16, chunk = 4)
"""


@pytest.mark.parametrize("text,needle", [
    (_tiny("        attention = gqa(heads = 4, kv_heads = 2)\n"), "without parallel mixers"),
    (_tiny(_PARALLEL.replace("chunk = 4", "chunk = 4, d_skip = false")), "d_skip = false"),
    (_tiny(_PARALLEL.replace("chunk = 4", "chunk = 4, norm_eps = 1e-6")), "gated-norm eps"),
    (_tiny(_PARALLEL, "    embedding_scale = 2\n    embedding_scale_in_dtype = true\n"), "embedding_scale_in_dtype"),
    (_tiny(_PARALLEL, "    residual_scale = 0.5\n"), "residual_scale"),
])
def test_export_refuses_what_falcon_h1_cannot_express(text, needle):
    with pytest.raises(ArchError) as info:
        export_config(load_model(text), "falcon_h1")
    assert needle in info.value.message, info.value.message


def test_a_parallel_mixer_spec_exports_as_falcon_h1_unasked():
    config = export_config(load_model(_tiny(_PARALLEL)))
    assert config.model_type == "falcon_h1" and config.mamba_rms_norm and not config.mamba_norm_before_gate
