"""xLSTM's mLSTM: the chunked form equals the recurrent form (float64, any chunk length, from a
state); both equal the paper's unstabilised equations written out, and Hugging Face's native
kernels (the step, sequence and chunkwise ones); the layer equals
Hugging Face's xLSTMLayer with every weight perturbed (soft-capped or not); cached decode = full
forward; left padding; causality; gradients; the state bytes formula. The sLSTM cell equals the
paper's equations written out (stabilised or not), its recurrence is block-diagonal per head, and
the layer equals a written-out conv + cell + head norm; cached decode = full forward, padding,
causality, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import xLSTMConfig
from transformers.models.xlstm import modeling_xlstm as hf_xlstm

from archlang import runtime as rt
from archlang.runtime import xlstm as rt_xlstm
from archlang.runtime.xlstm import mlstm_chunked, mlstm_recurrent

from ..conftest import FP32

F64 = dict(atol=1e-10, rtol=1e-10)


def cell_inputs(bsz=2, heads=3, t=13, dk=4, dv=6, gate_scale=4.0, dtype=torch.float64, seed=0):
    """q, k, v and gate pre-activations strong enough that the max-state moves (i up to ~±12)."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(bsz, heads, t, dk, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(bsz, heads, t, dv, generator=g, dtype=dtype)
    i = torch.randn(bsz, heads, t, generator=g, dtype=dtype) * gate_scale
    f = torch.randn(bsz, heads, t, generator=g, dtype=dtype) * gate_scale + 1.0
    return q, k, v, i, f


def paper_reference(q, k, v, i, f):
    """Beck et al. 2024, eqs. (19)-(27) without the stabiliser: C_t = σ(f̃_t) C_{t-1} + exp(ĩ_t) k_t v_t^T,
    n_t = σ(f̃_t) n_{t-1} + exp(ĩ_t) k_t, h_t = C_t^T q̃_t / max(|n_t^T q̃_t|, 1), q̃ = q / sqrt(dk).
    Exact in float64 for moderate gates (the stabilised forms equal it up to their eps)."""
    bsz, heads, t, dk = q.shape
    c = q.new_zeros(bsz, heads, dk, v.shape[-1])
    n = q.new_zeros(bsz, heads, dk)
    outs = []
    for s in range(t):
        fg, ig = torch.sigmoid(f[:, :, s])[..., None], torch.exp(i[:, :, s])[..., None]
        c = fg[..., None] * c + ig[..., None] * k[:, :, s, :, None] * v[:, :, s, None, :]
        n = fg * n + ig * k[:, :, s]
        qs = q[:, :, s] * dk ** -0.5
        outs.append((qs[..., None, :] @ c).squeeze(-2) / torch.clamp((qs * n).sum(-1, keepdim=True).abs(), min=1.0))
    return torch.stack(outs, dim=2)


def test_recurrent_form_is_the_papers_equations():
    q, k, v, i, f = cell_inputs(gate_scale=1.0)
    h, _ = mlstm_recurrent(q, k, v, i, f, eps=0.0)
    torch.testing.assert_close(h, paper_reference(q, k, v, i, f), **F64)


@pytest.mark.parametrize("t,chunk", [(13, 1), (13, 4), (13, 5), (13, 13), (13, 64), (16, 8), (1, 4)])
def test_chunked_form_equals_the_recurrent_form(t, chunk):
    q, k, v, i, f = cell_inputs(t=t)
    h_rec, state_rec = mlstm_recurrent(q, k, v, i, f)
    h_chk, state_chk = mlstm_chunked(q, k, v, i, f, chunk=chunk)
    torch.testing.assert_close(h_chk, h_rec, **F64)
    for a, b in zip(state_chk, state_rec):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("chunk", [3, 8])
def test_chunked_form_from_a_state_equals_the_recurrent_form(chunk):
    q, k, v, i, f = cell_inputs(t=20)
    _, state = mlstm_recurrent(q[:, :, :7], k[:, :, :7], v[:, :, :7], i[..., :7], f[..., :7])
    rest = (q[:, :, 7:], k[:, :, 7:], v[:, :, 7:], i[..., 7:], f[..., 7:])
    h_rec, s_rec = mlstm_recurrent(*rest, state)
    h_chk, s_chk = mlstm_chunked(*rest, state, chunk=chunk)
    torch.testing.assert_close(h_chk, h_rec, **F64)
    for a, b in zip(s_chk, s_rec):
        torch.testing.assert_close(a, b, **F64)


def test_recurrent_form_equals_hugging_faces_sequence_kernel():
    q, k, v, i, f = cell_inputs(t=11, dtype=torch.float32)
    h, (c, n, m) = mlstm_recurrent(q, k, v, i, f)
    h_hf, (c_hf, n_hf, m_hf) = hf_xlstm.mlstm_recurrent_sequence_native(q, k, v, i, f, return_last_states=True,
                                                                         eps=1e-6)
    torch.testing.assert_close(h, h_hf, **FP32)
    torch.testing.assert_close(c, c_hf, **FP32)
    torch.testing.assert_close(n, n_hf, **FP32)
    torch.testing.assert_close(m, m_hf.squeeze(-1), **FP32)


def test_one_recurrent_step_equals_hugging_faces_step_kernel():
    q, k, v, i, f = cell_inputs(t=6, dtype=torch.float32)
    _, state = mlstm_recurrent(q[:, :, :5], k[:, :, :5], v[:, :, :5], i[..., :5], f[..., :5])
    h, (c, n, m) = mlstm_recurrent(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], i[..., 5:], f[..., 5:], state)
    h_hf, (c_hf, n_hf, m_hf) = hf_xlstm.mlstm_recurrent_step_native(
        q[:, :, 5], k[:, :, 5], v[:, :, 5], i[..., 5:], f[..., 5:], state[0], state[1], state[2][..., None], eps=1e-6)
    torch.testing.assert_close(h[:, :, 0], h_hf, **FP32)
    torch.testing.assert_close(c, c_hf, **FP32)
    torch.testing.assert_close(n, n_hf, **FP32)
    torch.testing.assert_close(m, m_hf.squeeze(-1), **FP32)


@pytest.mark.parametrize("chunk", [4, 8])
def test_chunked_form_equals_hugging_faces_chunkwise_kernel(chunk):
    q, k, v, i, f = cell_inputs(t=16, gate_scale=2.0, dtype=torch.float32)
    h, (c, n, m) = mlstm_chunked(q, k, v, i, f, chunk=chunk)
    h_hf, (c_hf, n_hf, m_hf) = hf_xlstm.mlstm_chunkwise_native_autograd(q, k, v, i, f, return_last_states=True,
                                                                         chunk_size=chunk, eps=1e-6)
    torch.testing.assert_close(h, h_hf, **FP32)
    torch.testing.assert_close(c, c_hf, **FP32)
    torch.testing.assert_close(m, m_hf.squeeze(-1), **FP32)


# ----------------------------------------------------------------------------- the layer

D_MODEL, HEADS = 64, 2


def hf_config(gate_soft_cap=15.0, chunk=4, norm_eps=1e-6):
    # qk_dim_factor 0.5 of 64 = 32 (two heads of 16), v_dim_factor 1 = 64 (two heads of 32)
    return xLSTMConfig(hidden_size=D_MODEL, num_heads=HEADS, num_hidden_layers=1, vocab_size=11, chunk_size=chunk,
                       gate_soft_cap=gate_soft_cap, norm_eps=norm_eps, eps=1e-6, mode="inference")


def perturbed_pair(gate_soft_cap=15.0, chunk=4, seed=3):
    """HF's xLSTMLayer (weight_mode single) and ours with the same weights, every one perturbed."""
    torch.manual_seed(seed)
    config = hf_config(gate_soft_cap or 15.0, chunk)
    if gate_soft_cap is None:  # HF's soft_cap(x, None) is x; its config type refuses None, its layer reads it
        object.__setattr__(config, "gate_soft_cap", None)
    hf = hf_xlstm.xLSTMLayer(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 1.0))
    ours = rt.MLSTMLayer(D_MODEL, HEADS, 16, 32, gate_softcap=gate_soft_cap, norm_eps=1e-6, denominator_eps=1e-6,
                         chunk=chunk)
    names = {"q_proj": hf.q.weight, "k_proj": hf.k.weight, "v_proj": hf.v.weight,
             "ogate_proj": hf.ogate_preact.weight, "igate_proj": hf.igate_preact.weight,
             "igate_bias": hf.igate_preact.bias, "fgate_proj": hf.fgate_preact.weight,
             "fgate_bias": hf.fgate_preact.bias, "norm_weight": hf.multihead_norm.weight,
             "out_proj": hf.out_proj.weight}
    assert set(names) == {n for n, _ in ours.named_parameters()}
    with torch.no_grad():
        for name, tensor in names.items():
            getattr(ours, name).copy_(tensor)
    return hf, ours


@pytest.mark.parametrize("cap,t", [(15.0, 11), (15.0, 8), (None, 9), (2.0, 6)])
def test_layer_matches_hf_xlstm_layer(cap, t):
    hf, ours = perturbed_pair(cap)
    x = torch.randn(2, t, D_MODEL)
    with torch.no_grad():
        want, _ = hf(x)
        torch.testing.assert_close(ours(x), want, **FP32)


def test_cached_decode_matches_hf_state_passing():
    """Prefill then single steps, our cache against HF's (C, n, m) state carried by hand."""
    hf, ours = perturbed_pair()
    x = torch.randn(2, 10, D_MODEL)
    cache, state, start = rt.Cache(), None, 0
    with torch.no_grad():
        for length in (6, 1, 1, 2):
            part = x[:, start:start + length]
            want, state = hf(part, state)
            got = ours(part, rt.Context(positions=torch.arange(start, start + length), cache=cache))
            torch.testing.assert_close(got, want, **FP32)
            start += length
    entry = cache.get("")
    torch.testing.assert_close(entry["C"], state[0], **FP32)
    torch.testing.assert_close(entry["m"], state[2].squeeze(-1), **FP32)


@pytest.mark.parametrize("pieces", [(10,), (1,) * 10, (3, 1, 4, 2), (7, 3)])
def test_cached_decode_equals_the_full_forward(pieces):
    _, ours = perturbed_pair()
    x = torch.randn(2, sum(pieces), D_MODEL)
    with torch.no_grad():
        full = ours(x)
        cache, outs, start = rt.Cache(), [], 0
        for length in pieces:
            outs.append(ours(x[:, start:start + length],
                             rt.Context(positions=torch.arange(start, start + length), cache=cache)))
            start += length
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **FP32)


def test_forms_agree_in_the_layer():
    _, ours = perturbed_pair()
    x = torch.randn(2, 9, D_MODEL)
    with torch.no_grad():
        ours.form = "recurrent"
        rec = ours(x)
        ours.form = "chunked"
        torch.testing.assert_close(ours(x), rec, **FP32)


def test_left_padding_does_not_leak():
    _, ours = perturbed_pair()
    x = torch.randn(2, 8, D_MODEL)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        got = ours(x, rt.Context(positions=torch.arange(8), attention_mask=mask))
        torch.testing.assert_close(got[1, 3:], ours(x[1:, 3:])[0], **FP32)
        torch.testing.assert_close(got[0], ours(x[:1])[0], **FP32)
        # without the mask the padded tokens do reach the real ones
        assert not torch.allclose(ours(x)[1, 3:], got[1, 3:], atol=1e-3)


def test_causal():
    _, ours = perturbed_pair()
    x = torch.randn(2, 10, D_MODEL)
    with torch.no_grad():
        y = ours(x)
        x2 = x.clone()
        x2[:, 6:] += torch.randn(2, 4, D_MODEL)
        y2 = ours(x2)
    torch.testing.assert_close(y2[:, :6], y[:, :6])
    assert not torch.allclose(y2[:, 6:], y[:, 6:])


def test_gradients_reach_every_parameter():
    _, ours = perturbed_pair()
    x = torch.randn(2, 9, D_MODEL, requires_grad=True)
    ours(x).pow(2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in ours.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_gradients_of_the_chunked_form_equal_the_recurrent_forms():
    q, k, v, i, f = (x.requires_grad_() for x in cell_inputs(t=9, gate_scale=2.0))
    grads = []
    for form in (mlstm_recurrent, lambda *a: mlstm_chunked(*a, chunk=4)):
        h, _ = form(q, k, v, i, f)
        grads.append(torch.autograd.grad(h.pow(2).sum(), (q, k, v, i, f)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_bytes_formula(dtype):
    _, ours = perturbed_pair()
    ours = ours.to(dtype)
    cache = rt.Cache()
    with torch.no_grad():
        ours(torch.randn(3, 5, D_MODEL, dtype=dtype), rt.Context(positions=torch.arange(5), cache=cache))
    assert cache.nbytes() == 3 * HEADS * (16 * 32 + 16 + 1) * 4 == 3 * ours.state_bytes()


def test_unknown_form_is_refused():
    from archlang.spec.errors import ArchError

    with pytest.raises(ArchError, match="form must be one of"):
        rt.MLSTMLayer(8, 2, 2, 4, form="parallel")


def test_gate_softcap_is_tanh_capping():
    _, ours = perturbed_pair(gate_soft_cap=2.0)
    x = torch.randn(1, 3, D_MODEL) * 10
    g = ours._gate(x, ours.igate_proj, ours.igate_bias)
    assert g.abs().max() <= 2.0
    torch.testing.assert_close(g, (2.0 * torch.tanh(F.linear(x, ours.igate_proj, ours.igate_bias) / 2.0)).transpose(1, 2))


# ----------------------------------------------------------------------------- sLSTM

def slstm_paper(x_gates, r_full, bias, stabilised=True):
    """Beck et al. 2024, eqs. 8-17, per token with one dense (D x D) block-diagonal R per gate:
    z = tanh(z̃), i = exp(ĩ), f = σ(f̃), o = σ(õ), c_t = f c + i z, n_t = f n + i, h = o c / n;
    stabilised (eqs. 15-17) with m_t = max(log f + m_{t-1}, log i), i' = exp(ĩ - m_t),
    f' = exp(log f + m_{t-1} - m_t). x_gates (B, T, 4, D); r_full (4, D, D); bias (4, D)."""
    bsz, t, _, d = x_gates.shape
    c, n, m, h = (torch.zeros(bsz, d, dtype=x_gates.dtype) for _ in range(4))
    outs = []
    for s in range(t):
        raw = x_gates[:, s] + torch.einsum("bd,gde->bge", h, r_full) + bias
        it, ft, zt, ot = raw.unbind(1)
        if stabilised:
            m_new = torch.maximum(torch.log(torch.sigmoid(ft)) + m, it)
            i_gate, f_gate = torch.exp(it - m_new), torch.exp(torch.log(torch.sigmoid(ft)) + m - m_new)
            m = m_new
        else:
            i_gate, f_gate = torch.exp(it), torch.sigmoid(ft)
        c = f_gate * c + i_gate * torch.tanh(zt)
        n = f_gate * n + i_gate
        h = torch.sigmoid(ot) * c / n
        outs.append(h)
    return torch.stack(outs, dim=1)


def _block_diagonal(recurrent):
    """(4, heads, dh, dh) blocks → (4, D, D), gate g's h @ R[g] reading each head's own channels."""
    return torch.stack([torch.block_diag(*recurrent[g]) for g in range(recurrent.shape[0])])


@pytest.mark.parametrize("gate_scale,stabilised", [(1.0, False), (1.0, True), (8.0, True)])
def test_slstm_cell_is_the_papers_equations(gate_scale, stabilised):
    g = torch.Generator().manual_seed(4)
    heads, dh = 3, 4
    pre = torch.randn(2, 9, 4, heads * dh, generator=g, dtype=torch.float64) * gate_scale
    recurrent = torch.randn(4, heads, dh, dh, generator=g, dtype=torch.float64) * 0.5
    bias = torch.randn(4, heads * dh, generator=g, dtype=torch.float64)
    got, _ = rt_xlstm.slstm_recurrent(pre, recurrent, bias, heads)
    torch.testing.assert_close(got, slstm_paper(pre, _block_diagonal(recurrent), bias, stabilised), **F64)


def test_slstm_recurrent_weights_are_block_diagonal_per_head():
    """A head's gates read only its own channels of h_{t-1}: moving head 1's inputs (and so its
    past outputs) changes nothing in head 0."""
    g = torch.Generator().manual_seed(5)
    heads, dh = 2, 3
    pre = torch.randn(1, 4, 4, heads * dh, generator=g, dtype=torch.float64)
    recurrent = torch.randn(4, heads, dh, dh, generator=g, dtype=torch.float64)
    bias = torch.zeros(4, heads * dh, dtype=torch.float64)
    base, _ = rt_xlstm.slstm_recurrent(pre, recurrent, bias, heads)
    moved = pre.clone()
    moved[:, :, :, dh:] += 1.0  # only head 1's inputs
    other, _ = rt_xlstm.slstm_recurrent(moved, recurrent, bias, heads)
    torch.testing.assert_close(other[..., :dh], base[..., :dh], **F64)
    assert not torch.allclose(other[..., dh:], base[..., dh:])


def slstm_layer(conv_size=4, seed=6, d=12, heads=3):
    torch.manual_seed(seed)
    m = rt.SLSTMLayer(d, heads, conv_size=conv_size, norm_eps=1e-5)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


def slstm_layer_reference(m: rt.SLSTMLayer, x):
    """The layer written out: swish(causal conv(x)) (a plain loop over taps) feeds ĩ and f̃, x feeds
    z̃ and õ; the paper's stabilised cell; LayerNorm per head; × norm_weight."""
    d, k = m.d_model, m.conv_size
    if k:
        conv = []
        for s in range(x.shape[1]):
            acc = m.conv_bias.clone().expand(x.shape[0], d)
            for j in range(min(k, s + 1)):
                acc = acc + m.conv_weight[:, 0, k - 1 - j] * x[:, s - j]
            conv.append(F.silu(acc))
        xc = torch.stack(conv, dim=1)
    else:
        xc = x
    w = m.in_proj.view(4, d, d)
    pre = torch.stack([xc @ w[0].T, xc @ w[1].T, x @ w[2].T, x @ w[3].T], dim=2)
    h = slstm_paper(pre, _block_diagonal(m.recurrent), m.bias.view(4, d))
    h = h.view(*h.shape[:2], m.heads, -1)
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + m.norm_eps)
    return h.reshape(*x.shape) * m.norm_weight


@pytest.mark.parametrize("conv_size", [4, 1, 0])
def test_slstm_layer_matches_the_written_out_layer(conv_size):
    m = slstm_layer(conv_size)
    x = torch.randn(2, 7, 12)
    with torch.no_grad():
        torch.testing.assert_close(m(x), slstm_layer_reference(m, x), **FP32)


@pytest.mark.parametrize("pieces,conv_size", [((8,), 4), ((1,) * 8, 4), ((3, 1, 4), 2), ((5, 3), 0)])
def test_slstm_cached_decode_equals_the_full_forward(pieces, conv_size):
    m = slstm_layer(conv_size)
    x = torch.randn(2, sum(pieces), 12)
    with torch.no_grad():
        full = m(x)
        cache, outs, start = rt.Cache(), [], 0
        for length in pieces:
            outs.append(m(x[:, start:start + length], rt.Context(positions=torch.arange(start, start + length),
                                                                 cache=cache)))
            start += length
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **FP32)
    itemsize = 4
    assert cache.nbytes() == 2 * m.state_bytes() == 2 * (16 * 12 + max(conv_size - 1, 0) * 12 * itemsize)


def test_slstm_left_padding_does_not_leak():
    m = slstm_layer()
    x = torch.randn(2, 8, 12)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        got = m(x, rt.Context(positions=torch.arange(8), attention_mask=mask))
        torch.testing.assert_close(got[1, 3:], m(x[1:, 3:])[0], **FP32)
        torch.testing.assert_close(got[0], m(x[:1])[0], **FP32)


def test_slstm_causal_and_gradients():
    m = slstm_layer()
    x = torch.randn(2, 9, 12, requires_grad=True)
    y = m(x)
    x2 = x.detach().clone()
    x2[:, 5:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(m(x2)[:, :5], y[:, :5].detach())
    y.pow(2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_slstm_heads_must_divide_d_model():
    from archlang.spec.errors import ArchError

    with pytest.raises(ArchError, match="must divide d_model"):
        rt.SLSTMLayer(10, 3)


# ----------------------------------------------------------------------------- spec-level errors

@pytest.mark.parametrize("ssm,words", [
    ("slstm(heads = 3)", "must be divisible by heads (3)"),
    ("mlstm(heads = 3, value_dim = 8)", "key_dim defaults to d_model / 2 / heads, and d_model / 2 (d_model = 32) does not"),
    ("mlstm(heads = 3, key_dim = 4)", "value_dim defaults to d_model / heads"),
])
def test_widths_that_heads_cannot_split_are_located_errors(ssm, words):
    from archlang.api import load_model
    from archlang.spec.errors import ArchError

    text = (f"model m {{\n    vocab = 97\n    d_model = 32\n    context = 64\n    block b {{\n        norm = rmsnorm()\n"
            f"        ssm = {ssm}\n    }}\n    layers = b\n}}\n")
    with pytest.raises(ArchError) as err:
        load_model(text)
    assert words in str(err.value) and err.value.span is not None and err.value.span.line == 7
