"""moe(normalize_min = m): the top-k weights are divided by max(their sum, m), as ERNIE 4.5's
router does with moe_norm_min. Checked against transformers' Ernie4_5_MoeTopKRouter, with a
floor and a correction bias large enough that the floor acts on some tokens."""

import pytest
import torch

import archlang.runtime as rt
from archlang.api import compile_spec
from archlang.spec.errors import ArchError, ArchErrors

T = pytest.importorskip("transformers")
from transformers.models.ernie4_5_moe.modeling_ernie4_5_moe import Ernie4_5_MoeTopKRouter  # noqa: E402


@pytest.mark.parametrize("floor", [1e-12, 0.3])
def test_routing_matches_ernie_router(floor):
    d, e, k = 16, 8, 3
    config = T.Ernie4_5_MoeConfig(hidden_size=d, moe_num_experts=e, moe_k=k, moe_norm_min=floor)
    torch.manual_seed(0)
    theirs = Ernie4_5_MoeTopKRouter(config)
    with torch.no_grad():
        theirs.weight.normal_(0, 1.0)
        theirs.moe_statics.e_score_correction_bias.normal_(0, 0.5)
    ours = rt.MoE(d, e, k, expert_kind="swiglu", expert_act="silu", expert_hidden=8, correction_bias=True,
                  normalize_min=floor)
    with torch.no_grad():
        ours.router.copy_(theirs.weight)
        ours.e_score_correction_bias.copy_(theirs.moe_statics.e_score_correction_bias[0])
    x = torch.randn(64, d)
    with torch.no_grad():
        _, ref_weights, ref_index = theirs(x)
        _, _, weights, index = ours.route(x)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-6)
    if floor == 0.3:  # the floor acted somewhere, so the test depends on it
        assert (weights.sum(-1) < 1 - 1e-3).any()


def _spec(moe: str) -> str:
    return f"""model m {{
    vocab = 97
    d_model = 32
    context = 64
    position = rope()
    final_norm = rmsnorm()
    block layer {{
        norm = rmsnorm()
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = moe(experts = 4, top_k = 2, expert = swiglu(hidden = 16), {moe})
    }}
    layers = layer * 2
}}"""


def test_the_floor_reaches_the_generated_module_only_when_set():
    assert "normalize_min=0.25" in compile_spec(_spec("normalize_min = 0.25")).source
    assert "normalize_min" not in compile_spec(_spec("aux_loss = 0.01")).source


def test_a_floor_without_renormalisation_is_refused_where_written():
    with pytest.raises((ArchError, ArchErrors)) as err:
        compile_spec(_spec("normalize_top_k = false, normalize_min = 0.25"))
    assert "normalize_min" in str(err.value) and ":10:" in str(err.value)
