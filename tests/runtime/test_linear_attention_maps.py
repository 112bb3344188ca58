"""Linear attention's options: grouped key/value heads (`kv_heads`) and the feature map
(`elu_plus_one`, `relu`, `identity`). The runtime's recurrent form against the quadratic masked
form written out in plain PyTorch; cached decoding, causality, gradients and the cache bytes
`archc stats` reports, for every map; every shared attention option linear attention cannot
honour is refused at its value."""

import pytest
import torch
import torch.nn.functional as F

from archlang import runtime as rt
from archlang.api import compile_spec, load_source
from archlang.runtime.context import Cache, Context
from archlang.spec import ArchError, compat

from .test_matrix import _check_cache, _check_cache_bytes, _check_causal, _check_gradients

MAPS = {"elu_plus_one": lambda x: F.elu(x) + 1, "relu": F.relu, "identity": lambda x: x}
VOCAB = 61


def quadratic_reference(q, k, v, heads, kv_heads, feature_map, causal):
    """out_t = Σ_s m_ts (φ(q_t)·φ(k_s)) v_s / (Σ_s m_ts φ(q_t)·φ(k_s) + 1e-6), m the causal mask (or
    ones); query head h reads key/value head h // (heads / kv_heads)."""
    b, t, _ = q.shape
    d = q.shape[-1] // heads
    phi = MAPS[feature_map]
    q = phi(q.view(b, t, heads, d).transpose(1, 2))
    k = phi(k.view(b, t, kv_heads, d).transpose(1, 2)).repeat_interleave(heads // kv_heads, dim=1)
    v = v.view(b, t, kv_heads, d).transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)
    sim = q @ k.transpose(-1, -2)  # (B, H, T, T)
    if causal:
        sim = sim * torch.ones(t, t).tril()
    out = (sim @ v) / (sim.sum(-1, keepdim=True) + 1e-6)
    return out.transpose(1, 2).reshape(b, t, heads * d)


@pytest.mark.parametrize("feature_map", sorted(MAPS))
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_recurrent_form_equals_the_quadratic_masked_form(feature_map, heads, kv_heads, causal):
    d, t = 8, 9
    gen = torch.Generator().manual_seed(0)
    # positive features for the identity map: its normaliser then stays away from zero, where two
    # summation orders of the same function would part by rounding alone
    q = torch.randn(2, t, heads * d, generator=gen).abs() + 0.1
    k = torch.randn(2, t, kv_heads * d, generator=gen).abs() + 0.1
    v = torch.randn(2, t, kv_heads * d, generator=gen)
    if feature_map != "identity":  # elu + 1 and relu see both signs
        q, k = q - 0.6, k - 0.6
    attn = rt.LinearAttention(heads, d, causal=causal, kv_heads=kv_heads, feature_map=feature_map)
    out = attn(q, k, v, ctx=Context(positions=torch.arange(t)))
    torch.testing.assert_close(out, quadratic_reference(q, k, v, heads, kv_heads, feature_map, causal),
                               atol=1e-5, rtol=1e-5)


def test_cached_steps_equal_one_pass_at_the_module():
    d, heads, kv_heads, t = 8, 4, 2, 7
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, t, n * d, generator=gen) for n in (heads, kv_heads, kv_heads))
    attn = rt.LinearAttention(heads, d, causal=True, kv_heads=kv_heads, feature_map="relu", cache_key="a")
    full = attn(q, k, v, ctx=Context(positions=torch.arange(t)))
    cache = Cache()
    steps = [attn(q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], ctx=Context(positions=torch.arange(i, i + 1), cache=cache))
             for i in range(t)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def spec(attention: str) -> str:
    return (f"model m {{\n    vocab = {VOCAB}\n    d_model = 32\n    context = 64\n    dtype = fp32\n"
            f"    final_norm = rmsnorm()\n    block b {{\n        norm = rmsnorm()\n        attention = {attention}\n"
            f"        ffn = swiglu(hidden = 48)\n    }}\n    layers = b * 2\n}}\n")


def build(text: str):
    compiled = compile_spec(text)
    model = load_source(compiled.source, "m").build().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise * 0.2) if p.dim() >= 2 else p.add_(noise * 0.1)
    return model, compiled


@pytest.mark.parametrize("attention", [
    "linear(heads = 4, kv_heads = 2)", "linear(heads = 4, kv_heads = 1, feature_map = relu)",
    "linear(heads = 4, feature_map = identity, bias = true, out_bias = true)",
])
def test_each_map_and_grouping_keeps_the_contract(attention):
    model, compiled = build(spec(attention))
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    _check_causal(model, ids)
    _check_cache(model, ids)
    _check_gradients(model, ids)
    _check_cache_bytes(model, compiled, None)


def test_grouping_narrows_the_key_value_projections_and_the_state():
    model, compiled = build(spec("linear(heads = 4, kv_heads = 1)"))
    full, _ = build(spec("linear(heads = 4)"))
    narrow = dict(model.named_parameters())
    k = next(n for n in narrow if n.endswith("k_proj.weight") or n.endswith("qkv_proj.weight"))
    assert narrow[k].shape != dict(full.named_parameters())[k].shape
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())


def test_the_default_map_is_elu_plus_one_and_generates_the_same_code():
    def code(attention):  # the header names the spec's hash, which differs
        return [line for line in compile_spec(spec(attention)).source.splitlines() if "sha256" not in line]

    written = "\n".join(code("linear(heads = 4, kv_heads = 4, feature_map = elu_plus_one)"))
    assert written == "\n".join(code("linear(heads = 4)"))
    assert "rt.LinearAttention(4, 8, causal=True, cache_key=" in written


def located(text: str, field: str) -> ArchError:
    """The error points at the value written for `field`."""
    with pytest.raises(ArchError) as info:
        compile_spec(text)
    err = info.value
    line = text.splitlines()[err.span.line - 1]
    assert line[:err.span.column - 1].endswith(f"{field} = "), (err, line)
    return err


def test_bad_grouping_and_unknown_map_are_refused_at_the_value():
    located(spec("linear(heads = 4, kv_heads = 3)"), "kv_heads")
    located(spec("linear(heads = 4, feature_map = softmax)"), "feature_map")


# A value that sets each shared option (beside the others it needs, which are refused as well).
SETTINGS = {
    "window": "window = 4", "softcap": "softcap = 30", "scale": "scale = 0.5", "qk_norm": "qk_norm = rmsnorm()",
    "sinks": "sinks = true", "chunk": "chunk = 4", "sink_tokens": "window = 4, sink_tokens = 2",
    "dilation": "window = 4, dilation = 2", "global_tokens": "window = 4, global_tokens = 1",
    "temperature_tuning": "temperature_tuning = true",
    "floor_scale": "temperature_tuning = true, floor_scale = 4",
    "attn_scale": "temperature_tuning = true, attn_scale = 0.2",
}


def test_linear_attention_honours_only_the_projections_options():
    """A shared attention option added to the language is refused for linear attention until
    its runtime implements it (and this test says so). The projection biases and the output
    gate (a projection and a sigmoid lowered around any attention core) are honoured."""
    accepted = {o for o in compat.OPTIONS if compat.option_refusal("linear", o) is None}
    assert accepted == {"bias", "out_bias", "output_gate"}
    assert set(SETTINGS) == set(compat.OPTIONS) - accepted


@pytest.mark.parametrize("option", sorted(SETTINGS))
def test_every_other_option_is_refused_at_its_value(option):
    err = located(spec(f"linear(heads = 4, {SETTINGS[option]})"), SETTINGS[option].split(", ")[0].split(" =")[0])
    # an option that needs another (sink_tokens needs a window) is refused at that one, the
    # first of the two in the table; the test above proves each is refused on its own too
    assert "linear" in err.message
