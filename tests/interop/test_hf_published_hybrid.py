"""The Mamba-2 hybrids (Nemotron-H, Bamba, Granite 4.0) from published Hugging Face configs:
archlang's parameter count of the imported spec equals transformers' (meta device, nothing
downloaded); cached greedy decoding equals transformers'; the config values archlang cannot
compute exactly are refused, naming the key.

transformers' hybrids clamp dt (time_step_limit, Nemotron-H's time_step_min) in their chunked
prefill but not in their one-token decoding step, so where the clamp bites their own cached
decoding departs from their own full forward. archlang clamps in both, as the prefill (the
training path) does: with a clamp that bites, its cached greedy decoding is compared with
transformers' full forward over the same tokens."""

import warnings

import pytest
import torch

from archlang.api import compile_spec
from archlang.compiler.facts import compute_facts
from archlang.api import load_model
from archlang.interop.hf import from_hf, spec_from_config
from archlang.interop.hf_export import export_config
from archlang.spec.errors import ArchError

from .test_hf_parity import CASES, _pair, perturb

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# nvidia/Nemotron-H-8B-Base-8K's config.json in transformers 5.23's names: 52 layers, 24 Mamba-2
# (128 heads of 64, 8 groups, d_state 128), 4 attention (32 heads, 8 KV heads of 128, no RoPE),
# 24 relu² MLPs of 21504.
NEMOTRON_H_8B = dict(
    model_type="nemotron_h", vocab_size=131072, hidden_size=4096, intermediate_size=21504,
    hybrid_override_pattern="M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-", num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=8192, attention_bias=False, mlp_bias=False,
    mlp_hidden_act="relu2", ssm_state_size=128, mamba_num_heads=128, mamba_head_dim=64, mamba_hidden_act="silu",
    n_groups=8, conv_kernel=4, expand=2, chunk_size=128, use_conv_bias=True, use_bias=False, mamba_proj_bias=False,
    time_step_min=0.001, time_step_max=0.1, time_step_floor=1e-4, time_step_limit=[0.0, float("inf")],
    layer_norm_epsilon=1e-5, residual_in_fp32=False, rescale_prenorm_residual=True, tie_word_embeddings=False,
    num_hidden_layers=52, num_logits_to_keep=1, pad_token_id=0, bos_token_id=1, eos_token_id=2, dtype="bfloat16")

# ibm-ai-platform/Bamba-9B's config.json: 32 layers, attention at 9, 18 and 27 (half-rotary RoPE),
# Mamba-2 of 128 heads of 64 over d_inner = 2 · 4096, one group, d_state 128.
BAMBA_9B = dict(
    model_type="bamba", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, attn_layer_indices=[9, 18, 27], max_position_embeddings=262144,
    mamba_n_heads=128, mamba_d_head=64, mamba_d_state=128, mamba_n_groups=1, mamba_expand=2, mamba_d_conv=4,
    mamba_chunk_size=256, mamba_conv_bias=True, mamba_proj_bias=False, rms_norm_eps=1e-5, attention_bias=False,
    mlp_bias=False, hidden_act="silu", tie_word_embeddings=False, num_logits_to_keep=1, z_loss_coefficient=0.0,
    time_step_limit=[0.0, float("inf")], pad_token_id=0, bos_token_id=0, eos_token_id=0, dtype="bfloat16",
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})

# ibm-granite/granite-4.0-h-tiny's config.json: 40 layers, attention at 5, 15, 25 and 35 (no positions),
# 64 experts of 512 (top 6) beside a shared MLP of 1024, Mamba-2 of 48 heads of 64, Granite's multipliers.
GRANITE_4_H_TINY = dict(
    model_type="granitemoehybrid", vocab_size=100352, hidden_size=1536, intermediate_size=512,
    shared_intermediate_size=1024, num_hidden_layers=40, num_attention_heads=12, num_key_value_heads=4,
    layer_types=["attention" if i % 10 == 5 else "mamba" for i in range(40)], num_local_experts=64,
    num_experts_per_tok=6, mamba_n_heads=48, mamba_d_head=64, mamba_d_state=128, mamba_n_groups=1, mamba_expand=2,
    mamba_d_conv=4, mamba_chunk_size=256, mamba_conv_bias=True, mamba_proj_bias=False,
    time_step_limit=[0.0, float("inf")], embedding_multiplier=12.0, residual_multiplier=0.22,
    attention_multiplier=0.0078125, logits_scaling=6.0, position_embedding_type="nope", rms_norm_eps=1e-5,
    attention_bias=False, hidden_act="silu", max_position_embeddings=131072, tie_word_embeddings=True,
    output_router_logits=False, router_aux_loss_coef=0.0, pad_token_id=100256, bos_token_id=100257,
    eos_token_id=100257, dtype="bfloat16")


def hf_count(config) -> int:
    with torch.device("meta"):
        model = T.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # a tied head is the embedding's tensor, once


@pytest.mark.parametrize("published,low,high", [
    (NEMOTRON_H_8B, 7.9e9, 8.3e9), (BAMBA_9B, 9.3e9, 9.9e9), (GRANITE_4_H_TINY, 6.6e9, 7.2e9),
])
def test_published_configs_import_with_transformers_parameter_count(published, low, high):
    text = spec_from_config(dict(published), name=published["model_type"])
    facts = compute_facts(compile_spec(text).graph)
    config = T.AutoConfig.for_model(**published)
    assert facts.params_total == hf_count(config)
    assert low < facts.params_total < high, facts.params_total


@pytest.mark.parametrize("case", ["nemotron_h", "nemotron_h-biases-tied", "nemotron_h-moe", "bamba-biases-tied",
                                  "granitemoehybrid"])
def test_greedy_generation_matches(case):
    hf, ours = _pair(case)
    prompt = torch.randint(1, 97, (1, 6))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    assert torch.equal(ours.generate(prompt, 10), ref)


@pytest.mark.parametrize("case", ["bamba", "granitemoehybrid-dense-rope"])
def test_cached_greedy_with_a_dt_clamp_equals_transformers_full_forward(case):
    hf, ours = _pair(case)
    for seed in range(3):
        torch.manual_seed(seed)
        prompt = torch.randint(1, 97, (1, 6))
        got = ours.generate(prompt, 10)
        with torch.no_grad():
            full = hf(got).logits  # transformers' prefill path, which clamps dt
        assert torch.equal(full[0, 5:-1].argmax(-1), got[0, 6:])


def _nemotron_h(**changes):
    config_cls, model_cls, kwargs = CASES["nemotron_h"]
    config = config_cls(**dict(kwargs, **changes))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return perturb(model_cls(config)).eval()


def test_nemotron_h_clamps_dt_below_at_time_step_min():
    """A time_step_min that bites (most steps are below 2): the logits still match, and the
    same weights without the clamp give other logits, so the mapping is not vacuous."""
    hf = _nemotron_h(time_step_min=2.0)
    assert "dt_limit = [2, none]" in spec_from_config(hf.config)
    ids = torch.randint(0, 97, (2, 13))
    ours = from_hf(hf).eval()
    with torch.no_grad():
        ref = hf(ids).logits
        torch.testing.assert_close(ours(ids), ref, atol=1e-4, rtol=1e-4)
        for module in ours.modules():
            if hasattr(module, "dt_limit"):
                module.dt_limit = (0.0, None)
        assert (ours(ids) - ref).abs().max() > 1e-2


def test_nemotron_h_d_inner_is_heads_times_head_dim():
    text = spec_from_config(_nemotron_h().config)
    assert "heads = 6, head_dim = 8" in text and "expand" not in text  # 48 channels over a d_model of 32


@pytest.mark.parametrize("model_type,changes,key", [
    ("nemotron_h", dict(layers_block_type=["linear_attention", "moe"], moe_latent_size=64), "moe_latent_size"),
    ("nemotron_h", dict(mamba_hidden_act="gelu"), "mamba_hidden_act"),
    ("nemotron_h", dict(mlp_hidden_act="quick_gelu"), "mlp_hidden_act"),
    ("bamba", dict(z_loss_coefficient=0.1), "z_loss_coefficient"),
    ("bamba", dict(hidden_act="gelu"), "hidden_act"),
    ("bamba", dict(time_step_limit=[0.5, 0.1]), "time_step_limit"),
    ("granitemoehybrid", dict(position_embedding_type="alibi"), "position_embedding_type"),
    ("granitemoehybrid", dict(output_router_logits=True), "output_router_logits"),
    ("granitemoehybrid", dict(residual_multiplier=-1.0), "residual_multiplier"),
])
def test_values_archlang_cannot_compute_are_refused_naming_the_key(model_type, changes, key):
    published = {"nemotron_h": NEMOTRON_H_8B, "bamba": BAMBA_9B, "granitemoehybrid": GRANITE_4_H_TINY}[model_type]
    config = dict(published, **changes)
    if "layers_block_type" in changes:
        config.pop("hybrid_override_pattern")
        config.pop("num_hidden_layers")
    with pytest.raises(ArchError) as info:
        spec_from_config(config)
    assert repr(key) in info.value.message, info.value.message


@pytest.mark.parametrize("model_type", ["nemotron_h", "bamba", "granitemoehybrid"])
def test_export_refuses_a_hybrid_without_attention(model_type):
    """transformers' hybrid cache needs an attention layer: without one its first cached
    forward fails, so the checkpoint is not written."""
    ffn = "" if model_type == "nemotron_h" else "ffn = swiglu(hidden = 48)"
    spec = f"""model m {{
    vocab = 97
    d_model = 32
    context = 64
    final_norm = rmsnorm(eps = 1e-5)
    block mamba {{
        norm = rmsnorm(eps = 1e-5)
        ssm = mamba2(d_state = 8, heads = 4, head_dim = 16, expand = 2, chunk = 4, dt_limit = [0.01, none])
        {ffn}
    }}
    layers = mamba * 2
}}"""
    with pytest.raises(ArchError, match="no attention layer"):
        export_config(load_model(spec), model_type)


def test_nemotron_h_loads_nvidia_checkpoint_names(tmp_path):
    """NVIDIA's checkpoint files name the model `backbone` and keep one tensor per expert
    (transformers renames and stacks them on load): archlang reads them as they are."""
    from safetensors.torch import save_file

    from archlang.interop.hf import load_hf_checkpoint

    hf = _pair("nemotron_h-moe")[0]
    state = {}
    for name, tensor in hf.state_dict().items():
        name = name.replace("model.", "backbone.", 1)
        if ".experts." in name and name.endswith(("up_proj", "down_proj")):
            for j, expert in enumerate(tensor.unbind(0)):
                state[name.replace(".experts.", f".experts.{j}.") + ".weight"] = expert.contiguous()
        else:
            state[name] = tensor.contiguous()
    assert "backbone.layers.1.mixer.experts.7.down_proj.weight" in state
    hf.config.to_json_file(tmp_path / "config.json")
    save_file(state, tmp_path / "model.safetensors")
    ours = load_hf_checkpoint(tmp_path).eval()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
