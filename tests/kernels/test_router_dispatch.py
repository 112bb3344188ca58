"""The router seam: the Triton router serves plain top-k routing only; a correction bias or expert
groups go to the reference even when the kernels are forced; and every modern MoE variant computes
the same outputs and gradients with its experts on the kernels as on the references."""

import pytest
import torch

from archlang.kernels import dispatch, reference
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


def test_plain_routing_uses_the_kernel(monkeypatch):
    calls = _calls(monkeypatch)
    logits = torch.randn(21, 8, device=DEVICE)
    with dispatch.force("triton"), torch.no_grad():
        dispatch.route(logits, 2, sigmoid=True, normalize=True, scale=1.0)
    assert ("router", "route") in calls


@pytest.mark.parametrize("kw", [dict(correction_bias=torch.randn(8)), dict(n_group=4, topk_group=2),
                                dict(n_group=2, topk_group=1, group_score="max")])
def test_bias_and_groups_never_take_the_kernel(monkeypatch, kw):
    calls = _calls(monkeypatch)
    logits = torch.randn(21, 8, device=DEVICE)
    kw = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in kw.items()}
    with dispatch.force("triton"), torch.no_grad():
        got = dispatch.route(logits, 3, sigmoid=True, normalize=True, scale=2.5, **kw)
    ref = reference.route(logits, 3, sigmoid=True, normalize=True, scale=2.5, **kw)
    assert ("router", "route") not in calls
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


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
