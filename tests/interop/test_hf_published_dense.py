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
