"""S4D: the convolution form (a Vandermonde kernel applied by FFT) equals the recurrence, with and
without a carried state; both equal a plain re-expression of the paper's ZOH-discretised diagonal
SSM (a complex loop over modes in float64) and the authors' minimal kernel formula; the layer
equals a written-out SSM + skip + GELU + GLU; cached decode = full forward; left padding;
causality; gradients; the state bytes formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archlang import runtime as rt
from archlang.runtime.s4 import discretize, s4d_convolution, s4d_kernel, s4d_recurrent
from archlang.spec.errors import ArchError

from ..conftest import FP32

D, N = 6, 8


def perturbed(seed=0, state=N) -> rt.S4D:
    torch.manual_seed(seed)
    m = rt.S4D(D, state)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def paper_reference(m: rt.S4D, u: torch.Tensor) -> torch.Tensor:
    """Gu et al. 2022 written out, per channel h and complex mode n, in float64 complex:
    A = -exp(log_A_real) + i·A_imag, dt = exp(log_dt), Ā = exp(dt·A), B̄ = (Ā - 1)/A · B (zero-order
    hold), x_t = Ā x_{t-1} + B̄ u_t, y_t = Σ_n 2·Re(C x_t) + D u_t. u (B, H, T)."""
    dt = m.log_dt.double().exp()
    a = -m.log_A_real.double().exp() + 1j * m.A_imag.double()
    b = torch.view_as_complex(m.B.double().contiguous())
    c = torch.view_as_complex(m.C.double().contiguous())
    y = torch.zeros(u.shape, dtype=torch.float64)
    for batch in range(u.shape[0]):
        for h in range(m.d_model):
            a_bar = torch.exp(dt[h] * a[h])
            b_bar = (a_bar - 1) / a[h] * b[h]
            x = torch.zeros(a.shape[1], dtype=torch.complex128)
            for t in range(u.shape[2]):
                x = a_bar * x + b_bar * u[batch, h, t].double()
                y[batch, h, t] = 2 * (c[h] * x).sum().real + m.D[h].double() * u[batch, h, t].double()
    return y


def authors_kernel(m: rt.S4D, length: int) -> torch.Tensor:
    """The minimal S4D kernel as its authors write it (B folded into C): dtA = A·dt,
    K = 2·Re(einsum(C·B·(exp(dtA) - 1)/A, exp(dtA·l)))."""
    dt = torch.exp(m.log_dt.float())
    a = -torch.exp(m.log_A_real.float()) + 1j * m.A_imag.float()
    c = torch.view_as_complex(m.C.float().contiguous()) * torch.view_as_complex(m.B.float().contiguous())
    dta = a * dt[:, None]
    k = dta[..., None] * torch.arange(length)
    c = c * (torch.exp(dta) - 1.0) / a
    return 2 * torch.einsum("hn,hnl->hl", c, torch.exp(k)).real


def test_kernel_equals_the_authors_formula():
    m = perturbed()
    a_bar, b_bar, c = discretize(m.log_dt, m.log_A_real, m.A_imag, m.B, m.C)
    with torch.no_grad():
        torch.testing.assert_close(s4d_kernel(a_bar, b_bar, c, 17), authors_kernel(m, 17), **FP32)


@pytest.mark.parametrize("t", [1, 5, 16])
def test_both_forms_equal_the_papers_recurrence(t):
    m = perturbed()
    u = torch.randn(2, D, t)
    want = paper_reference(m, u).float()
    a_bar, b_bar, c = discretize(m.log_dt, m.log_A_real, m.A_imag, m.B, m.C)
    skip = u * m.D[:, None]
    with torch.no_grad():
        conv, s_conv = s4d_convolution(u, a_bar, b_bar, c)
        rec, s_rec = s4d_recurrent(u, a_bar, b_bar, c)
        torch.testing.assert_close(conv + skip, want, **FP32)
        torch.testing.assert_close(rec + skip, want, **FP32)
        torch.testing.assert_close(s_conv, s_rec, **FP32)


def test_convolution_form_from_a_state_equals_the_recurrence():
    m = perturbed(1)
    u = torch.randn(2, D, 12)
    a_bar, b_bar, c = discretize(m.log_dt, m.log_A_real, m.A_imag, m.B, m.C)
    with torch.no_grad():
        _, state = s4d_recurrent(u[..., :5], a_bar, b_bar, c)
        rec, s_rec = s4d_recurrent(u[..., 5:], a_bar, b_bar, c, state)
        conv, s_conv = s4d_convolution(u[..., 5:], a_bar, b_bar, c, state)
    torch.testing.assert_close(conv, rec, **FP32)
    torch.testing.assert_close(s_conv, s_rec, **FP32)


def layer_reference(m: rt.S4D, x: torch.Tensor) -> torch.Tensor:
    """The authors' S4D layer: SSM + D skip, GELU, a 1x1 conv to 2·d_model (here out_proj) and GLU."""
    y = paper_reference(m, x.transpose(1, 2)).float().transpose(1, 2)
    z = F.gelu(y) @ m.out_proj.T + m.out_proj_bias
    return z[..., :D] * torch.sigmoid(z[..., D:])


@pytest.mark.parametrize("form", ["auto", "convolution", "recurrent"])
def test_layer_matches_the_written_out_layer(form):
    m = perturbed()
    m.form = form
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        torch.testing.assert_close(m(x), layer_reference(m, x), **FP32)


@pytest.mark.parametrize("pieces", [(10,), (1,) * 10, (3, 1, 4, 2), (6, 4)])
def test_cached_decode_equals_the_full_forward(pieces):
    m = perturbed()
    x = torch.randn(2, sum(pieces), D)
    with torch.no_grad():
        full = m(x)
        cache, outs, start = rt.Cache(), [], 0
        for length in pieces:
            outs.append(m(x[:, start:start + length], rt.Context(positions=torch.arange(start, start + length),
                                                                 cache=cache)))
            start += length
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **FP32)
    assert cache.nbytes() == 2 * m.state_bytes() == 2 * D * N // 2 * 8


def test_left_padding_does_not_leak():
    m = perturbed()
    x = torch.randn(2, 8, D)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        got = m(x, rt.Context(positions=torch.arange(8), attention_mask=mask))
        torch.testing.assert_close(got[1, 3:], m(x[1:, 3:])[0], **FP32)
        torch.testing.assert_close(got[0], m(x[:1])[0], **FP32)


def test_causal_and_gradients():
    m = perturbed()
    x = torch.randn(2, 10, D, requires_grad=True)
    y = m(x)
    x2 = x.detach().clone()
    x2[:, 6:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(m(x2)[:, :6], y[:, :6].detach())
    y.pow(2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_odd_state_and_unknown_form_are_refused():
    with pytest.raises(ArchError, match="must be even"):
        rt.S4D(4, 7)
    with pytest.raises(ArchError, match="form must be one of"):
        rt.S4D(4, 8, form="fft")


def test_initialisation_is_s4d_lin():
    torch.manual_seed(0)
    m = rt.S4D(3, 6)
    a = -m.log_A_real.exp() + 1j * m.A_imag
    torch.testing.assert_close(a[0], torch.tensor([-0.5 + 0j, -0.5 + 1j * math.pi, -0.5 + 2j * math.pi]))
