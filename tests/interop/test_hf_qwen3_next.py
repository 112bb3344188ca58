"""Qwen3-Next beyond logit parity (the CASES of test_hf_parity.py): cached greedy generation equals
Hugging Face's, the imported spec says what the family is, the interleaved projections convert
exactly both ways, and the config values archlang cannot express are refused by name."""

import warnings

import pytest
import torch

from archlang.interop.hf import from_hf, hf_to_archlang, spec_from_config
from archlang.interop.hf_weights import to_archlang, to_hf
from archlang.spec import ArchError

from .test_hf_parity import CASES, _pair, hf_model

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

QWEN3_NEXT = sorted(case for case in CASES if case.startswith("qwen3_next"))


@pytest.mark.parametrize("case", QWEN3_NEXT)
def test_greedy_generation_matches(case):
    hf, ours = _pair(case)
    prompt = torch.randint(1, 97, (1, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    assert torch.equal(ours.generate(prompt, 10), ref)


def test_imported_spec_states_the_family():
    config = T.Qwen3NextConfig(**CASES["qwen3_next"][2])
    text = spec_from_config(config, name="tiny_qwen3_next")
    assert ("ssm = gated_deltanet(key_heads = 2, value_heads = 4, key_dim = 8, value_dim = 12, conv_size = 3, "
            "norm_eps = 1e-06)") in text
    assert "output_gate = true" in text and "qk_norm = rmsnorm(eps = 1e-06, unit_offset = true)" in text
    assert "norm = rmsnorm(eps = 1e-06, unit_offset = true)" in text
    assert "position = rope(theta = 10000, dim = 4)" in text  # a quarter of head_dim 16
    assert "shared_gate = true" in text
    assert "layers = [linear_attention, linear_attention_dense, linear_attention, full_attention]" in text


@pytest.mark.parametrize("case", QWEN3_NEXT)
def test_weights_convert_exactly_both_ways(case):
    hf = hf_model(case)
    theirs = dict(hf.state_dict())
    ours = hf_to_archlang(hf)
    back = to_hf(hf.config, ours, set(theirs))
    for name, tensor in back.items():  # the checkpoint files' layout: experts one tensor each
        if name in theirs:
            assert torch.equal(tensor, theirs[name]), name
    assert any(".in_proj_qkvz." in name for name in back) and any(".self_attn.q_proj." in name for name in back)
    again = to_archlang(hf.config, back)
    assert set(again) == set(ours) and all(torch.equal(again[k], ours[k]) for k in ours)


def test_the_output_gate_and_the_interleaving_matter():
    """Parity depends on splitting q_proj into query and gate per head and qkvz per key head:
    swapping two key heads' rows, or the gate with the query, changes the logits."""
    hf = hf_model("qwen3_next")
    ours = from_hf(hf, passes="").eval()  # unfused: q_proj as archlang names it
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        ref = ours(ids)
        q, g = ours.layers[3].q_proj.weight, ours.layers[3].attn_gate_proj.weight
        query, gate = q.clone(), g.clone()
        q.copy_(gate), g.copy_(query)
        assert not torch.allclose(ours(ids), ref, atol=1e-3)
        q.copy_(query), g.copy_(gate)
        torch.testing.assert_close(ours(ids), ref)
        k = ours.layers[0].ssm.k_proj
        k.copy_(torch.cat(k.chunk(2, dim=0)[::-1]))
        assert not torch.allclose(ours(ids), ref, atol=1e-3)


@pytest.mark.parametrize("overrides,key", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"output_router_logits": True}, "output_router_logits"),
    ({"layer_types": ["linear_attention", "sliding_attention"]}, "layer_types"),
    ({"layer_types": ["linear_attention"]}, "layer_types"),
])
def test_values_archlang_cannot_express_are_refused(overrides, key):
    kwargs = dict(CASES["qwen3_next"][2], num_hidden_layers=2, mlp_only_layers=[])
    config = {**T.Qwen3NextConfig(**kwargs).to_dict(), **overrides}
    with pytest.raises(ArchError, match=key):
        spec_from_config(config)
