"""The Triton chunked SSD (kernels/ssd.py) against the reference `reference.ssd_chunked`: the
output, the final state and the gradient of every input (x, dt, A, B, C, the initial state),
float32, with and without an initial state, T a multiple of the kernel's chunk or not, one chunk
or several, groups of B/C shared by several heads, channel counts over one channel block; and a
whole Mamba-2 model on the kernels against the same model on the references."""

import pytest
import torch

from archlang.kernels import dispatch, reference
from archlang.kernels.ssd import ssd_chunked

from .conftest import DEVICE, assert_model_matches_on_kernels


def _inputs(b, t, heads, groups, p, n, with_state, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randn(b, t, heads, p, generator=g),  # x
        torch.rand(b, t, heads, generator=g) * 0.5 + 0.01,  # dt, positive as after the softplus
        -(torch.rand(heads, generator=g) * 2 + 0.1),  # A, negative
        torch.randn(b, t, groups, n, generator=g),  # B
        torch.randn(b, t, groups, n, generator=g),  # C
        torch.randn(b, heads, p, n, generator=g) if with_state else None,  # initial state
    ]
    return [x.to(DEVICE) if x is not None else None for x in inputs]


def _close(actual, expected, name):
    """float32 at atol 1e-4 relative to the reference's largest entry and rtol 1e-4: the gradients
    of dt and A sum thousands of products, whose rounding grows with their magnitude."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, atol=1e-4 * scale, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def _check(b, t, heads, groups, p, n, chunk, with_state):
    inputs = _inputs(b, t, heads, groups, p, n, with_state)
    kernel = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    ref = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    y_k, h_k = ssd_chunked(*kernel[:5], chunk, kernel[5])
    y_r, h_r = reference.ssd_chunked(*ref[:5], chunk, ref[5])
    _close(y_k, y_r, "y")
    _close(h_k, h_r, "final state")
    g = torch.Generator().manual_seed(1)
    gy, gh = torch.randn(y_r.shape, generator=g).to(DEVICE), torch.randn(h_r.shape, generator=g).to(DEVICE)
    torch.autograd.backward((y_k, h_k), (gy, gh))
    torch.autograd.backward((y_r, h_r), (gy, gh))
    for name, a, r in zip(("x", "dt", "A", "B", "C", "initial state"), kernel, ref):
        if a is not None:
            assert a.grad is not None and a.grad.dtype == a.dtype, name
            _close(a.grad, r.grad, f"d{name}")


@pytest.mark.parametrize("b,t,heads,groups,p,n,chunk,with_state", [
    (2, 37, 4, 2, 5, 3, 16, True),  # 3 chunks, the last ragged; 2 heads per group; P, N under a block
    (1, 16, 2, 1, 4, 6, 16, False),  # exactly one chunk, one group for both heads, no initial state
    (1, 20, 2, 2, 36, 4, 8, True),  # chunk 8 runs as 16; P over two channel blocks (partial sums)
])
def test_ssd_kernel_matches_reference(b, t, heads, groups, p, n, chunk, with_state):
    _check(b, t, heads, groups, p, n, chunk, with_state)


@pytest.mark.slow
@pytest.mark.parametrize("with_state", [False, True])
def test_ssd_kernel_matches_reference_at_model_sizes(with_state):
    _check(2, 150, 8, 2, 64, 32, 64, with_state)  # 3 chunks of 64, the last ragged


def _recurrence(x, dt, A, B, C, h):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t, y_t = h_t C_t, one step at a time, in float64."""
    heads, groups = x.shape[2], B.shape[2]
    B, C = (m.repeat_interleave(heads // groups, dim=2) for m in (B, C))  # (B, T, H, N)
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # (B, H, 1, 1)
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1), h


def test_ssd_kernel_is_the_recurrence():
    """Output and final state against the step-by-step recurrence (float64), an independent check."""
    x, dt, A, B, C, h0 = _inputs(2, 37, 4, 2, 5, 3, True, seed=2)
    y, h = ssd_chunked(x, dt, A, B, C, 16, h0)
    y_ref, h_ref = _recurrence(*(v.double() for v in (x, dt, A, B, C, h0)))
    _close(y.double(), y_ref, "y")
    _close(h.double(), h_ref, "final state")


def test_ssd_kernel_only_output_gradient():
    """A loss of y alone (no gradient reaches the final state) and no initial state."""
    x, dt, A, B, C, _ = _inputs(1, 18, 2, 1, 4, 4, False, seed=3)
    grads = {}
    for name, fn in (("kernel", ssd_chunked), ("reference", reference.ssd_chunked)):
        leaves = [v.clone().requires_grad_() for v in (x, dt, A, B, C)]
        y, _ = fn(*leaves, 16)
        y.pow(2).sum().backward()
        grads[name] = [v.grad for v in leaves]
    for name, a, r in zip(("x", "dt", "A", "B", "C"), grads["kernel"], grads["reference"]):
        _close(a, r, f"d{name}")


def test_dispatch_picks_the_kernel_when_forced_and_the_reference_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr("archlang.kernels.ssd.ssd_chunked", lambda *a: calls.append("kernel") or a)
    x, dt, A, B, C, _ = _inputs(1, 4, 2, 1, 2, 2, False)
    with dispatch.force("triton"):
        dispatch.ssd_chunked(x, dt, A, B, C, 16)
    assert calls == ["kernel"]
    with dispatch.force("reference"):
        y, _ = dispatch.ssd_chunked(x, dt, A, B, C, 16)
    assert calls == ["kernel"] and y.shape == x.shape
    if not x.is_cuda:
        monkeypatch.delenv("ARCHLANG_KERNELS", raising=False)
        dispatch.ssd_chunked(x, dt, A, B, C, 16)  # auto: CPU tensors take the reference
        assert calls == ["kernel"]


def test_mamba2_model_on_kernels(monkeypatch):
    """The Mamba-2 layers reach the kernel through the dispatcher (counted), and the model's
    outputs and every parameter's gradient match those on the references."""
    from archlang.kernels import ssd

    calls = []
    kernel = ssd.ssd_chunked
    monkeypatch.setattr(ssd, "ssd_chunked", lambda *a: calls.append(1) or kernel(*a))
    assert_model_matches_on_kernels("tiny_mamba2.arch", "tiny_mamba2")
    assert len(calls) == 3  # the three Mamba-2 layers, once each on the kernels
