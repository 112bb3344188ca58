"""The Triton grouped expert matmul against the reference: ragged and empty groups, outputs and
gradients of rows and weights; and a MoE model run on the kernels."""

import pytest
import torch

from archlang.kernels import reference
from archlang.kernels.grouped_matmul import grouped_matmul

from .conftest import DEVICE, assert_model_matches_on_kernels


@pytest.mark.parametrize("counts", [[5, 0, 17, 3], [1, 1, 1, 1, 40], [0, 0, 9]])
def test_grouped_matmul(counts):
    counts_t = torch.tensor(counts, device=DEVICE)
    rows = sum(counts)
    expert_of = torch.repeat_interleave(torch.arange(len(counts), device=DEVICE), counts_t)
    x = torch.randn(rows, 24, device=DEVICE)
    w = torch.randn(len(counts), 37, 24, device=DEVICE)
    a = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    r = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    ya = grouped_matmul(a[0], a[1], counts_t, expert_of)
    yr = reference.grouped_matmul(r[0], r[1], counts_t, expert_of)
    torch.testing.assert_close(ya, yr, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(yr)
    ya.backward(g)
    yr.backward(g)
    for p, q in zip(a, r):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("spec,name", [("tiny_mixtral.arch", "tiny_mixtral"), ("tiny_deepseek.arch", "tiny_deepseek")])
def test_moe_models_on_kernels(spec, name):
    assert_model_matches_on_kernels(spec, name)


@pytest.mark.parametrize("sigmoid,normalize,k,e", [(False, True, 2, 8), (False, False, 6, 64), (True, True, 1, 5),
                                                   (True, False, 3, 7)])
def test_router_matches_reference(sigmoid, normalize, k, e):
    from archlang.kernels.router import route

    logits = torch.randn(37, e, device=DEVICE)
    got = route(logits, k, sigmoid=sigmoid, normalize=normalize, scale=1.5)
    ref = reference.route(logits, k, sigmoid=sigmoid, normalize=normalize, scale=1.5)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
