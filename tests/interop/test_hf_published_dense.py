"""Parameter totals of specs imported from the published configs of well-known checkpoints:
`archc stats`' params_total equals the count of the transformers model of the same config,
built on the meta device (no weights are downloaded: the hyper-parameters are written here)."""

import warnings

import pytest
import torch

from archlang.api import compile_spec
from archlang.compiler import compute_facts
from archlang.interop.hf import spec_from_config

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# config.json of each checkpoint, as published (keys that only name tokens or the version dropped)
PUBLISHED = {
    "google/gemma-7b": {
        "model_type": "gemma", "architectures": ["GemmaForCausalLM"], "attention_bias": False, "head_dim": 256,
        "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3072,
        "intermediate_size": 24576, "max_position_embeddings": 8192, "num_attention_heads": 16,
        "num_hidden_layers": 28, "num_key_value_heads": 16, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "torch_dtype": "bfloat16", "vocab_size": 256000},
    "bigcode/starcoder2-7b": {
        "model_type": "starcoder2", "architectures": ["Starcoder2ForCausalLM"], "attention_dropout": 0.1,
        "residual_dropout": 0.1, "embedding_dropout": 0.1, "bos_token_id": 0, "eos_token_id": 0,
        "hidden_act": "gelu_pytorch_tanh", "hidden_size": 4608, "initializer_range": 0.018042,
        "intermediate_size": 18432, "layer_norm_epsilon": 1e-05, "max_position_embeddings": 16384,
        "mlp_type": "default", "norm_epsilon": 1e-05, "norm_type": "layer_norm", "num_attention_heads": 36,
        "num_hidden_layers": 32, "num_key_value_heads": 4, "rope_theta": 1000000, "sliding_window": 4096,
        "torch_dtype": "bfloat16", "use_bias": True, "use_cache": True, "vocab_size": 49152},
    "ibm-granite/granite-3.0-8b-base": {
        "model_type": "granite", "architectures": ["GraniteForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.1, "attention_multiplier": 0.0078125, "bos_token_id": 0, "embedding_multiplier": 12.0,
        "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 12800, "logits_scaling": 16.0, "max_position_embeddings": 4096, "mlp_bias": False,
        "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 8, "pad_token_id": 0,
        "residual_multiplier": 0.22, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 49155},
    "ibm-granite/granite-3.0-1b-a400m-base": {
        "model_type": "granitemoe", "architectures": ["GraniteMoeForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.1, "attention_multiplier": 0.015625, "bos_token_id": 0, "embedding_multiplier": 12.0,
        "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
        "intermediate_size": 512, "logits_scaling": 6.0, "max_position_embeddings": 4096, "num_attention_heads": 16,
        "num_experts_per_tok": 8, "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
        "output_router_logits": False, "pad_token_id": 0, "residual_multiplier": 0.22, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 10000, "router_aux_loss_coef": 0.0, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 49155},
    "EleutherAI/pythia-1.4b": {
        "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
        "hidden_act": "gelu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
        "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "num_attention_heads": 16,
        "num_hidden_layers": 24, "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
        "torch_dtype": "float16", "use_cache": True, "use_parallel_residual": True, "vocab_size": 50304},
}


def hf_param_count(config) -> int:
    with torch.device("meta"):
        model = T.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # tied weights are one parameter


@pytest.mark.parametrize("checkpoint", sorted(PUBLISHED))
def test_params_total_equals_the_transformers_count(checkpoint):
    from archlang.interop.hf import config_from_dict

    config = config_from_dict(dict(PUBLISHED[checkpoint]))
    facts = compute_facts(compile_spec(spec_from_config(config, name="published")).graph)
    assert facts.params_total == hf_param_count(config)


def test_granite_spec_states_its_multipliers():
    from archlang.interop.hf import config_from_dict

    text = spec_from_config(config_from_dict(dict(PUBLISHED["ibm-granite/granite-3.0-8b-base"])), name="granite")
    for line in ("embedding_scale = 12", "residual_scale = 0.22", "logit_scale = 0.0625", "scale = 0.0078125"):
        assert line in text, text


# A value each family has that archlang cannot compute exactly is refused, naming the key.
REFUSED = [
    ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ("starcoder2", {"hidden_act": "gelu_10"}, "hidden_act"),
    ("starcoder2", {"rope_parameters": {"rope_type": "proportional", "rope_theta": 10000.0}}, "rope_parameters"),
    ("granite", {"residual_multiplier": -0.5}, "residual_multiplier"),
    ("granite", {"logits_scaling": 0.0}, "logits_scaling"),
    ("granitemoe", {"output_router_logits": True}, "output_router_logits"),
    ("gpt_neox", {"rope_parameters": {"rope_type": "proportional", "rope_theta": 10000.0}}, "rope_parameters"),
    ("gpt_neox", {"hidden_act": "quick_gelu"}, "hidden_act"),
]


@pytest.mark.parametrize("model_type,overrides,key", REFUSED)
def test_values_archlang_cannot_compute_are_refused_by_name(model_type, overrides, key):
    from archlang.spec import ArchError

    config = {"model_type": model_type, "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48,
              "num_hidden_layers": 2, "num_attention_heads": 4, **overrides}
    if model_type != "gpt_neox":  # multi-head attention only
        config["num_key_value_heads"] = 2
    with pytest.raises(ArchError, match=key):
        spec_from_config(config)


def test_pythia_spec_is_parallel_with_a_quarter_of_each_head_rotated():
    from archlang.interop.hf import config_from_dict

    text = spec_from_config(config_from_dict(dict(PUBLISHED["EleutherAI/pythia-1.4b"])), name="pythia")
    assert "parallel = true" in text and "position = rope(theta = 10000, dim = 32)" in text, text


def test_gpt_neox_query_key_value_split_is_exact_and_reversible():
    """Rows of query_key_value are [q_h, k_h, v_h] per head; the rule takes them apart and puts
    them back bit for bit, for the weight and the bias."""
    from archlang.interop.hf_weights import Rule

    heads, head_dim, d = 4, 3, 5
    rule = Rule(("q", "k", "v"), ("qkv",), "qkv_per_head", heads)
    for shape in ((3 * heads * head_dim, d), (3 * heads * head_dim,)):
        fused = torch.randn(shape)
        q, k, v = rule.to_ours([fused])
        per_head = fused.reshape(heads, 3, head_dim, *shape[1:])
        assert torch.equal(q.reshape(heads, head_dim, *shape[1:]), per_head[:, 0])
        assert torch.equal(v.reshape(heads, head_dim, *shape[1:]), per_head[:, 2])
        assert torch.equal(rule.to_theirs([q, k, v])[0], fused)


def test_gemma_rounds_its_embedding_scale_to_the_dtype_as_transformers_does():
    """In bf16 transformers multiplies by sqrt(d_model) rounded to bf16 (sqrt(32) = 5.65625):
    the imported model's embeddings are HF's bit for bit, and would not be unrounded."""
    from archlang.interop.hf import from_hf

    config = T.GemmaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    torch.manual_seed(0)
    hf = T.GemmaForCausalLM(config).to(torch.bfloat16).eval()
    ours = from_hf(hf).eval()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True).hidden_states[0]
        got = ours.embed_tokens(ids)
        unrounded = ours.embed.weight[ids] * 32**0.5
    assert got.dtype == torch.bfloat16 and torch.equal(got, ref)
    assert not torch.equal(unrounded, ref)
