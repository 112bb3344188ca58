"""The Triton gated linear scan (kernels/gated_linear.py) against the reference
`reference.gated_linear_chunked`: output, final state and the gradient of every input (q, k, v,
the log gates, β, the initial state), float32, one gate per head (retention), one per key
dimension (GLA) and the delta rule (Gated DeltaNet), with and without an initial state, over one
chunk or several, dv over one column block; strong gates that would overflow a factored
exp(c_i) exp(-c_j); FLA's naive chunked simple GLA and naive recurrent gated delta rule as
independent references; dispatch's choice; GLA/retention and Gated DeltaNet models on the kernels."""

import pytest
import torch
import torch.nn.functional as F

from archlang.kernels import dispatch, reference
from archlang.kernels.gated_linear import gated_linear_chunked

from .conftest import DEVICE, assert_model_matches_on_kernels


def _inputs(b, heads, t, dk, dv, per_dim, with_state, gate_scale=0.5, seed=0, delta=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, heads, t, dk, generator=g)
    k = F.normalize(torch.randn(b, heads, t, dk, generator=g), dim=-1)
    v = torch.randn(b, heads, t, dv, generator=g)
    gate_shape = (b, heads, t, dk) if per_dim else (b, heads, t)
    log_decay = -torch.rand(*gate_shape, generator=g) * gate_scale
    state = torch.randn(b, heads, dk, dv, generator=g) if with_state else None
    beta = torch.rand(b, heads, t, generator=g) if delta else None
    return [x.to(DEVICE) if x is not None else None for x in (q, k, v, log_decay, beta, state)]


def _close(actual, expected, name):
    """float32 at atol 1e-4 relative to the reference's largest entry and rtol 1e-4 (the gates'
    gradients sum many products)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, atol=1e-4 * scale, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def _check(b, heads, t, dk, dv, per_dim, with_state, **kw):
    inputs = _inputs(b, heads, t, dk, dv, per_dim, with_state, **kw)
    kernel = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    ref = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    o_k, s_k = gated_linear_chunked(*kernel)
    o_r, s_r = reference.gated_linear_chunked(*ref, chunk=16)
    _close(o_k, o_r, "o")
    _close(s_k, s_r, "final state")
    gen = torch.Generator().manual_seed(1)
    go, gs = torch.randn(o_r.shape, generator=gen).to(DEVICE), torch.randn(s_r.shape, generator=gen).to(DEVICE)
    torch.autograd.backward((o_k, s_k), (go, gs))
    torch.autograd.backward((o_r, s_r), (go, gs))
    for name, a, r in zip(("q", "k", "v", "log_decay", "beta", "initial state"), kernel, ref):
        if a is not None:
            assert a.grad is not None and a.grad.dtype == a.dtype, name
            _close(a.grad, r.grad, f"d{name}")


@pytest.mark.parametrize("b,heads,t,dk,dv,per_dim,with_state,delta", [
    (2, 2, 21, 5, 6, False, True, False),  # one gate per head, one chunk, ragged
    (1, 2, 37, 5, 6, True, True, False),  # one gate per key dimension: 3 chunks of 16, the last ragged
    (1, 1, 20, 6, 70, True, False, False),  # dv over two column blocks (partial sums of dq, dk, the gates)
    (1, 2, 37, 5, 6, False, True, True),  # the delta rule: 3 chunks of 16, the last ragged
    (1, 1, 20, 6, 70, False, False, True),  # the delta rule, dv over two column blocks (partial sums of β too)
], ids=["retention", "gla", "gla-dv-blocks", "delta", "delta-dv-blocks"])
def test_gated_linear_kernel_matches_reference(b, heads, t, dk, dv, per_dim, with_state, delta):
    _check(b, heads, t, dk, dv, per_dim, with_state, delta=delta)


def test_gated_linear_kernel_strong_gates():
    """Gates down to -20 per step: exp(-c_j) alone would overflow float32 within a chunk."""
    _check(1, 1, 24, 4, 4, True, True, gate_scale=20.0)


@pytest.mark.slow
@pytest.mark.parametrize("per_dim,delta", [(False, False), (True, False), (False, True)])
def test_gated_linear_kernel_at_model_sizes(per_dim, delta):
    _check(1, 4, 150, 32, 32, per_dim, True, delta=delta)  # 3 chunks of 64 or 10 of 16, the last ragged


def test_gated_linear_kernel_matches_fla_naive():
    """FLA's naive chunked simple GLA (one gate per head), an independent implementation."""
    naive = pytest.importorskip("fla.ops.simple_gla.naive")
    q, k, v, g, _, s = _inputs(1, 2, 21, 5, 6, False, True, seed=4)
    o, state = gated_linear_chunked(q, k, v, g, None, s)
    bthd = (lambda x: x.transpose(1, 2))  # FLA takes (B, T, H, ...)
    o_fla, state_fla = naive.naive_chunk_simple_gla(bthd(q), bthd(k), bthd(v), bthd(g), initial_state=s,
                                                    output_final_state=True, chunk_size=16)
    _close(o, o_fla.transpose(1, 2), "o")
    _close(state, state_fla, "final state")


def test_gated_linear_kernel_matches_fla_naive_gated_delta_rule():
    """FLA's naive recurrent gated delta rule, one token at a time, an independent implementation."""
    naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")
    q, k, v, g, beta, s = _inputs(1, 2, 21, 5, 6, False, True, seed=5, delta=True)
    o, state = gated_linear_chunked(q, k, v, g, beta, s)
    bthd = (lambda x: x.transpose(1, 2))  # FLA takes (B, T, H, ...)
    o_fla, state_fla = naive.naive_recurrent_gated_delta_rule(bthd(q), bthd(k), bthd(v), bthd(beta), bthd(g),
                                                              initial_state=s, output_final_state=True)
    _close(o, o_fla.transpose(1, 2), "o")
    _close(state, state_fla, "final state")


def test_gated_linear_kernel_refuses_the_delta_rule_with_one_gate_per_key_dimension():
    from archlang.spec.errors import ArchError

    q, k, v, g, beta, _ = _inputs(1, 1, 4, 2, 2, True, False, delta=True)
    with pytest.raises(ArchError, match="one decay per head"):
        gated_linear_chunked(q, k, v, g, beta)


def test_dispatch_sends_float64_to_the_reference(monkeypatch):
    calls = []
    monkeypatch.setattr("archlang.kernels.gated_linear.gated_linear_chunked", lambda *a: calls.append("kernel") or a)
    q, k, v, g, beta, _ = _inputs(1, 1, 4, 2, 2, False, False, delta=True)
    with dispatch.force("triton"):
        dispatch.gated_linear_chunked(q, k, v, g)
        dispatch.gated_linear_chunked(q, k, v, g, beta)
        assert calls == ["kernel", "kernel"]
        dispatch.gated_linear_chunked(q.double(), k.double(), v.double(), g.double())
    assert calls == ["kernel", "kernel"]


def test_runtime_chunked_form_reaches_the_kernel(monkeypatch):
    """The runtime's chunked form goes through the dispatcher (the model tests below do this
    whole, slowly, in the interpreter); its single-token step stays on the recurrence."""
    from archlang.runtime.gated_linear import _scan

    calls = []
    monkeypatch.setattr("archlang.kernels.gated_linear.gated_linear_chunked", lambda *a: calls.append(1) or a[:2])
    q, k, v, g, beta, _ = _inputs(1, 1, 5, 2, 2, False, False, delta=True)
    with dispatch.force("triton"):
        _scan("auto", 4, q, k, v, g, beta, None)
        _scan("auto", 4, q[:, :, :1], k[:, :, :1], v[:, :, :1], g[:, :, :1], beta[:, :, :1], None)
    assert calls == [1]


@pytest.mark.slow
def test_gla_model_on_kernels(monkeypatch):
    """GLA and retention layers reach the kernel through the dispatcher (counted), and the model's
    outputs and every parameter's gradient match those on the references."""
    from archlang.kernels import gated_linear

    calls = []
    kernel = gated_linear.gated_linear_chunked
    monkeypatch.setattr(gated_linear, "gated_linear_chunked", lambda *a: calls.append(1) or kernel(*a))
    assert_model_matches_on_kernels("tiny_gla_retention.arch", "tiny_gla_retention")
    assert len(calls) == 4  # two GLA and two retention layers, once each on the kernels


@pytest.mark.slow
def test_gated_deltanet_model_on_kernels(monkeypatch):
    """The delta rule's layers reach the kernel through the dispatcher (counted); outputs and every
    parameter's gradient match the references."""
    from archlang.kernels import gated_linear

    calls = []
    kernel = gated_linear.gated_linear_chunked
    monkeypatch.setattr(gated_linear, "gated_linear_chunked", lambda *a: calls.append(1) or kernel(*a))
    assert_model_matches_on_kernels("tiny_gated_deltanet.arch", "tiny_gated_deltanet")
    assert len(calls) == 3  # the three Gated DeltaNet layers, once each on the kernels
