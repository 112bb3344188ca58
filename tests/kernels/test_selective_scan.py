"""The chunked reference scan against the recurrence as written, and the Triton selective scan
against the reference: outputs, final state, and gradients of every input, with and without an
initial state, at ragged channel counts."""

import pytest
import torch

from archlang.kernels import reference
from archlang.kernels.selective_scan import selective_scan

from .conftest import DEVICE, assert_model_matches_on_kernels


def _recurrence(u, delta, A, B, C, D, h):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = C_t . h_t + D u_t, one step at a time."""
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, t]
        ys.append((h * C[:, None, t]).sum(-1) + D * u[:, :, t])
    return (torch.stack(ys, dim=2) if ys else u.new_zeros(*u.shape)), h


@pytest.mark.parametrize("t,chunk", [(13, 4), (8, 8), (5, 64), (0, 4)])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_reference_scan_is_the_recurrence(t, chunk, with_state, grad):
    """Both of the reference's paths: in place without autograd, step tensors with it."""
    b, di, n = 2, 6, 4
    u, delta = torch.randn(b, di, t), torch.rand(b, di, t)
    A, B, C, D = -torch.rand(di, n) * 2, torch.randn(b, t, n), torch.randn(b, t, n), torch.randn(di)
    state = torch.randn(b, di, n) if with_state else None
    before = state.clone() if with_state else None
    with torch.set_grad_enabled(grad):
        u.requires_grad_(grad)
        y, h = reference.selective_scan(u, delta, A, B, C, D, state, chunk=chunk)
    y_ref, h_ref = _recurrence(u.detach(), delta, A, B, C, D, state if with_state else torch.zeros(b, di, n))
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
    assert h.shape == (b, di, n) and h.is_contiguous() and h._base is None  # not a view into a chunk
    if with_state:
        assert torch.equal(state, before)  # the caller's state is never written
    if grad and t:
        y.sum().backward()
        assert u.grad is not None and torch.isfinite(u.grad).all()


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
