"""The router seam: the Triton router does every routing the references do — plain top-k, the
correction bias that moves the choice but not the weights (DeepSeek-V3), and group-limited top-k
(V3's top-2-sum and V2's max group scores) — in inference and, with the weights gathered again
from differentiable scores, in training; and every modern MoE variant computes the same outputs
and gradients with its experts on the kernels as on the references."""

import pytest
import torch

from archlang.kernels import dispatch, reference
from archlang.kernels.router import route
from archlang.runtime.moe import MoE

from .conftest import DEVICE


def _calls(monkeypatch):
    calls = []
    kernel = dispatch._kernel

    def spy(module, name):
        calls.append((module, name))
        return kernel(module, name)

    monkeypatch.setattr(dispatch, "_kernel", spy)
    return calls


ROUTINGS = {
    "plain": (8, 3, dict()),
    "bias": (8, 3, dict(correction_bias=True)),
    "v3-groups": (16, 4, dict(correction_bias=True, n_group=4, topk_group=2)),
    "v3-uneven": (12, 3, dict(correction_bias=True, n_group=3, topk_group=2)),  # 3 groups of 4: padded tiles
    "v2-greedy": (12, 3, dict(n_group=6, topk_group=2, group_score="max")),
    "one-group-kept": (8, 2, dict(n_group=4, topk_group=1)),
    "floored-sum": (8, 3, dict(correction_bias=True, normalize_min=0.9)),  # ERNIE's moe_norm_min, large enough to act
}


def _inputs(experts, kw, n=37):
    g = torch.Generator().manual_seed(experts)
    logits = torch.randn(n, experts, generator=g).to(DEVICE)
    kw = dict(kw)
    if kw.pop("correction_bias", False):
        # of the scores' size, so the bias changes which experts win
        kw["correction_bias"] = (torch.randn(experts, generator=g) * 0.3).to(DEVICE)
    return logits, kw


@pytest.mark.parametrize("sigmoid", [True, False], ids=["sigmoid", "softmax"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalized", "raw"])
@pytest.mark.parametrize("name", sorted(ROUTINGS))
def test_kernel_routes_as_the_reference(name, sigmoid, normalize):
    experts, k, kw = ROUTINGS[name]
    logits, kw = _inputs(experts, kw)
    with torch.no_grad():
        got = route(logits, k, sigmoid=sigmoid, normalize=normalize, scale=2.5, **kw)
    ref = reference.route(logits, k, sigmoid=sigmoid, normalize=normalize, scale=2.5, **kw)
    assert torch.equal(got[2], ref[2])
    torch.testing.assert_close(got[0], ref[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1], atol=1e-6, rtol=1e-5)


def test_the_bias_and_the_groups_change_the_choice():
    """Not vacuous: each feature chooses other experts than plain top-k on these inputs."""
    for name in ("bias", "v3-groups", "v2-greedy"):
        experts, k, kw = ROUTINGS[name]
        logits, kw = _inputs(experts, kw)
        plain = route(logits, k, sigmoid=True, normalize=True, scale=1.0)[2]
        assert not torch.equal(route(logits, k, sigmoid=True, normalize=True, scale=1.0, **kw)[2], plain), name


def test_chosen_experts_lie_in_the_kept_groups():
    experts, k, kw = ROUTINGS["one-group-kept"]
    logits, kw = _inputs(experts, kw)
    index = route(logits, k, sigmoid=True, normalize=True, scale=1.0, **kw)[2]
    assert torch.equal(index[:, 0] // 2, index[:, 1] // 2)  # both from the one group kept


@pytest.mark.parametrize("name", ["plain", "v3-groups", "floored-sum"])
def test_training_gradients_equal_the_references(name):
    experts, k, kw = ROUTINGS[name]
    logits, kw = _inputs(experts, kw)
    upstream = torch.randn(logits.shape[0], k, device=DEVICE)
    grads = []
    for fn in (route, reference.route):
        z = logits.clone().requires_grad_()
        probs, weights, _ = fn(z, k, sigmoid=True, normalize=True, scale=2.5, **kw)
        ((weights * upstream).sum() + probs.pow(2).sum()).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_refuses_impossible_groupings():
    logits = torch.randn(3, 8, device=DEVICE)
    for kw in (dict(n_group=3), dict(n_group=4, topk_group=5), dict(n_group=4, topk_group=1, group_score="mean")):
        with pytest.raises(ValueError):
            route(logits, 2, sigmoid=True, normalize=True, scale=1.0, **kw)
    with pytest.raises(ValueError):  # 3 experts wanted from one kept group of 2
        route(logits, 3, sigmoid=True, normalize=True, scale=1.0, n_group=4, topk_group=1)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("name", ["plain", "v3-groups"])
def test_dispatch_takes_the_kernel(monkeypatch, name, training):
    calls = _calls(monkeypatch)
    experts, k, kw = ROUTINGS[name]
    logits, kw = _inputs(experts, kw)
    with dispatch.force("triton"), torch.set_grad_enabled(training):
        dispatch.route(logits.requires_grad_(training), k, sigmoid=True, normalize=True, scale=1.0, **kw)
    assert ("router", "route") in calls


VARIANTS = [
    dict(router="sigmoid", correction_bias=True, n_group=4, topk_group=2, routed_scale=2.5),
    dict(router="softmax", normalize_top_k=False, n_group=2, topk_group=1, group_score="max"),
    dict(router="sigmoid", normalize_top_k=False, scale_input=True),
    dict(expert_act="swiglu_oai", expert_bias=True, router_bias=True, glu_limit=0.6),
]


@pytest.mark.parametrize("kw", VARIANTS, ids=["deepseek_v3", "deepseek_v2", "llama4", "gpt_oss"])
def test_moe_variants_on_kernels(kw):
    torch.manual_seed(0)
    kw = {"expert_kind": "swiglu", "expert_act": "silu", "expert_hidden": 12, **kw}
    m = MoE(16, 8, 3, **kw).to(DEVICE)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(std=0.3)
        if m.e_score_correction_bias is not None:
            m.e_score_correction_bias.normal_(std=0.3)
    x = torch.randn(2, 9, 16, device=DEVICE)
    results = {}
    for mode in ("reference", "triton"):
        m.zero_grad()
        with dispatch.force(mode):
            out = m(x)
            out.pow(2).mean().backward()
        results[mode] = out.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}
    torch.testing.assert_close(results["triton"][0], results["reference"][0], atol=1e-4, rtol=1e-4)
    for n, g in results["reference"][1].items():
        torch.testing.assert_close(results["triton"][1][n], g, atol=1e-4, rtol=1e-3, msg=n)
