"""The gated linear-attention layers the generated code builds (runtime/linear_mixers.py) against
the published recurrences written token by token in plain PyTorch: GLA (Yang et al. 2024) and
multi-scale retention without xPos (Sun et al. 2023). Gated DeltaNet's layer is compared with
Hugging Face's Qwen3-Next layer in tests/interop (test_hf_parity.py, CASES qwen3_next)."""

import pytest
import torch
import torch.nn.functional as F

from archlang.runtime import Cache, Context, GLALayer, RetentionLayer

B, T, D = 2, 11, 16


def _perturbed(layer, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return layer


def _heads(x, n):
    return x.view(x.shape[0], x.shape[1], n, -1)  # (B, T, H, d)


def _rms(x, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def gla_reference(layer: GLALayer, x):
    h, dk, dv = layer.heads, layer.key_dim, layer.value_dim
    q, k = _heads(x @ layer.q_proj.T, h) * dk**-0.5, _heads(x @ layer.k_proj.T, h)
    v, g = _heads(x @ layer.v_proj.T, h), _heads(x @ layer.g_proj.T, h)
    alpha = torch.sigmoid(_heads((x @ layer.gk_down.T) @ layer.gk_up.T + layer.gk_up_bias, h)) ** (
        1 / layer.gate_logit_normalizer)  # (B, T, H, dk)
    state, out = torch.zeros(x.shape[0], h, dk, dv), []
    for t in range(x.shape[1]):
        state = alpha[:, t, :, :, None] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        o = torch.einsum("bhk,bhkv->bhv", q[:, t], state)
        out.append(_rms(o, layer.norm_eps) * layer.norm_weight * F.silu(g[:, t]))
    return torch.stack(out, dim=1).flatten(2) @ layer.out_proj.T


def retention_reference(layer: RetentionLayer, x):
    h, dk, dv = layer.heads, layer.key_dim, layer.value_dim
    q, k, v = _heads(x @ layer.q_proj.T, h) * dk**-0.5, _heads(x @ layer.k_proj.T, h), _heads(x @ layer.v_proj.T, h)
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(h, dtype=torch.float64))
    state, out = torch.zeros(x.shape[0], h, dk, dv), []
    for t in range(x.shape[1]):
        state = gamma.float()[None, :, None, None] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        o = torch.einsum("bhk,bhkv->bhv", q[:, t], state)
        if layer.g_proj is not None:
            o = _rms(o, layer.norm_eps) * F.silu(_heads(x @ layer.g_proj.T, h)[:, t])
        out.append(o)
    return torch.stack(out, dim=1).flatten(2) @ layer.out_proj.T


LAYERS = {
    "gla": (lambda: GLALayer(D, 2, 4, 6, gate_rank=3, gate_logit_normalizer=8.0, chunk=4), gla_reference),
    "retention": (lambda: RetentionLayer(D, 4, 4, 2, chunk=4), retention_reference),
    "retention-plain": (lambda: RetentionLayer(D, 2, 8, 8, output_gate=False, chunk=4), retention_reference),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_matches_the_token_by_token_recurrence(name):
    make, reference = LAYERS[name]
    torch.manual_seed(0)
    layer = _perturbed(make())
    x = torch.randn(B, T, D)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(layer, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_cached_decode_equals_the_full_forward(name):
    make, _ = LAYERS[name]
    torch.manual_seed(0)
    layer = _perturbed(make())
    layer.cache_key = "l"
    x = torch.randn(B, T, D)
    with torch.no_grad():
        full = layer(x)
        cache = Cache()
        steps = [layer(x[:, :5], Context(positions=torch.arange(5), cache=cache))]
        steps += [layer(x[:, t:t + 1], Context(positions=torch.arange(t, t + 1), cache=cache)) for t in range(5, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert sum(t.numel() * 4 for t in cache.layers["l"].values()) == layer.state_bytes() * B
