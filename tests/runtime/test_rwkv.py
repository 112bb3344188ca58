"""RWKV-4's time mixing and RWKV's channel mixing (runtime/rwkv.py): the WKV recurrence against the
published formula re-expressed in plain PyTorch (float64, no stabilisation), the modules against
Hugging Face's RwkvSelfAttention / RwkvFeedForward with the same weights, and a compiled model's
contract: cached decoding = the full forward, causality, left padding, gradients on every
parameter, and `archc stats`' state bytes = what the cache holds.

flash-linear-attention's rwkv4 is a Triton kernel only (no CPU reference), so the independent
references here are the formula and transformers' modules."""

from __future__ import annotations

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.compiler import compute_facts
from archlang.runtime import Cache, Context, RWKV4TimeMix, RWKVChannelMix
from archlang.runtime.rwkv import wkv4

from ..conftest import SPECS

SPEC = SPECS / "tiny_rwkv.arch"


def wkv4_formula(time_decay, time_first, k, v):
    """The WKV of the RWKV paper (eq. 14 with w = -exp(time_decay), u = time_first), summed directly
    in float64: wkv_t = (Σ_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u + k_t} v_t) / (the same with v = 1)."""
    k, v = k.double(), v.double()
    w, u = -torch.exp(time_decay.double()), time_first.double()
    t = k.shape[1]
    out = torch.empty_like(k)
    for j in range(t):
        past = torch.arange(j, dtype=torch.float64)
        weights = torch.exp((j - 1 - past)[None, :, None] * w + k[:, :j])  # (B, j, C)
        bonus = torch.exp(u + k[:, j])  # (B, C)
        out[:, j] = ((weights * v[:, :j]).sum(1) + bonus * v[:, j]) / (weights.sum(1) + bonus)
    return out


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_wkv4_is_the_published_formula(scale):
    """Large keys (e^{30·3} overflows float32) are where the running maximum matters."""
    gen = torch.Generator().manual_seed(0)
    b, t, c = 2, 9, 6
    k = torch.randn(b, t, c, generator=gen) * scale
    v = torch.randn(b, t, c, generator=gen)
    decay, first = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    got, _ = wkv4(decay, first, k, v)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), wkv4_formula(decay, first, k, v), atol=1e-5, rtol=1e-5)


def test_wkv4_state_continues_the_sequence():
    gen = torch.Generator().manual_seed(1)
    k, v = torch.randn(1, 10, 4, generator=gen), torch.randn(1, 10, 4, generator=gen)
    decay, first = torch.randn(4, generator=gen), torch.randn(4, generator=gen)
    full, state = wkv4(decay, first, k, v)
    head, mid = wkv4(decay, first, k[:, :4], v[:, :4])
    tail, end = wkv4(decay, first, k[:, 4:], v[:, 4:], mid)
    torch.testing.assert_close(torch.cat((head, tail), 1), full)
    for a, b in zip(end, state):
        torch.testing.assert_close(a, b)


def _hf_layers(d_model=16, dim=16, hidden=24):
    T = pytest.importorskip("transformers")
    from transformers.models.rwkv.modeling_rwkv import RwkvFeedForward, RwkvSelfAttention

    config = T.RwkvConfig(hidden_size=d_model, attention_hidden_size=dim, intermediate_size=hidden,
                          num_hidden_layers=2)
    torch.manual_seed(0)
    attention, ffn = RwkvSelfAttention(config, layer_id=1), RwkvFeedForward(config, layer_id=1)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in list(attention.parameters()) + list(ffn.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    ours_attention, ours_ffn = RWKV4TimeMix(d_model, dim, cache_key="l"), RWKVChannelMix(d_model, hidden, cache_key="l")
    with torch.no_grad():
        for ours, theirs in ((ours_attention, attention), (ours_ffn, ffn)):
            for name, p in ours.named_parameters():
                source = dict(theirs.named_parameters())[name if name.startswith("time_") else f"{name}.weight"]
                p.copy_(source.reshape(p.shape))
    return config, (attention, ffn), (ours_attention, ours_ffn)


def test_modules_equal_hugging_face_rwkv_layers():
    _, (attention, ffn), (time_mix, channel_mix) = _hf_layers()
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(time_mix(x), attention(x)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(channel_mix(x), ffn(x)[0], atol=1e-5, rtol=1e-5)


def test_narrow_time_mixing_equals_hugging_face():
    _, (attention, _), (time_mix, _) = _hf_layers(dim=8)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(time_mix(x), attention(x)[0], atol=1e-5, rtol=1e-5)


def test_cached_steps_equal_hugging_face_state_passing():
    """Token by token through both: our cache entries against transformers' five state tensors."""
    config, (attention, ffn), (time_mix, channel_mix) = _hf_layers()
    x = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(6))
    state = [torch.zeros(1, 16, 2) for _ in range(5)]
    state[4] -= 1e30
    cache = Cache()
    ctx = Context(positions=torch.arange(1), cache=cache)
    with torch.no_grad():
        for t in range(6):
            step = x[:, t:t + 1]
            ref_a, state = attention(step, state=state, use_cache=True)
            ref_f, state = ffn(step, state=state)
            torch.testing.assert_close(time_mix(step, ctx), ref_a, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(channel_mix(step, ctx), ref_f, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def compiled():
    return compile_spec(SPEC)


def _model(compiled):
    model = load_source(compiled.source, compiled.model.name).build().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.2 if p.dim() >= 2 else 0.1))
    return model


def _ids(t=12, seed=1):
    return torch.randint(0, 97, (2, t), generator=torch.Generator().manual_seed(seed))


def test_cached_decoding_equals_the_full_forward(compiled):
    model, ids = _model(compiled), _ids()
    with torch.no_grad():
        full = model(ids)
        cache = Cache()
        steps = [model(ids[:, :4], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(4, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_a_later_token_never_changes_an_earlier_output(compiled):
    model, ids = _model(compiled), _ids()
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 97
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-4


def test_left_padding_leaves_the_real_tokens_as_alone(compiled):
    model, ids = _model(compiled), _ids(t=7)
    padded = torch.cat((torch.zeros(2, 3, dtype=ids.dtype), ids), 1)
    mask = torch.cat((torch.zeros(2, 3), torch.ones(2, 7)), 1).long()
    with torch.no_grad():
        alone, with_pad = model(ids), model(padded, attention_mask=mask)
    torch.testing.assert_close(with_pad[:, 3:], alone, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter(compiled):
    model = _model(compiled).train()
    logits = model(_ids())
    (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    bad = [n for n, p in model.named_parameters()
           if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    assert not bad


def test_stats_state_bytes_are_what_the_cache_holds(compiled):
    model, cache = _model(compiled), Cache()
    with torch.no_grad():
        model(_ids()[:1], cache=cache)
    held = sum(t.numel() * t.element_size() for entry in cache.layers.values() for t in entry.values())
    facts = compute_facts(compiled.graph, context=12, dtype="float32")
    # per layer: the time and channel mixing's token shifts (32 each) and the WKV numerator,
    # denominator and maximum (32, 16 in the narrow block, 32) in float32
    assert held == facts.ssm_state_bytes_per_sequence == 4 * (3 * 2 * 32 + 3 * (32 + 16 + 32))
    assert facts.kv_cache_bytes_at_context == 0


def test_params_and_flops_of_the_ops(compiled):
    facts = compute_facts(compiled.graph)
    d = 32
    time_mix = lambda dim: 4 * d * dim + 2 * dim + 3 * d  # noqa: E731
    channel_mix = lambda hidden: 2 * d * hidden + d * d + 2 * d  # noqa: E731
    norms = 2 * d * (2 * 3 + 2)  # two per layer, the embedding norm and the final norm, with biases
    assert facts.params_total == (2 * 97 * d + norms + 2 * time_mix(32) + time_mix(16)
                                  + 2 * channel_mix(64) + channel_mix(48))
    flops_layers = (2 * (8 * d * 32 + 11 * 32) + 8 * d * 16 + 11 * 16
                    + 2 * (4 * d * 64 + 2 * d * d) + (4 * d * 48 + 2 * d * d))
    assert facts.flops_per_token == flops_layers + 2 * d * 97  # the head
