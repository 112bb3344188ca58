"""Griffin's recurrent block (rt.RGLRU) against independent references: the paper's equations
re-expressed in plain PyTorch (De et al. 2024, §2.4), flash-linear-attention's naive HGRN scan (the
same diagonal recurrence), Hugging Face's RecurrentGemmaRecurrentBlock with perturbed weights; the
parallel scan against the step; cached decoding and left padding against the full forward."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from archlang import runtime as rt
from archlang.runtime.context import Cache, Context
from archlang.runtime.rglru import scan_parallel, scan_recurrent

warnings.filterwarnings("ignore")


def _layer(d_model=16, width=24, heads=3, conv_size=4, seed=0, **kw) -> rt.RGLRU:
    torch.manual_seed(seed)
    layer = rt.RGLRU(d_model, width, heads, conv_size=conv_size, **kw)
    with torch.no_grad():  # no parameter left at a value (zero biases) that would hide a mistake
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return layer


def griffin(layer: rt.RGLRU, x: torch.Tensor) -> torch.Tensor:
    """The recurrent block as the paper writes it, one token at a time, nothing shared with the
    runtime but the weights: x_t and the gate branch from two linear layers, a causal Conv1D, then
    the RG-LRU (eq. 1-4): r_t = σ(W_a x_t + b_a), i_t = σ(W_x x_t + b_x), a_t = a^(c r_t) with
    a = σ(Λ) and c = 8, h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ (i_t ⊙ x_t), h_{-1} = 0 and the
    first token not normalised (RecurrentGemma's reset at the start of a sequence)."""
    B, T, _ = x.shape
    W, H, K = layer.width, layer.heads, layer.conv_size
    n = W // H
    gate_branch = F.gelu(x @ layer.linear_y.T + layer.linear_y_bias, approximate="tanh")
    u = x @ layer.linear_x.T + layer.linear_x_bias  # (B, T, W)
    conv = torch.zeros_like(u)
    for t in range(T):
        for j in range(K):  # tap j reads the token K - 1 - j steps back
            if t - (K - 1 - j) >= 0:
                conv[:, t] += layer.conv_weight[:, 0, j] * u[:, t - (K - 1 - j)]
    conv = conv + layer.conv_bias
    Lambda = -layer.recurrent_param  # exp(-c·r·softplus(p)) = σ(-p)^(c·r): the stored p is -Λ
    a_base = torch.sigmoid(Lambda)
    h = torch.zeros(B, W)
    out = []
    for t in range(T):
        xt = conv[:, t].view(B, H, n)
        r = torch.sigmoid(torch.einsum("bhi,hij->bhj", xt, layer.recurrent_gate_weight) + layer.recurrent_gate_bias)
        i = torch.sigmoid(torch.einsum("bhi,hij->bhj", xt, layer.input_gate_weight) + layer.input_gate_bias)
        r, i = r.reshape(B, W), i.reshape(B, W)
        a = a_base ** (8.0 * r)
        norm = torch.ones_like(a) if t == 0 else torch.sqrt(1 - a ** 2)
        h = a * h + norm * (i * conv[:, t])
        out.append(h)
    hs = torch.stack(out, dim=1)
    return (hs * gate_branch) @ layer.linear_out.T + layer.linear_out_bias


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_matches_the_papers_equations(form):
    layer = _layer(form=form).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), griffin(layer, x).to(x.dtype), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t", [1, 2, 7, 16, 33])
def test_parallel_scan_equals_the_step_and_fla_hgrn(t):
    fla_hgrn = pytest.importorskip("fla.ops.hgrn.naive")
    torch.manual_seed(t)
    a = torch.rand(3, t, 5)
    a[:, t // 2] = 0  # a reset inside the sequence
    x, h0 = torch.randn(3, t, 5), torch.randn(3, 5)
    step = scan_recurrent(a, x, h0)
    torch.testing.assert_close(scan_parallel(a, x, h0), step, atol=1e-6, rtol=1e-5)
    ref, _ = fla_hgrn.naive_recurrent_hgrn(x, torch.log(a), initial_state=h0)  # h_t = exp(g_t) h_{t-1} + x_t
    torch.testing.assert_close(step, ref, atol=1e-6, rtol=1e-5)


def test_hugging_face_recurrent_block_parity():
    T = pytest.importorskip("transformers")
    from transformers.models.recurrent_gemma import modeling_recurrent_gemma as M

    config = T.RecurrentGemmaConfig(hidden_size=16, lru_width=24, num_attention_heads=3, conv1d_width=4,
                                    num_hidden_layers=1, vocab_size=11)
    torch.manual_seed(1)
    hf = M.RecurrentGemmaRecurrentBlock(config, 0).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ours = rt.RGLRU(16, 24, 3, conv_size=4)
    names = {"linear_x": "linear_x.weight", "linear_x_bias": "linear_x.bias", "linear_y": "linear_y.weight",
             "linear_y_bias": "linear_y.bias", "conv_weight": "conv_1d.weight", "conv_bias": "conv_1d.bias",
             "linear_out": "linear_out.weight", "linear_out_bias": "linear_out.bias"}
    names.update({n: f"rg_lru.{n}" for n in ("input_gate_weight", "input_gate_bias", "recurrent_gate_weight",
                                              "recurrent_gate_bias", "recurrent_param")})
    hf_state = hf.state_dict()
    ours.load_state_dict({k: hf_state[v] for k, v in names.items()})
    x = torch.randn(2, 9, 16)
    positions = torch.arange(9)
    with torch.no_grad():
        ref, _ = hf(x, position_ids=positions[None].expand(2, -1), attention_mask=None, use_cache=False)
        got = ours(x, Context(positions=positions))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_cached_decode_equals_the_full_forward():
    layer = _layer()
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        full = layer(x, Context(positions=torch.arange(10)))
        cache = Cache()
        parts = [layer(x[:, :4], Context(positions=torch.arange(4), cache=cache))]
        for t in range(4, 10):  # one token at a time: the step form
            parts.append(layer(x[:, t:t + 1], Context(positions=torch.tensor([t]), cache=cache)))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    entry = cache.get(layer.cache_key)
    assert entry["conv"].shape == (2, 24, 3) and entry["state"].dtype == torch.float32  # what facts count


def test_a_left_padded_row_sees_what_it_would_alone():
    layer = _layer()
    x = torch.randn(1, 6, 16)
    padded = torch.cat((torch.randn(1, 3, 16), x), dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = layer(x, Context(positions=torch.arange(6)))
        got = layer(padded, Context(positions=torch.arange(9), attention_mask=mask))[:, 3:]
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)


def test_the_first_token_is_not_normalised():
    """Without the reset, position 0 would be scaled by sqrt(1 - a_0²) < 1: the two differ."""
    layer = _layer()
    x = torch.randn(1, 3, 16)
    with torch.no_grad():
        at_start = layer(x, Context(positions=torch.arange(3)))
        later = layer(x, Context(positions=torch.arange(5, 8)))  # same tokens, not a sequence start
    assert not torch.allclose(at_start[:, 0], later[:, 0], atol=1e-3)


def test_gradients_reach_every_parameter():
    layer = _layer()
    x = torch.randn(2, 8, 16, requires_grad=True)
    layer(x, Context(positions=torch.arange(8))).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert math.isfinite(x.grad.abs().sum().item())
