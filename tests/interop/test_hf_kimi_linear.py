"""Kimi Linear beyond logit parity (the CASES of test_hf_parity.py): cached greedy generation equals
Hugging Face's, the imported spec says what the family is, the weights convert exactly both ways,
and the parity depends on the routing and the per-channel decay being imported right."""

import warnings

import pytest
import torch

from archlang.interop.hf import hf_to_archlang, spec_from_config
from archlang.interop.hf_weights import to_archlang, to_hf

from .test_hf_parity import CASES, _pair, hf_model

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

KIMI = sorted(case for case in CASES if case.startswith("kimi_linear"))


@pytest.mark.parametrize("case", KIMI)
def test_greedy_generation_matches(case):
    hf, ours = _pair(case)
    prompt = torch.randint(1, 97, (1, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    assert torch.equal(ours.generate(prompt, 10), ref)


def test_imported_spec_states_the_family():
    text = spec_from_config(T.KimiLinearConfig(**CASES["kimi_linear"][2]), name="tiny_kimi")
    assert "ssm = kda(heads = 2, head_dim = 16, conv_size = 3, norm_eps = 1e-05)" in text
    assert "attention = mla(heads = 4, kv_lora_rank = 16, rope_head_dim = 8, nope_head_dim = 8, v_head_dim = 8)" in text
    assert "router = sigmoid, correction_bias = true, groups = 2, topk_groups = 1" in text
    assert "position" not in text and "layers = [linear_dense, linear, attn, linear]" in text
    tied = spec_from_config(T.KimiLinearConfig(**CASES["kimi_linear-q-lora"][2]), name="tiny_kimi")
    assert "tie_embeddings" not in tied  # transformers ties nothing for kimi_linear


@pytest.mark.parametrize("case", KIMI)
def test_weights_convert_exactly_both_ways(case):
    hf = hf_model(case)
    theirs = dict(hf.state_dict())
    ours = hf_to_archlang(hf)
    back = to_hf(hf.config, ours, set(theirs))
    for name, tensor in back.items():  # the checkpoint files' layout (Moonshot's): experts one tensor each, ...
        if name in theirs:
            assert torch.equal(tensor, theirs[name]), name
    # ... the forget gate's weights under self_attn, one conv per q, k and v, every FFN under block_sparse_moe
    assert any(name.endswith("self_attn.A_log") and back[name].shape == (1, 1, hf.config.linear_num_heads, 1)
               for name in back)
    assert any(name.endswith("self_attn.q_conv1d.weight") for name in back)
    assert any(".block_sparse_moe.experts.0.w1." in name for name in back)
    assert not any(".mlp." in name or "forget_gate" in name for name in back)
    heads = hf.config.linear_num_heads  # HF's (1, 1, heads, 1) A_log is ours, flat
    assert all(v.shape == (heads,) for k, v in ours.items() if k.endswith("ssm.A_log"))
    again = to_archlang(hf.config, back)
    assert set(again) == set(ours) and all(torch.equal(again[k], ours[k]) for k in ours)


@pytest.mark.parametrize("knob", ["e_score_correction_bias", "per_head_decay"])
def test_parity_is_not_vacuous(knob):
    """The perturbed correction bias changes which experts the tiny model chooses, and a decay
    averaged over each head's channels changes the output: the parity depends on both."""
    hf, ours = _pair("kimi_linear")
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        ref = hf(ids).logits
        for layer in ours.layers:
            moe, ssm = getattr(layer, "moe", None), getattr(layer, "ssm", None)
            if knob == "e_score_correction_bias" and moe is not None:
                moe.e_score_correction_bias.zero_()
            if knob == "per_head_decay" and ssm is not None:
                ssm.dt_bias.copy_(ssm.dt_bias.view(ssm.heads, -1).mean(-1, keepdim=True).expand(-1, ssm.key_dim)
                                  .reshape(-1))
                ssm.f_b_proj.zero_()
        assert not torch.allclose(ours(ids), ref, atol=1e-3)
