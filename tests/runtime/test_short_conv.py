"""LFM2's gated short convolution: against a plain loop over time and taps, against Hugging Face's
`Lfm2ShortConv` with every weight perturbed (full forward, cached decode, left padding);
causality, cached decode = full forward, gradients, torch.compile, the state bytes formula."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, Lfm2Config
from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv

from archlang import runtime as rt

from ..conftest import FP32

D_MODEL = 16


def perturbed(kernel=3, bias=True, conv_bias=True, seed=2) -> rt.ShortConv:
    torch.manual_seed(seed)
    m = rt.ShortConv(D_MODEL, kernel, bias=bias, conv_bias=conv_bias)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.2))
    return m


def loop_reference(m: rt.ShortConv, x: torch.Tensor) -> torch.Tensor:
    """The published layer written out: B, C, x = in_proj(u); z_t = Σ_j w[k-1-j] · (B ⊙ x)_{t-j}
    over the taps that exist (+ the conv bias); y_t = out_proj(C_t ⊙ z_t)."""
    d, k = m.d_model, m.kernel
    proj = x @ m.in_proj.T + (m.in_proj_bias if m.in_proj_bias is not None else 0)
    b, c, h = proj[..., :d], proj[..., d:2 * d], proj[..., 2 * d:]
    bx = b * h
    w = m.conv_weight[:, 0]  # (d, k): the last tap reads the current token
    outs = []
    for t in range(x.shape[1]):
        z = m.conv_bias.clone() if m.conv_bias is not None else torch.zeros(d)
        for j in range(min(k, t + 1)):
            z = z + w[:, k - 1 - j] * bx[:, t - j]
        outs.append(c[:, t] * z)
    y = torch.stack(outs, dim=1)
    return y @ m.out_proj.T + (m.out_proj_bias if m.out_proj_bias is not None else 0)


@pytest.mark.parametrize("kernel,bias,conv_bias", [(3, True, True), (4, False, False), (1, False, True),
                                                   (2, True, False)])
def test_matches_the_loop_reference(kernel, bias, conv_bias):
    m = perturbed(kernel, bias, conv_bias)
    x = torch.randn(2, 9, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(m(x), loop_reference(m, x), **FP32)


# ----------------------------------------------------------------------------- Hugging Face

def hf_config(kernel, bias):
    return Lfm2Config(hidden_size=D_MODEL, conv_L_cache=kernel, conv_bias=bias, num_hidden_layers=1,
                      layer_types=["conv"], vocab_size=11, num_attention_heads=2, num_key_value_heads=2)


def hf_pair(kernel, bias):
    """A tiny Lfm2ShortConv with every weight perturbed, and the same layer here with its weights
    (LFM2's one conv_bias flag biases in_proj, the conv and out_proj)."""
    torch.manual_seed(1)
    hf = Lfm2ShortConv(hf_config(kernel, bias), 0).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.2))
    ours = rt.ShortConv(D_MODEL, kernel, bias=bias, conv_bias=bias)
    mapping = {"in_proj": "in_proj.weight", "in_proj_bias": "in_proj.bias", "conv_weight": "conv.weight",
               "conv_bias": "conv.bias", "out_proj": "out_proj.weight", "out_proj_bias": "out_proj.bias"}
    theirs = dict(hf.named_parameters())
    ours.load_state_dict({name: theirs[mapping[name]] for name, _ in ours.named_parameters()}, strict=True)
    assert {mapping[name] for name, _ in ours.named_parameters()} == set(theirs)
    return hf, ours


HF_CASES = [(3, False), (3, True), (5, True), (2, False)]


@pytest.mark.parametrize("case", HF_CASES)
def test_matches_hf_short_conv(case):
    hf, ours = hf_pair(*case)
    x = torch.randn(2, 11, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), **FP32)


@pytest.mark.parametrize("case,pieces", [(HF_CASES[0], (6, 1, 1, 1)), (HF_CASES[2], (5, 3, 1, 2, 1)),
                                         (HF_CASES[1], (1, 1, 4, 1))])
def test_cached_decode_matches_hf(case, pieces):
    """Prefill, then single tokens (HF's one-step update) and pieces (its conv over the cached window)."""
    hf, ours = hf_pair(*case)
    x = torch.randn(2, sum(pieces), D_MODEL)
    hf_cache, cache = DynamicCache(config=hf_config(*case)), rt.Cache()
    start = 0
    with torch.no_grad():
        for length in pieces:
            part = x[:, start:start + length]
            got = ours(part, rt.Context(positions=torch.arange(start, start + length), cache=cache))
            torch.testing.assert_close(got, hf(part, past_key_values=hf_cache), **FP32)
            start += length


@pytest.mark.parametrize("case", HF_CASES[:2])
def test_left_padding_matches_hf_and_does_not_leak(case):
    hf, ours = hf_pair(*case)
    x = torch.randn(2, 8, D_MODEL)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        got = ours(x, rt.Context(positions=torch.arange(8), attention_mask=mask))
        alone = ours(x[1:, 3:])[0]
        # whatever the padded tokens hold, biases or not, the real tokens see what they would alone
        torch.testing.assert_close(got[1, 3:], alone, **FP32)
        torch.testing.assert_close(got[0], ours(x[:1])[0], **FP32)
        if not case[1]:  # HF zeroes the layer's input, which equals zeroing B ⊙ x without an in_proj bias
            want = hf(x, attention_mask=mask)
            torch.testing.assert_close(got[:, 3:], want[:, 3:], **FP32)
            torch.testing.assert_close(got[0], want[0], **FP32)


def test_padding_without_the_mask_would_leak():
    """The regression the mask guards against: the padded tokens do reach the first real ones."""
    m = perturbed()
    x = torch.randn(1, 8, D_MODEL)
    with torch.no_grad():
        assert not torch.allclose(m(x)[0, 3:5], m(x[:, 3:])[0, :2], atol=1e-3)


# ----------------------------------------------------------------------------- properties

def test_causal():
    m = perturbed()
    x = torch.randn(2, 10, D_MODEL)
    y = m(x)
    x2 = x.clone()
    x2[:, 6:] += torch.randn(2, 4, D_MODEL)
    torch.testing.assert_close(m(x2)[:, :6], y[:, :6])
    assert not torch.allclose(m(x2)[:, 6:], y[:, 6:])


@pytest.mark.parametrize("pieces,kernel", [((10,), 3), ((1,) * 10, 3), ((2, 1, 1, 6), 4), ((5, 1, 4), 2),
                                           ((3, 3, 1, 3), 1), ((1, 7, 1, 1), 6)])
def test_cached_decode_equals_the_full_forward(pieces, kernel):
    m = perturbed(kernel)
    x = torch.randn(2, sum(pieces), D_MODEL)
    with torch.no_grad():
        full = m(x)
        cache, outs, start = rt.Cache(), [], 0
        for length in pieces:
            outs.append(m(x[:, start:start + length], rt.Context(positions=torch.arange(start, start + length),
                                                                 cache=cache)))
            start += length
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **FP32)


@pytest.mark.parametrize("kw", [{}, dict(bias=False, conv_bias=False)])
def test_gradients_reach_every_parameter(kw):
    m = perturbed(**kw)
    x = torch.randn(2, 7, D_MODEL, requires_grad=True)
    m(x).pow(2).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    names = {n for n, _ in m.named_parameters()}
    assert names == ({"in_proj", "conv_weight", "out_proj"} |
                     ({"in_proj_bias", "conv_bias", "out_proj_bias"} if not kw else set()))


def test_fullgraph_inference_compiles():
    """A cached prefill and a decoding step, each one graph, equal to eager."""
    torch._dynamo.reset()
    m = perturbed().eval()
    x = torch.randn(2, 6, D_MODEL)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    cache_eager, cache_compiled = rt.Cache(), rt.Cache()
    with torch.no_grad():
        for start, length in ((0, 5), (5, 1)):
            part, positions = x[:, start:start + length], torch.arange(start, start + length)
            want = m(part, rt.Context(positions=positions, cache=cache_eager, attention_mask=mask[:, :start + length]))
            got = compiled(part, rt.Context(positions=positions, cache=cache_compiled,
                                            attention_mask=mask[:, :start + length]))
            torch.testing.assert_close(got, want)
    torch.testing.assert_close(cache_compiled.get("")["conv"], cache_eager.get("")["conv"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", [1, 3])
def test_state_bytes_formula(dtype, kernel):
    m = perturbed(kernel).to(dtype)
    cache = rt.Cache()
    with torch.no_grad():
        m(torch.randn(3, 5, D_MODEL, dtype=dtype), rt.Context(positions=torch.arange(5), cache=cache))
    itemsize = torch.tensor([], dtype=dtype).element_size()
    assert cache.nbytes() == 3 * (kernel - 1) * D_MODEL * itemsize
