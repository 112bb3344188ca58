"""xLSTM's mLSTM: the chunked form equals the recurrent form (float64, any chunk length, from a
state); both equal the paper's unstabilised equations written out, and Hugging Face's native
kernels (mlstm_recurrent_sequence_native, mlstm_chunkwise_native_autograd); the layer equals
Hugging Face's xLSTMLayer with every weight perturbed (soft-capped or not); cached decode = full
forward; left padding; causality; gradients; the state bytes formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import xLSTMConfig
from transformers.models.xlstm import modeling_xlstm as hf_xlstm

from archlang import runtime as rt
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
