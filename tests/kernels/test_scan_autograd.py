"""The selective scan's hand-written backward (kernels/scan_autograd.py) against autograd through
the recurrence written one step at a time: float64 gradcheck at tiny sizes, float32 gradients of
every input at ragged sizes, with and without an initial state, chunks that do not divide T; and
what the reference runs with autograd, without it, and under torch.compile. And the gated linear
family's blocked scores with one decay per key dimension against the pairwise form they replace."""

import pytest
import torch

from archlang.kernels import reference
from archlang.kernels.scan_autograd import SelectiveScan


def _inputs(b, di, n, t, *, dtype=torch.float32, with_state=True):
    g = torch.Generator().manual_seed(di * 1000 + t)
    return [
        torch.randn(b, di, t, generator=g, dtype=dtype),  # u
        torch.rand(b, di, t, generator=g, dtype=dtype) * 0.5,  # delta
        -torch.rand(di, n, generator=g, dtype=dtype) * 2,  # A
        torch.randn(b, t, n, generator=g, dtype=dtype),  # B
        torch.randn(b, t, n, generator=g, dtype=dtype),  # C
        torch.randn(di, generator=g, dtype=dtype),  # D
        torch.randn(b, di, n, generator=g, dtype=dtype) if with_state else None,
    ]


def _recurrence(u, delta, A, B, C, D, h):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = C_t . h_t + D u_t, one step at a time."""
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, t]
        ys.append((h * C[:, None, t]).sum(-1) + D * u[:, :, t])
    return (torch.stack(ys, dim=2) if ys else u.new_zeros(*u.shape)), h


def _function(u, delta, A, B, C, D, state, chunk):
    """The Function in the public layout, in the inputs' dtype (the reference casts to float32)."""
    y, h = SelectiveScan.apply(u.transpose(1, 2), delta.transpose(1, 2), A.t(), B, C,
                               None if state is None else state.transpose(1, 2), chunk)
    return y + u * D[:, None], h.transpose(1, 2)


@pytest.mark.parametrize("t,chunk", [(7, 3), (6, 6), (4, 16)])
@pytest.mark.parametrize("with_state", [False, True])
def test_gradcheck_float64(t, chunk, with_state):
    inputs = [x.requires_grad_() if x is not None else None
              for x in _inputs(2, 3, 2, t, dtype=torch.float64, with_state=with_state)]
    assert torch.autograd.gradcheck(lambda *x: _function(*x, chunk), inputs)


def _grads(fn, inputs, seed=0):
    leaves = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    y, h = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    gy, gh = torch.randn(y.shape, generator=g, dtype=y.dtype), torch.randn(h.shape, generator=g, dtype=h.dtype)
    torch.autograd.backward((y, h), (gy, gh))
    return (y.detach(), h.detach()), [x.grad if x is not None else None for x in leaves]


@pytest.mark.parametrize("di,n,t,chunk", [(37, 8, 50, 16), (16, 16, 64, 64), (5, 3, 1, 4), (20, 6, 9, 64)])
@pytest.mark.parametrize("with_state", [False, True])
def test_float32_gradients_equal_the_recurrence(di, n, t, chunk, with_state):
    """Through `reference.selective_scan`, which takes the Function whenever autograd is on."""
    inputs = _inputs(2, di, n, t, with_state=with_state)
    state = inputs[6] if with_state else torch.zeros(2, di, n)
    (y, h), got = _grads(lambda *x: reference.selective_scan(*x, chunk=chunk), inputs)
    (y_ref, h_ref), want = _grads(lambda *x: _recurrence(*x[:6], x[6] if with_state else state), inputs)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
    for name, a, b in zip("u delta A B C D state".split(), got, want):
        if b is None:
            assert a is None
            continue
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


def test_float64_inputs_match_the_float64_recurrence_through_the_function():
    inputs = _inputs(2, 7, 4, 23, dtype=torch.float64)
    (y, h), got = _grads(lambda *x: _function(*x, 5), inputs)
    (y_ref, h_ref), want = _grads(_recurrence, inputs)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_autograd_keeps_one_node_and_the_chunk_starts_only():
    """The training path records the scan as one node, not one per step, and saves the state at
    each chunk's start, not every step's (B, N, di) state."""
    b, di, n, t, chunk = 2, 8, 4, 40, 8
    inputs = [x.requires_grad_() for x in _inputs(b, di, n, t)]
    y, _ = reference.selective_scan(*inputs, chunk=chunk)
    assert len(list(_walk(y.grad_fn))) < 30  # the per-step graph had over 2 * t nodes
    scan = next(node for node in _walk(y.grad_fn) if "SelectiveScan" in type(node).__name__)
    saved = sum(x.numel() for x in scan.saved_tensors)
    inputs_numel = 2 * b * t * di + n * di + 2 * b * t * n
    assert saved == inputs_numel + (t // chunk) * b * n * di


def _walk(root):
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(next_fn for next_fn, _ in node.next_functions)


def test_a_second_derivative_is_refused_not_wrong():
    """The backward writes in place into its own buffers, so it is not differentiable itself."""
    inputs = [x.requires_grad_() for x in _inputs(1, 4, 2, 6)]
    y, _ = reference.selective_scan(*inputs, chunk=4)
    du, = torch.autograd.grad(y.pow(2).sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        du.sum().backward()


def test_compiled_scan_uses_the_plain_loop_and_agrees():
    """Under torch.compile(fullgraph=True) the reference records the steps (dynamo does not trace
    the Function's Python backward); inference and training agree with eager's Function."""
    torch._dynamo.reset()
    inputs = _inputs(2, 6, 4, 11)
    scan = torch.compile(lambda *x: reference.selective_scan(*x, chunk=4), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        y, h = scan(*inputs)
        y_eager, h_eager = reference.selective_scan(*inputs, chunk=4)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(h, h_eager)
    (y, h), got = _grads(scan, inputs)
    _, want = _grads(lambda *x: reference.selective_scan(*x, chunk=4), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _dense_decayed_scores(x, y, cx, cy, strict):
    """Every pair's decay built whole: the (L, L, dk) form the blocked one replaces."""
    length = x.shape[-2]
    rows = torch.arange(length)
    keep = (rows[:, None] > rows[None, :]) if strict else (rows[:, None] >= rows[None, :])
    pair = (cx[..., :, None, :] - cy[..., None, :, :]).masked_fill(~keep[..., None], float("-inf")).exp()
    return torch.einsum("...td,...jd,...tjd->...tj", x, y, pair)


@pytest.mark.parametrize("length,sub", [(13, 4), (16, 4), (3, 4), (9, 1), (10, 16)])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("gate", [0.3, 60.0], ids=["mild", "strong"])
def test_blocked_decayed_scores_equal_the_pairwise_form(length, sub, strict, gate):
    """Values and gradients in float64; with strong gates (e^-60 per step) nothing overflows."""
    g = torch.Generator().manual_seed(length)
    x, y = (torch.randn(2, 3, length, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    log_decay = -torch.rand(2, 3, length, 5, generator=g, dtype=torch.float64) * gate
    log_decay.requires_grad_()
    cy = log_decay.cumsum(-2)
    cx = cy - log_decay if strict else cy
    got, = reference._decayed_scores(x, (y,), cx, cy, strict=strict, sub=sub)
    want = _dense_decayed_scores(x, y, cx, cy, strict)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)
    weight = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * weight).sum(), (x, y, log_decay))
    for a, b in zip(grads, torch.autograd.grad((want * weight).sum(), (x, y, log_decay))):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)
