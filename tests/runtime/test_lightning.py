"""MiniMax's lightning attention (rt.Lightning) against independent references: Hugging Face's
MiniMaxLightningAttention with perturbed weights (its block-wise prefill and its decoding step), a
plain-PyTorch re-expression of the layer whose recurrence is flash-linear-attention's naive simple
GLA; the decay rates against transformers'; the chunked form against the step; cached decoding
against the full forward."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from archlang import runtime as rt
from archlang.runtime.context import Cache, Context
from archlang.runtime.lightning import lightning_slopes

warnings.filterwarnings("ignore")


def _layer(d_model=16, heads=2, key_dim=8, value_dim=8, layer=1, layers=3, seed=0, **kw) -> rt.Lightning:
    torch.manual_seed(seed)
    m = rt.Lightning(d_model, heads, key_dim, value_dim, layer=layer, layers=layers, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


def test_the_decay_rates_are_transformers():
    T = pytest.importorskip("transformers")
    from transformers.models.minimax import modeling_minimax as M

    for heads, layers in ((4, 3), (8, 5), (64, 80)):
        config = T.MiniMaxConfig(hidden_size=heads * 4, num_attention_heads=heads, num_hidden_layers=layers,
                                 block_size=4)
        for layer in (0, 1, layers - 1):
            hf = M.MiniMaxLightningAttention(config, layer)
            torch.testing.assert_close(lightning_slopes(heads, layer, layers), hf.get_slope_rate().flatten())


def _hf_pair(layer_idx=1, layers=3, seed=2):
    T = pytest.importorskip("transformers")
    from transformers.models.minimax import modeling_minimax as M

    config = T.MiniMaxConfig(hidden_size=16, num_attention_heads=2, head_dim=8, num_hidden_layers=layers,
                             block_size=4, layer_types=["linear_attention"] * layers)
    torch.manual_seed(seed)
    hf = M.MiniMaxLightningAttention(config, layer_idx).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ours = rt.Lightning(16, 2, 8, 8, layer=layer_idx, layers=layers)
    qkv = hf.qkv_proj.weight.view(2, 3, 8, 16)  # [q; k; v] per head
    ours.load_state_dict({"q_proj": qkv[:, 0].reshape(16, 16), "k_proj": qkv[:, 1].reshape(16, 16),
                          "v_proj": qkv[:, 2].reshape(16, 16), "gate_proj": hf.output_gate.weight,
                          "norm_weight": hf.norm.weight, "out_proj": hf.out_proj.weight})
    return hf, ours


@pytest.mark.parametrize("layer_idx", [0, 2])
def test_hugging_face_lightning_attention_parity(layer_idx):
    """11 tokens cross HF's 4-token blocks (its intra/inter-block prefill); then a cached step."""
    from transformers.models.minimax.modeling_minimax import MiniMaxCache

    hf, ours = _hf_pair(layer_idx)
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        hf_cache, cache = MiniMaxCache(), Cache()
        ref, _ = hf(x[:, :11], None, None, past_key_values=hf_cache)
        got = ours(x[:, :11], Context(positions=torch.arange(11), cache=cache))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        ref_step, _ = hf(x[:, 11:], None, None, past_key_values=hf_cache)
        got_step = ours(x[:, 11:], Context(positions=torch.tensor([11]), cache=cache))
    torch.testing.assert_close(got_step, ref_step, atol=1e-5, rtol=1e-5)


def _plain(m: rt.Lightning, x: torch.Tensor) -> torch.Tensor:
    """The layer as MiniMax-01 describes it, its recurrence taken from fla's naive simple GLA
    (S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale · q_t)) with g = -s_h and scale 1."""
    naive = pytest.importorskip("fla.ops.simple_gla.naive")
    b, t, _ = x.shape
    h = m.heads
    q, k, v = (F.silu(x @ w.T).view(b, t, h, -1) for w in (m.q_proj, m.k_proj, m.v_proj))  # (B, T, H, d)
    g = (-lightning_slopes(h, 1, 3))[None, None, :].expand(b, t, h)
    o, _ = naive.naive_recurrent_simple_gla(q, k, v, g, scale=1.0)
    o = o.reshape(b, t, -1)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6) * m.norm_weight
    return (torch.sigmoid(x @ m.gate_proj.T) * o) @ m.out_proj.T


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
def test_matches_a_plain_reexpression_on_fla_naive_simple_gla(form):
    m = _layer(form=form, chunk=4)
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _plain(m, x), atol=1e-5, rtol=1e-5)


def test_cached_decode_equals_the_full_forward():
    m = _layer(key_dim=4, value_dim=12, chunk=4)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        full = m(x, Context(positions=torch.arange(9)))
        cache = Cache()
        parts = [m(x[:, :5], Context(positions=torch.arange(5), cache=cache))]
        parts += [m(x[:, t:t + 1], Context(positions=torch.tensor([t]), cache=cache)) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.get(m.cache_key)["state"].shape == (2, 2, 4, 12)


def test_a_left_padded_row_sees_what_it_would_alone():
    m = _layer()
    x = torch.randn(1, 5, 16)
    padded = torch.cat((torch.randn(1, 2, 16), x), dim=1)
    with torch.no_grad():
        alone = m(x, Context(positions=torch.arange(5)))
        got = m(padded, Context(positions=torch.arange(7), attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1, 1]])))
    torch.testing.assert_close(got[:, 2:], alone, atol=1e-5, rtol=1e-5)
