"""RWKV-4 against Hugging Face's rwkv: the published 169M model's parameter count and state from its
config, cached greedy generation equal to transformers' (the logits are compared in
test_hf_parity.py's CASES), the inference-time rescaling that archlang folds into the norms' eps,
and the config values and specs that are refused."""

import json
import warnings

import pytest
import torch

from archlang.api import compile_spec, load_model
from archlang.compiler.facts import compute_facts
from archlang.interop.hf import spec_from_config
from archlang.interop.hf_export import export_config
from archlang.spec.errors import ArchError

from .test_hf_export import CASES as EXPORT_CASES
from .test_hf_parity import _pair

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# RWKV/rwkv-4-169m-pile's config.json
RWKV4_169M = """{
  "architectures": ["RwkvForCausalLM"], "attention_hidden_size": 768, "bos_token_id": 0, "context_length": 1024,
  "eos_token_id": 0, "hidden_size": 768, "intermediate_size": 3072, "layer_norm_epsilon": 1e-05,
  "model_type": "rwkv", "num_hidden_layers": 12, "rescale_every": 6, "tie_word_embeddings": false,
  "torch_dtype": "float32", "transformers_version": "4.29.0.dev0", "use_cache": true, "vocab_size": 50277
}"""


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    path = tmp_path_factory.mktemp("rwkv") / "config.json"
    path.write_text(RWKV4_169M)
    return spec_from_config(path, name="rwkv_4_169m_pile")


def test_rwkv_4_169m_parameter_count(imported):
    values = {k: v for k, v in json.loads(RWKV4_169M).items() if k not in ("model_type", "torch_dtype")}
    with torch.device("meta"):
        hf = T.RwkvForCausalLM(T.RwkvConfig(**values))
    facts = compute_facts(compile_spec(imported).graph)
    assert facts.params_total == sum(p.numel() for p in hf.parameters()) == 169_342_464


def test_rwkv_4_169m_state_is_the_shifts_and_the_wkv_state(imported):
    facts = compute_facts(compile_spec(imported).graph)  # float32
    # per layer: two token-shift vectors (time and channel mixing) and the WKV numerator,
    # denominator and running maximum, 768 values each
    assert facts.ssm_state_bytes_per_sequence == 12 * (2 * 768 * 4 + 3 * 768 * 4)
    assert facts.kv_cache_bytes_per_token == 0


def test_rescale_every_becomes_the_norms_eps(imported):
    """rescale_every = 6 over 12 layers: the second six layers' norms see the stream halved once
    (eps · 4), ln_out twice (1e-5 · 16)."""
    assert "layers = layer * 6 + layer_rescaled_1 * 6" in imported
    assert "norm = layernorm(eps = 4e-05)" in imported
    assert "final_norm = layernorm(eps = 0.00016)" in imported
    assert "embedding_norm = layernorm(eps = 1e-05)" in imported


@pytest.mark.parametrize("case", ["rwkv", "rwkv-rescaled-tied"])
def test_greedy_generation_matches(case):
    hf, ours = _pair(case)
    prompt = torch.randint(1, 97, (1, 6))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    got = ours.generate(prompt, 10)
    assert torch.equal(got, ref)


def test_rescaling_parity_is_not_vacuous():
    """transformers rescales at inference only: in training mode its logits differ from the eval
    ones that archlang matches (test_hf_parity.py), so the eps folding is what makes them equal."""
    hf, ours = _pair("rwkv-rescaled-tied")
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        ref = hf(ids).logits
        hf.train()
        unscaled = hf(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert (got - unscaled).abs().max() > 1e-3


@pytest.mark.parametrize("value", [2.5, "6"])
def test_a_rescale_every_that_is_not_an_integer_is_refused(value):
    config = {"model_type": "rwkv", "vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 2,
              "rescale_every": value}
    with pytest.raises(ArchError, match="rescale_every"):
        spec_from_config(config)


def test_norm_eps_that_no_rescale_every_gives_are_refused_on_export():
    text, _ = EXPORT_CASES["rwkv"]
    with pytest.raises(ArchError, match="no rescale_every gives"):
        export_config(load_model(text.replace("final_norm = layernorm(eps = 1e-5)", "final_norm = layernorm(eps = 1e-6)")),
                      "rwkv")
    with pytest.raises(ArchError, match="embedding_norm = layernorm"):
        export_config(load_model(text.replace("embedding_norm = layernorm(eps = 1e-6)", "")), "rwkv")
