"""The Triton selective scan against the chunked reference: outputs, final state, and gradients
of every input, with and without an initial state, at ragged channel counts."""

import pytest
import torch

from archlang.kernels import reference
from archlang.kernels.selective_scan import selective_scan

from .conftest import DEVICE, assert_model_matches_on_kernels


@pytest.mark.parametrize("di,n,t", [(37, 8, 13), (16, 16, 5), (20, 6, 1)])
@pytest.mark.parametrize("with_state", [False, True])
def test_selective_scan(di, n, t, with_state):
    b = 2
    inputs = [
        torch.randn(b, di, t, device=DEVICE),  # u
        torch.rand(b, di, t, device=DEVICE) * 0.5,  # delta
        -torch.rand(di, n, device=DEVICE) * 2,  # A
        torch.randn(b, t, n, device=DEVICE),  # B
        torch.randn(b, t, n, device=DEVICE),  # C
        torch.randn(di, device=DEVICE),  # D
        torch.randn(b, di, n, device=DEVICE) if with_state else None,
    ]
    a = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    r = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    ya, ha = selective_scan(*a)
    yr, hr = reference.selective_scan(*r, chunk=4)
    torch.testing.assert_close(ya, yr, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ha, hr, atol=1e-4, rtol=1e-4)
    gy, gh = torch.randn_like(yr), torch.randn_like(hr)
    torch.autograd.backward((ya, ha), (gy, gh))
    torch.autograd.backward((yr, hr), (gy, gh))
    for x, y in zip(a, r):
        if x is not None:
            torch.testing.assert_close(x.grad, y.grad, atol=1e-4, rtol=1e-4)


def test_hybrid_model_on_kernels():
    assert_model_matches_on_kernels("tiny_jamba.arch", "tiny_jamba")
