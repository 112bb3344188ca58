"""RWKV-4's time mixing and RWKV's channel mixing (runtime/rwkv.py): the WKV recurrence against the
published formula re-expressed in plain PyTorch (float64, no stabilisation), the modules against
Hugging Face's RwkvSelfAttention / RwkvFeedForward with the same weights, and a compiled model's
contract: cached decoding = the full forward, causality, left padding, gradients on every
parameter, and `archc stats`' state bytes = what the cache holds.

flash-linear-attention's rwkv4 is a Triton kernel only (no CPU reference), so the independent
references here are the formula and transformers' modules. RWKV-7's layer is compared with
flash-linear-attention's RWKV7Attention re-expressed in plain PyTorch (its forward needs a GPU), on
its own tensors where `fla.layers` is installed, and its channel mixing with fla-core's torch
reference."""

from __future__ import annotations

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.compiler import compute_facts
from archlang.runtime import Cache, Context, RWKV4TimeMix, RWKVChannelMix
from archlang.runtime.rwkv import wkv4, wkv4_chunked

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


@pytest.mark.parametrize("chunk", [1, 4, 16])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_chunked_wkv4_equals_the_recurrence_with_gradients(chunk, scale):
    """From an empty and from a carried state, ragged last chunk: outputs, end states (as the
    numerator and denominator they stand for) and gradients."""
    gen = torch.Generator().manual_seed(2)
    k = (torch.randn(2, 9, 6, generator=gen) * scale).requires_grad_()
    v = torch.randn(2, 9, 6, generator=gen).requires_grad_()
    decay = torch.randn(6, generator=gen).requires_grad_()
    first = torch.randn(6, generator=gen).requires_grad_()
    _, carried = wkv4(decay.detach(), first.detach(), torch.randn(2, 5, 6, generator=gen) * scale,
                      torch.randn(2, 5, 6, generator=gen))
    weight = torch.randn(2, 9, 6, generator=gen)
    for state in (None, carried):
        (ref, ref_state), (got, got_state) = (form(decay, first, k, v, state) if form is wkv4 else
                                              form(decay, first, k, v, state, chunk) for form in (wkv4, wkv4_chunked))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        for scaled in (0, 1):  # numerator and denominator, each times e^max
            torch.testing.assert_close(got_state[scaled] * (got_state[2] - ref_state[2]).exp(), ref_state[scaled],
                                       atol=1e-5, rtol=1e-5)
        grads = [torch.autograd.grad((out * weight).sum(), (k, v, decay, first)) for out in (ref, got)]
        for a, b in zip(*grads):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


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


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_modules_equal_hugging_face_rwkv_layers(form):
    _, (attention, ffn), (time_mix, channel_mix) = _hf_layers()
    time_mix.form, time_mix.chunk = form, 3
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


# --- RWKV-7 -------------------------------------------------------------------------------------

SPEC7 = SPECS / "tiny_rwkv7.arch"
# flash-linear-attention's RWKV7Attention tensor → ours (its lerp weights are (1, 1, d), ours (d,))
FLA_RWKV7_NAMES = {
    **{f"x_{n}": f"x_{n}" for n in "rwkvag"}, "k_k": "k_k", "k_a": "k_a", "r_k": "r_k",
    **{f"{n}_proj.weight": f"{n}_proj" for n in "rkvo"},
    **{f"{n}_lora.lora.0.weight": f"{n}1" for n in "wavg"}, **{f"{n}_lora.lora.2.weight": f"{n}2" for n in "wavg"},
    **{f"{n}_lora.lora.2.bias": f"{n}0" for n in "wav"}, "g_norm.weight": "norm_weight", "g_norm.bias": "norm_bias",
}


def rwkv7_reference(p, x, v_first=None, heads=4, norm_eps=1e-5):
    """flash-linear-attention's RWKV7Attention.forward (fla/layers/rwkv7.py) re-expressed in plain
    PyTorch, with the state in RWKV-7's own layout: wkv_t = wkv_{t-1} (diag(w_t) + a_t^T b_t) +
    v_t^T k_t, read as wkv_t r_t (the published recurrence; the runtime runs a chunked form).
    `p`: our parameter names → tensors. Returns (output, this layer's v_first)."""
    b, t, d = x.shape
    hd = d // heads
    delta = torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), 1) - x
    xr, xw, xk, xv, xa, xg = (x + delta * p[f"x_{n}"] for n in "rwkvag")
    r, k, v = xr @ p["r_proj"].T, xk @ p["k_proj"].T, xv @ p["v_proj"].T
    w = -0.6065306597126334 * torch.sigmoid(torch.tanh(xw @ p["w1"].T) @ p["w2"].T + p["w0"])
    if "v1" in p:
        v = v + (v_first - v) * torch.sigmoid((xv @ p["v1"].T) @ p["v2"].T + p["v0"])
    else:
        v_first = v
    a = torch.sigmoid((xa @ p["a1"].T) @ p["a2"].T + p["a0"])
    g = torch.sigmoid(xg @ p["g1"].T) @ p["g2"].T
    heads_of = lambda z: z.view(b, t, heads, hd)  # noqa: E731
    kk = torch.nn.functional.normalize(heads_of(k * p["k_k"]), dim=-1)
    k = k * (1 + (a - 1) * p["k_a"])
    r_, w_, k_, v_, a_ = map(heads_of, (r, w, k, v, a))
    wkv, out = x.new_zeros(b, heads, hd, hd), []
    for i in range(t):
        transition = torch.diag_embed(w_[:, i].exp()) + (-kk[:, i])[..., :, None] * (kk[:, i] * a_[:, i])[..., None, :]
        wkv = wkv @ transition + v_[:, i, :, :, None] * k_[:, i, :, None, :]
        out.append((wkv @ r_[:, i, :, :, None])[..., 0])
    o = torch.stack(out, 1).reshape(b * t, d)
    o = torch.nn.functional.group_norm(o, heads, p["norm_weight"], p["norm_bias"], hd * norm_eps).view(b, t, d)
    bonus = (r_ * k_ * p["r_k"]).sum(-1, keepdim=True) * v_
    return ((o + bonus.reshape(b, t, d)) * g) @ p["o_proj"].T, v_first


def _rwkv7_pair(value_residual, seed=0):
    from archlang.runtime import RWKV7TimeMix

    layer = RWKV7TimeMix(32, 4, decay_rank=8, a_rank=8, value_rank=8 if value_residual else None, gate_rank=16,
                         chunk=4, cache_key="l")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return layer, {name: p.detach() for name, p in layer.named_parameters()}


@pytest.mark.parametrize("value_residual", [False, True])
def test_rwkv7_layer_is_the_published_layer(value_residual):
    layer, params = _rwkv7_pair(value_residual)
    gen = torch.Generator().manual_seed(7)
    x, v_first = torch.randn(2, 9, 32, generator=gen), torch.randn(2, 9, 32, generator=gen)
    ctx = Context(positions=torch.arange(9), tables={"rwkv7_v_first": v_first} if value_residual else {})
    with torch.no_grad():
        got = layer(x, ctx)
    want, published = rwkv7_reference(params, x, v_first)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ctx.tables["rwkv7_v_first"], published)  # the first layer leaves its v


def test_rwkv7_layer_takes_flash_linear_attentions_weights():
    """Our tensors are flash-linear-attention's RWKV7Attention's, one to one (its forward needs a
    GPU: the reference above runs on its tensors)."""
    pytest.importorskip("fla.layers")
    import warnings

    from fla.layers.rwkv7 import RWKV7Attention

    from archlang.runtime import RWKV7TimeMix

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = RWKV7Attention(hidden_size=32, head_dim=8, layer_idx=1, num_hidden_layers=2, decay_low_rank_dim=8,
                                gate_low_rank_dim=16, a_low_rank_dim=8, v_low_rank_dim=8)
    ours = RWKV7TimeMix(32, 4, decay_rank=8, a_rank=8, value_rank=8, gate_rank=16)
    their_tensors = dict(theirs.named_parameters())
    assert sorted(FLA_RWKV7_NAMES) == sorted(their_tensors)
    assert sorted(FLA_RWKV7_NAMES.values()) == sorted(n for n, _ in ours.named_parameters())
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for theirs_name, ours_name in FLA_RWKV7_NAMES.items():
            t = their_tensors[theirs_name]
            t.add_(torch.randn(t.shape, generator=gen) * 0.3)
            dict(ours.named_parameters())[ours_name].copy_(t.reshape(-1) if theirs_name.startswith("x_") else t)
    assert theirs.g_norm.eps == ours.norm_eps  # head_dim · norm_eps, computed alike
    x, v_first = torch.randn(1, 6, 32, generator=gen), torch.randn(1, 6, 32, generator=gen)
    params = {ours_name: their_tensors[theirs_name].detach().reshape(dict(ours.named_parameters())[ours_name].shape)
              for theirs_name, ours_name in FLA_RWKV7_NAMES.items()}
    with torch.no_grad():
        got = ours(x, Context(positions=torch.arange(6), tables={"rwkv7_v_first": v_first}))
    torch.testing.assert_close(got, rwkv7_reference(params, x, v_first)[0], atol=1e-5, rtol=1e-5)


def test_rwkv7_channel_mix_is_flash_linear_attentions():
    fla_mixing = pytest.importorskip("fla.ops.rwkv7.channel_mixing")
    from archlang.runtime import RWKV7ChannelMix

    mix = RWKV7ChannelMix(16, 40)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in mix.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
        x = torch.randn(2, 7, 16, generator=gen)
        want, _ = fla_mixing.channel_mixing_rwkv7_torch(x, torch.zeros(2, 16), mix.x_k, mix.key.T, mix.value.T)
        torch.testing.assert_close(mix(x), want, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def compiled7():
    return compile_spec(SPEC7)


def test_rwkv7_model_keeps_the_contract(compiled7):
    """Cached decoding = the full forward (a chunked prefill, then single steps), causality, left
    padding, gradients on every parameter, and the stats' state bytes = what the cache holds."""
    model, ids = _model(compiled7), _ids()
    test_cached_decoding_equals_the_full_forward(compiled7)
    test_a_later_token_never_changes_an_earlier_output(compiled7)
    test_left_padding_leaves_the_real_tokens_as_alone(compiled7)
    test_gradients_reach_every_parameter(compiled7)
    cache = Cache()
    with torch.no_grad():
        model(ids[:1], cache=cache)
    held = sum(t.numel() * t.element_size() for entry in cache.layers.values() for t in entry.values())
    facts = compute_facts(compiled7.graph, context=12, dtype="float32")
    # per layer: 4 heads of an 8 x 8 float32 state, and the two token shifts (32 each)
    assert held == facts.ssm_state_bytes_per_sequence == 3 * (4 * 8 * 8 * 4 + 2 * 32 * 4)


def test_rwkv7_params_and_flops(compiled7):
    facts = compute_facts(compiled7.graph)
    d = 32
    adapters = 2 * (2 * 8 * d + d) + 2 * 16 * d  # w and a (down, up, bias), g (down, up)
    first = 6 * d + 4 * d * d + adapters + 3 * d + 2 * d  # lerps, projections, adapters, k_k k_a r_k, norm
    time_mix = [first, first + 2 * 8 * d + d, first + 2 * 8 * d + d]  # the value-residual adapter after the first
    channel_mix = d + 2 * 64 * d
    norms = 2 * d * (2 * 3 + 2)
    assert facts.params_total == 2 * 97 * d + norms + sum(time_mix) + 3 * channel_mix
    flops = [8 * d * d + 4 * d * (8 + 8 + 16) + 9 * 8 * 8 * 4]
    flops += [flops[0] + 4 * d * 8] * 2
    assert facts.flops_per_token == sum(flops) + 3 * 4 * d * 64 + 2 * d * 97


RWKV7_STACK = """model m {{
    vocab = 97
    d_model = 32
    context = 64
    final_norm = layernorm()
    block first {{
        norm = layernorm()
        {first}
    }}
    block later {{
        norm = layernorm()
        ssm = rwkv7(heads = 4, value_residual = true)
    }}
    block plain {{
        norm = layernorm()
        ssm = rwkv7(heads = 4)
    }}
    layers = {layers}
}}
"""


@pytest.mark.parametrize("first,layers,needle", [
    ("ssm = rwkv7(heads = 4)", "later + first", "is the first layer"),
    ("attention = mha(heads = 4)", "first + later", "is not rwkv7 without value_residual"),
    ("ssm = rwkv7(heads = 4)", "first + later + plain", "would publish its own value"),
    ("ssm = rwkv7(heads = 4, value_rank = 8)", "first + plain", "value_rank sizes the value-residual adapter"),
    ("ssm = rwkv7(heads = 5)", "first + plain", "heads (5) must divide d_model (32)"),
])
def test_rwkv7_value_residual_refusals_are_located(first, layers, needle):
    from archlang.spec import ArchError, ArchErrors

    text = RWKV7_STACK.format(first=first, layers=layers)
    with pytest.raises((ArchError, ArchErrors)) as err:
        compile_spec(text)
    errors = getattr(err.value, "errors", [err.value])
    assert any(needle in e.message and e.span is not None and e.span.line > 1 for e in errors), errors


def test_rwkv7_in_a_shared_block_is_refused():
    from archlang.spec import ArchError, ArchErrors

    text = RWKV7_STACK.format(first="ssm = rwkv7(heads = 4)\n        shared = true", layers="first * 2")
    with pytest.raises((ArchError, ArchErrors), match="shared"):
        compile_spec(text)


def test_rwkv7_value_residual_reaches_across_an_attention_layer():
    """In a hybrid the first layer's value is still the one mixed in, two layers later, in a cached
    decode as in the full forward; without it the later layer computes something else."""
    text = """model m {
    vocab = 97
    d_model = 32
    context = 64
    position = rope()
    final_norm = layernorm()
    block first {
        norm = layernorm()
        ssm = rwkv7(heads = 4, chunk = 4)
    }
    block attn {
        norm = layernorm()
        attention = gqa(heads = 4, kv_heads = 2)
    }
    block later {
        norm = layernorm()
        ssm = rwkv7(heads = 4, value_residual = true, chunk = 4)
    }
    layers = [first, attn, later]
}
"""
    compiled = compile_spec(text)
    model, ids = _model(compiled), _ids()
    with torch.no_grad():
        full = model(ids)
        cache = Cache()
        steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(5, 12)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
        model.layers[2].ssm.v0.add_(100.0)  # sigmoid → 1: the later layer's v becomes the first layer's
        assert (model(ids) - full).abs().max() > 1e-3
