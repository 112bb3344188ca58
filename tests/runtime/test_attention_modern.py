"""2024–2026 attention features of rt.Attention (QK-norm, learned sinks, chunked attention,
StreamingLLM sink tokens, Llama 4 temperature tuning) and RoPE's longrope / dynamic NTK scaling.

Each against a plain-PyTorch re-expression written here, and against the Hugging Face module that
has it (tiny configs built here, every weight perturbed), plus the properties every attention
layer keeps: causality, cached decode = full forward, gradients into every new parameter, and
an output that the feature changes.
"""

from __future__ import annotations

import math

import pytest
import torch

from archlang import runtime as rt
from archlang.spec.errors import ArchError

from ..conftest import FP32

B, H, KV, D = 2, 4, 2, 8


def context(positions, cache=None):
    return rt.Context(positions=positions, cache=cache)


def rope_for(positions, dim=D):
    return rt.RopeTable(dim, 256)(positions)


def perturb(module: torch.nn.Module, scale: float = 0.3) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


def qkv(t, heads=H, kv_heads=KV, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, t, heads * d, generator=g), torch.randn(B, t, kv_heads * d, generator=g),
            torch.randn(B, t, kv_heads * d, generator=g))


# ----------------------------------------------------------------------------- plain references

def rms(x, weight=None, eps=1e-6, unit_offset=False):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if weight is None:
        return y
    return y * (1 + weight) if unit_offset else y * weight


def rotate(x, positions, theta=10000.0):
    """RoPE on the last dim (..., T, d), channel i paired with i + d/2."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None] * inv[None]
    cos, sin = angle.cos().float(), angle.sin().float()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def heads_of(x, n):
    b, t, c = x.shape
    return x.view(b, t, n, c // n).transpose(1, 2)


def plain_attention(q, k, v, allowed, scale, sinks=None):
    """softmax over keys (and one sink logit per head) of the allowed scores; loops over nothing."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    weights = (scores - top).exp()
    denom = weights.sum(-1, keepdim=True)
    if sinks is not None:  # one more term in each denominator, no value
        denom = denom + (sinks[None, :, None, None] - top).exp()
    out = (weights / denom) @ v
    b, h, t, d = out.shape
    return out.transpose(1, 2).reshape(b, t, h * d)


def allowed_mask(t, *, window=None, chunk=None, sink_tokens=0):
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    ok = j <= i
    if window:
        ok &= (i - j < window) | (j < sink_tokens)
    if chunk:
        ok &= (i // chunk) == (j // chunk)
    return ok


# ----------------------------------------------------------------------------- QK-norm

@pytest.mark.parametrize("kind,scope,unit_offset", [
    ("rmsnorm", "head", False), ("rmsnorm", "head", True), ("rmsnorm", "projection", False),
    ("layernorm", "head", False), ("layernorm", "projection", False), ("l2", "head", False),
])
def test_qk_norm_matches_plain_reference(kind, scope, unit_offset):
    t = 7
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, qk_norm=kind, qk_norm_scope=scope,
                          qk_norm_eps=1e-5, qk_norm_unit_offset=unit_offset)
    perturb(module)
    q, k, v = qkv(t)
    pos = torch.arange(t)
    out = module(q, k, v, ctx=context(pos), rope=rope_for(pos))

    def norm(x, which, n):
        if kind == "l2":  # after RoPE, below
            return heads_of(x, n)
        w = getattr(module, f"{which}_norm").detach()
        if kind == "layernorm":
            b = getattr(module, f"{which}_norm_bias").detach()
            def f(y):
                return (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-5) * w + b
        else:
            def f(y):
                return rms(y, w, 1e-5, unit_offset)
        return heads_of(f(x), n) if scope == "projection" else f(heads_of(x, n))

    qh, kh = rotate(norm(q, "q", H), pos), rotate(norm(k, "k", KV), pos)
    if kind == "l2":  # Llama 4 normalises the rotated q and k
        qh, kh = rms(qh, eps=1e-5), rms(kh, eps=1e-5)
    expected = plain_attention(qh, kh, heads_of(v, KV), allowed_mask(t), D**-0.5)
    torch.testing.assert_close(out, expected, **FP32)


def test_qk_norm_parameter_shapes():
    head = rt.Attention(H, KV, D, causal=True, scale=1.0, qk_norm="layernorm")
    assert head.q_norm.shape == head.k_norm.shape == head.q_norm_bias.shape == (D,)
    proj = rt.Attention(H, KV, D, causal=True, scale=1.0, qk_norm="rmsnorm", qk_norm_scope="projection")
    assert proj.q_norm.shape == (H * D,) and proj.k_norm.shape == (KV * D,)
    assert not hasattr(proj, "q_norm_bias")
    gemma = rt.Attention(H, KV, D, causal=True, scale=1.0, qk_norm="rmsnorm", qk_norm_unit_offset=True)
    assert torch.equal(gemma.q_norm, torch.zeros(D))
    assert [n for n, _ in rt.Attention(H, KV, D, causal=True, scale=1.0, qk_norm="l2").named_parameters()] == []


def test_projection_scope_refuses_a_slice_of_heads():
    module = rt.Attention(H, KV, D, causal=True, scale=1.0, qk_norm="rmsnorm", qk_norm_scope="projection")
    q, k, v = qkv(3)
    with pytest.raises(ArchError, match="unsharded"):
        module(q[..., : H * D // 2], k[..., : KV * D // 2], v[..., : KV * D // 2], ctx=context(torch.arange(3)))


# ----------------------------------------------------------------------------- sinks, chunk, sink tokens

@pytest.mark.parametrize("window", [None, 3])
def test_sinks_match_plain_reference(window):
    t = 8
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, window=window, sinks=True)
    perturb(module, 1.0)
    q, k, v = qkv(t)
    pos = torch.arange(t)
    out = module(q, k, v, ctx=context(pos), rope=rope_for(pos))
    expected = plain_attention(rotate(heads_of(q, H), pos), rotate(heads_of(k, KV), pos), heads_of(v, KV),
                               allowed_mask(t, window=window), D**-0.5, sinks=module.sinks.detach())
    torch.testing.assert_close(out, expected, **FP32)


@pytest.mark.parametrize("kw", [dict(chunk=3), dict(window=3, sink_tokens=2)], ids=["chunk", "streaming"])
def test_masks_match_plain_reference(kw):
    t = 11
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, **kw)
    q, k, v = qkv(t)
    pos = torch.arange(t)
    out = module(q, k, v, ctx=context(pos), rope=rope_for(pos))
    expected = plain_attention(rotate(heads_of(q, H), pos), rotate(heads_of(k, KV), pos), heads_of(v, KV),
                               allowed_mask(t, **kw), D**-0.5)
    torch.testing.assert_close(out, expected, **FP32)


def test_temperature_tuning_matches_plain_reference():
    t = 9
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, temperature_tuning=True, floor_scale=2.0,
                          attn_scale=0.5)
    q, k, v = qkv(t)
    pos = torch.arange(t)
    out = module(q, k, v, ctx=context(pos))
    scales = torch.tensor([math.log1p(math.floor((p + 1) / 2.0)) * 0.5 + 1 for p in range(t)])
    expected = plain_attention(heads_of(q, H) * scales[:, None], heads_of(k, KV), heads_of(v, KV),
                               allowed_mask(t), D**-0.5)
    torch.testing.assert_close(out, expected, **FP32)


def test_temperature_tuning_refuses_a_rope_layer():
    module = rt.Attention(H, KV, D, causal=True, scale=1.0, temperature_tuning=True)
    q, k, v = qkv(3)
    with pytest.raises(ArchError, match="NoPE"):
        module(q, k, v, ctx=context(torch.arange(3)), rope=rope_for(torch.arange(3)))


@pytest.mark.parametrize("kw,match", [
    (dict(qk_norm="rms"), "unknown qk_norm"),
    (dict(qk_norm="rmsnorm", qk_norm_scope="layer"), "unknown qk_norm_scope"),
    (dict(qk_norm="l2", qk_norm_unit_offset=True), "unit_offset"),
    (dict(qk_norm="l2", qk_norm_scope="projection"), "per head"),
    (dict(chunk=4, window=8), "without a sliding window"),
    (dict(chunk=4, causal=False), "causal"),
    (dict(sink_tokens=4), "sliding window"),
    (dict(temperature_tuning=True, floor_scale=0.0), "floor_scale"),
])
def test_unimplemented_combinations_are_refused(kw, match):
    kw = {"causal": True, **kw}
    with pytest.raises(ArchError, match=match):
        rt.Attention(H, KV, D, scale=1.0, **kw)


def test_differential_attention_refuses_the_new_features():
    with pytest.raises(ArchError, match="sinks"):
        rt.DifferentialAttention(H, KV, D, layer=0, causal=True, scale=1.0, sinks=True)


# ----------------------------------------------------------------------------- properties

FEATURES = {
    "qk-rmsnorm-head": dict(qk_norm="rmsnorm"),
    "qk-rmsnorm-gemma": dict(qk_norm="rmsnorm", qk_norm_unit_offset=True),
    "qk-rmsnorm-projection": dict(qk_norm="rmsnorm", qk_norm_scope="projection"),
    "qk-layernorm-head": dict(qk_norm="layernorm"),
    "qk-l2": dict(qk_norm="l2"),
    "sinks": dict(sinks=True),
    "sinks-window": dict(sinks=True, window=4),
    "chunk": dict(chunk=3),
    "streaming": dict(window=3, sink_tokens=2),
    "temperature": dict(temperature_tuning=True, floor_scale=2.0, attn_scale=0.5),
}
BASELINE = {"sinks-window": dict(window=4), "streaming": dict(window=3)}


def build(name):
    torch.manual_seed(0)
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, cache_key="layer", **FEATURES[name])
    perturb(module)
    return module


def run(module, q, k, v, positions, cache=None):
    rope = None if module.temperature_tuning else rope_for(positions)
    return module(q, k, v, ctx=context(positions, cache), rope=rope)


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_causal(name):
    module, t = build(name), 10
    q, k, v = qkv(t)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, 6:] = torch.randn_like(x[:, 6:])
    pos = torch.arange(t)
    torch.testing.assert_close(run(module, q2, k2, v2, pos)[:, :6], run(module, q, k, v, pos)[:, :6], **FP32)


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_cached_decode_equals_full_forward(name):
    module, t = build(name), 14  # past several chunk boundaries and window lengths
    q, k, v = qkv(t)
    full = run(module, q, k, v, torch.arange(t))
    cache, outs, start = rt.Cache(), [], 0
    for size in (4, 1, 1, 3, 1, 2, 1, 1):
        sl = slice(start, start + size)
        outs.append(run(module, q[:, sl], k[:, sl], v[:, sl], torch.arange(start, start + size), cache))
        start += size
        kept = cache.get("layer")["pos"]
        if module.chunk:  # only the newest position's chunk stays
            assert (kept // module.chunk == (start - 1) // module.chunk).all()
        if module.sink_tokens:  # the sink tokens and the window, nothing else
            assert len(kept) <= module.sink_tokens + module.window
            assert kept[: module.sink_tokens].tolist() == list(range(module.sink_tokens))
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **FP32)


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_gradients_reach_every_parameter(name):
    module, t = build(name), 8
    q, k, v = (x.requires_grad_() for x in qkv(t))
    run(module, q, k, v, torch.arange(t)).pow(2).sum().backward()
    for n, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_feature_changes_the_output(name):
    module, t = build(name), 12
    base = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, **BASELINE.get(name, {}))
    q, k, v = qkv(t)
    pos = torch.arange(t)
    rope = None if module.temperature_tuning else rope_for(pos)
    plain = base(q, k, v, ctx=context(pos), rope=rope)
    assert not torch.allclose(run(module, q, k, v, pos), plain, atol=1e-3)


def test_dropout_never_reaches_the_attention_kernel(monkeypatch):
    """The Triton kernel draws no dropout: dispatch runs the reference for it, and the kernel
    for sinks, chunks and sink tokens (tests/kernels/test_attention.py checks them there)."""
    from archlang.kernels import dispatch

    picked = []
    monkeypatch.setattr(dispatch, "_kernel", lambda *args: (lambda *a, **kw: picked.append(kw) or a[0]))
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    q = torch.randn(1, 2, 5, 4)
    pos = torch.arange(5)
    with dispatch.force("triton"):
        torch.manual_seed(0)
        out = dispatch.attention(q, q, q, pos, pos, causal=True, scale=0.5, dropout=0.5)
    assert not picked and out.shape == q.shape
    for extra in (dict(sinks=torch.randn(2)), dict(chunk=2), dict(window=2, sink_tokens=1)):
        with dispatch.force("triton"):
            dispatch.attention(q, q, q, pos, pos, causal=True, scale=0.5, **extra)
    assert len(picked) == 3


# ----------------------------------------------------------------------------- Hugging Face parity

HF_T = 10


def hf_config(cls_name, **kw):
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, cls_name)(hidden_size=32, num_attention_heads=H, num_key_value_heads=KV,
                                             head_dim=D, num_hidden_layers=kw.pop("num_hidden_layers", 1), **kw)
    config._attn_implementation = "eager"
    return config


def hf_mask(config, kind="causal", t=HF_T):
    """HF's own eager mask for a sequence of t tokens (additive, (B, 1, T, T))."""
    from transformers import masking_utils

    make = {"causal": masking_utils.create_causal_mask, "sliding": masking_utils.create_sliding_window_causal_mask,
            "chunked": masking_utils.create_chunked_causal_mask}[kind]
    return make(config=config, inputs_embeds=torch.zeros(B, t, 32), attention_mask=None, past_key_values=None,
                position_ids=torch.arange(t)[None].expand(B, t), allow_is_causal_skip=False)


def ours_through_hf_projections(hf, module, x, rope=None, positions=None, permute=None):
    """Our attention core between HF's own q/k/v and output projections."""
    q, k, v = hf.q_proj(x), hf.k_proj(x), hf.v_proj(x)
    if permute is not None:  # interleaved-pair RoPE (Llama 4) → half-split RoPE: a channel permutation per head
        q = q.view(B, -1, H, D)[..., permute].reshape(B, -1, H * D)
        k = k.view(B, -1, KV, D)[..., permute].reshape(B, -1, KV * D)
    positions = torch.arange(x.shape[1]) if positions is None else positions
    return hf.o_proj(module(q, k, v, ctx=context(positions), rope=rope))


def hf_cos_sin(t=HF_T, batch=True):
    cos, sin = rope_for(torch.arange(t))
    return (cos[None].expand(B, t, D), sin[None].expand(B, t, D)) if batch else (cos, sin)


@pytest.mark.parametrize("family", ["qwen3", "olmo2", "gemma3"])
def test_qk_norm_matches_hf(family):
    if family == "qwen3":
        from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention as HfAttention
        config, kw = hf_config("Qwen3Config"), dict(qk_norm="rmsnorm", qk_norm_scope="head")
    elif family == "olmo2":
        from transformers.models.olmo2.modeling_olmo2 import Olmo2Attention as HfAttention
        config, kw = hf_config("Olmo2Config"), dict(qk_norm="rmsnorm", qk_norm_scope="projection")
    else:
        from transformers.models.gemma3.modeling_gemma3 import Gemma3Attention as HfAttention
        config = hf_config("Gemma3TextConfig", query_pre_attn_scalar=6, layer_types=["full_attention"])
        kw = dict(qk_norm="rmsnorm", qk_norm_scope="head", qk_norm_unit_offset=True)
    hf = HfAttention(config, 0).eval()
    perturb(hf)
    scale = config.query_pre_attn_scalar**-0.5 if family == "gemma3" else D**-0.5
    module = rt.Attention(H, KV, D, causal=True, scale=scale, qk_norm_eps=config.rms_norm_eps, **kw)
    with torch.no_grad():
        module.q_norm.copy_(hf.q_norm.weight)
        module.k_norm.copy_(hf.k_norm.weight)
    x = torch.randn(B, HF_T, 32)
    expected, _ = hf(x, position_embeddings=hf_cos_sin(), attention_mask=hf_mask(config))
    got = ours_through_hf_projections(hf, module, x, rope=hf_cos_sin(batch=False))
    torch.testing.assert_close(got, expected, **FP32)


def llama4_pair():
    """A two-layer Llama 4 config: layer 0 RoPE + chunked + L2 QK-norm, layer 1 NoPE + full
    attention + temperature tuning; and the permutation from its interleaved RoPE pairs to halves."""
    config = hf_config("Llama4TextConfig", num_hidden_layers=2, no_rope_layers=[1, 0], use_qk_norm=True,
                       attn_temperature_tuning=True, floor_scale=3, attn_scale=0.7, attention_chunk_size=4,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    permute = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))
    return config, permute


def test_llama4_chunked_l2_rope_layer_matches_hf():
    from transformers.models.llama4.modeling_llama4 import Llama4TextAttention, Llama4TextRotaryEmbedding

    config, permute = llama4_pair()
    assert config.layer_types[0] == "chunked_attention"
    hf = Llama4TextAttention(config, 0).eval()
    perturb(hf)
    assert hf.use_rope and hasattr(hf, "qk_norm")
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, qk_norm="l2", qk_norm_eps=config.rms_norm_eps,
                          chunk=config.attention_chunk_size)
    x = torch.randn(B, HF_T, 32)
    freqs = Llama4TextRotaryEmbedding(config)(x, torch.arange(HF_T)[None].expand(B, HF_T))
    expected, _ = hf(x, position_embeddings=freqs, attention_mask=hf_mask(config, "chunked"))
    got = ours_through_hf_projections(hf, module, x, rope=hf_cos_sin(batch=False), permute=permute)
    torch.testing.assert_close(got, expected, **FP32)


def test_llama4_temperature_tuning_nope_layer_matches_hf():
    from transformers.cache_utils import DynamicCache
    from transformers.models.llama4.modeling_llama4 import Llama4TextAttention

    config, _ = llama4_pair()
    hf = Llama4TextAttention(config, 1).eval()
    perturb(hf)
    assert not hf.use_rope and not hasattr(hf, "qk_norm")  # HF: no QK-norm on NoPE layers
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, temperature_tuning=True,
                          floor_scale=config.floor_scale, attn_scale=config.attn_scale, cache_key="l")
    x = torch.randn(B, HF_T, 32)
    expected, _ = hf(x, position_embeddings=None, attention_mask=hf_mask(config))
    torch.testing.assert_close(ours_through_hf_projections(hf, module, x), expected, **FP32)
    # HF's decode reads the positions from its cache length; ours from the context: the same scales
    cache, past = rt.Cache(), DynamicCache(config=config)
    with torch.no_grad():
        hf(x[:, :6], position_embeddings=None, attention_mask=hf_mask(config, t=6), past_key_values=past)
    step_mask = torch.zeros(B, 1, 1, 7)
    expected_step, _ = hf(x[:, 6:7], position_embeddings=None, attention_mask=step_mask, past_key_values=past)
    q, k, v = hf.q_proj(x), hf.k_proj(x), hf.v_proj(x)
    module(q[:, :6], k[:, :6], v[:, :6], ctx=context(torch.arange(6), cache))
    got_step = hf.o_proj(module(q[:, 6:7], k[:, 6:7], v[:, 6:7], ctx=context(torch.arange(6, 7), cache)))
    torch.testing.assert_close(got_step, expected_step, **FP32)


@pytest.mark.parametrize("layer", [0, 1], ids=["sliding", "full"])
def test_sinks_match_hf_gpt_oss(layer):
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention

    config = hf_config("GptOssConfig", num_hidden_layers=2, sliding_window=3,
                       layer_types=["sliding_attention", "full_attention"])
    hf = GptOssAttention(config, layer).eval()
    with torch.no_grad():  # a module built outside a model keeps torch.empty's sinks: whatever memory held
        hf.sinks.normal_()
    perturb(hf, 1.0)  # the sinks too
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, window=hf.sliding_window, sinks=True)
    with torch.no_grad():
        module.sinks.copy_(hf.sinks)
    x = torch.randn(B, HF_T, 32)
    cos, sin = hf_cos_sin(batch=False)
    half = (cos[None, :, : D // 2].expand(B, -1, -1), sin[None, :, : D // 2].expand(B, -1, -1))
    expected, _ = hf(x, position_embeddings=half, attention_mask=hf_mask(config, "sliding" if layer == 0 else "causal"))
    got = ours_through_hf_projections(hf, module, x, rope=(cos, sin))
    torch.testing.assert_close(got, expected, **FP32)


# ----------------------------------------------------------------------------- RoPE: longrope, dynamic NTK

SHORT, LONG = [1.0, 1.1, 1.6, 2.3], [1.2, 2.5, 4.0, 7.5]


def longrope_pair():
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    config = hf_config("Phi3Config", max_position_embeddings=64, original_max_position_embeddings=16,
                       rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": SHORT,
                                        "long_factor": LONG, "original_max_position_embeddings": 16})
    ours = rt.RopeTable(D, 64, theta=10000.0, scaling={"kind": "longrope", "short_factor": SHORT,
                                                       "long_factor": LONG, "original_context": 16})
    return Phi3RotaryEmbedding(config), ours


def dynamic_pair():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = hf_config("LlamaConfig", max_position_embeddings=16,
                       rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 3.0})
    ours = rt.RopeTable(D, 64, theta=10000.0, scaling={"kind": "dynamic", "factor": 3.0, "original_context": 16})
    return LlamaRotaryEmbedding(config), ours


@pytest.mark.parametrize("pair", [longrope_pair, dynamic_pair], ids=["longrope", "dynamic"])
def test_rope_table_follows_hf_over_a_growing_sequence(pair):
    """Prefill then one token at a time past the original context: every forward's cos/sin are
    HF's (which recomputes the frequencies from max(position_ids) + 1 as the sequence grows)."""
    hf, ours = pair()
    x = torch.zeros(1, 1, D)
    for start, stop in [(0, 12), (12, 13), (13, 16), (16, 17), (17, 18), (18, 30), (30, 31)]:
        pos = torch.arange(start, stop)
        cos, sin = ours(pos)
        hf_cos, hf_sin = hf(x, pos[None])
        torch.testing.assert_close(cos, hf_cos[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(sin, hf_sin[0], atol=1e-6, rtol=1e-5)


def test_longrope_uses_short_factors_within_and_long_beyond_the_original_context():
    _, ours = longrope_pair()
    exponents = torch.arange(0, D, 2).float() / D
    factor = math.sqrt(1 + math.log(4.0) / math.log(16))  # 64 / 16
    for stop, ext in [(16, SHORT), (17, LONG)]:
        cos, _ = ours(torch.arange(stop))
        angle = (stop - 1) / (torch.tensor(ext) * 10000.0**exponents)
        torch.testing.assert_close(cos[-1], torch.cat((angle, angle)).cos() * factor)


def test_dynamic_ntk_base_grows_with_the_sequence():
    _, ours = dynamic_pair()
    torch.testing.assert_close(ours.frequencies(torch.arange(16)), ours.inv_freq)  # within: unscaled
    base = 10000.0 * (3.0 * 40 / 16 - 2.0) ** (D / (D - 2))
    expected = 1.0 / base ** (torch.arange(0, D, 2).float() / D)
    torch.testing.assert_close(ours.frequencies(torch.arange(40)), expected)


@pytest.mark.parametrize("kind", ["longrope", "dynamic"])
def test_length_dependent_rope_cached_decode(kind):
    """Within the original context cached decode equals the full forward. Past it, keys in the
    cache keep the rotation of the length they were computed at, as HF's cache does, so the
    decode matches HF's cached decode and differs from one full forward."""
    from transformers.cache_utils import DynamicCache
    from transformers.models.llama.modeling_llama import LlamaAttention

    hf_rope, table = (longrope_pair if kind == "longrope" else dynamic_pair)()
    config = hf_config("LlamaConfig")
    hf = LlamaAttention(config, 0).eval()
    perturb(hf)
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, cache_key="l")
    t = 20
    x = torch.randn(B, t, 32)
    q, k, v = hf.q_proj(x), hf.k_proj(x), hf.v_proj(x)

    def decode(stops):
        cache, hf_cache, outs, hf_outs, start = rt.Cache(), DynamicCache(config=config), [], [], 0
        for stop in stops:
            pos = torch.arange(start, stop)
            outs.append(hf.o_proj(module(q[:, start:stop], k[:, start:stop], v[:, start:stop],
                                         ctx=context(pos, cache), rope=table(pos))))
            cos, sin = hf_rope(x, pos[None].expand(B, -1))
            mask = torch.zeros(B, 1, stop - start, stop).masked_fill(
                ~(torch.arange(stop)[None] <= pos[:, None]), torch.finfo(torch.float32).min)
            hf_outs.append(hf(x[:, start:stop], position_embeddings=(cos, sin), attention_mask=mask,
                              past_key_values=hf_cache)[0])
            start = stop
        return torch.cat(outs, 1), torch.cat(hf_outs, 1)

    with torch.no_grad():
        within, _ = decode([10, 11, 12, 16])
        full_within, _ = decode([16])
        torch.testing.assert_close(within, full_within, **FP32)
        past, hf_past = decode([10, 16, 17, 18, 20])
        torch.testing.assert_close(past, hf_past, **FP32)
        full, _ = decode([20])
        assert not torch.allclose(past[:, 16:], full[:, 16:], atol=1e-4)
        torch.testing.assert_close(past[:, :16], full_within, **FP32)


@pytest.mark.parametrize("name", ["qk-rmsnorm-projection", "qk-layernorm-head", "sinks"])
def test_packed_qkv_gives_the_same_output(name):
    """The fuse-qkv pass hands the core one packed tensor; the features see the same q, k, v."""
    module, t = build(name), 6
    q, k, v = qkv(t)
    pos = torch.arange(t)
    packed = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, packed=True, **FEATURES[name])
    packed.load_state_dict(module.state_dict())
    torch.testing.assert_close(packed(torch.cat((q, k, v), -1), ctx=context(pos), rope=rope_for(pos)),
                               run(module, q, k, v, pos), **FP32)


@pytest.mark.parametrize("name", ["chunk", "streaming"])
def test_padding_mask_follows_the_kept_keys(name):
    """Caches with gaps (sink tokens) or a moving start (chunks) mask padding by absolute position."""
    module, t = build(name), 12
    q, k, v = qkv(t)
    mask = torch.ones(B, t, dtype=torch.long)
    mask[0, :2] = 0  # left padding in the first row
    full = module(q, k, v, ctx=rt.Context(positions=torch.arange(t), attention_mask=mask),
                  rope=rope_for(torch.arange(t)))
    cache, outs, start = rt.Cache(), [], 0
    for stop in (5, 6, 7, 9, 10, 11, 12):
        pos = torch.arange(start, stop)
        outs.append(module(q[:, start:stop], k[:, start:stop], v[:, start:stop],
                           ctx=rt.Context(positions=pos, cache=cache, attention_mask=mask[:, :stop]),
                           rope=rope_for(pos)))
        start = stop
    torch.testing.assert_close(torch.cat(outs, 1)[:, 2:], full[:, 2:], **FP32)


@pytest.mark.parametrize("kind", ["longrope", "dynamic"])
def test_length_dependent_rope_causality(kind):
    """Within the original context a later token never changes an earlier rotation; past it the
    whole forward's rotation follows its length (HF's too), so earlier outputs do change."""
    _, table = (longrope_pair if kind == "longrope" else dynamic_pair)()
    torch.testing.assert_close(table(torch.arange(16))[0][:10], table(torch.arange(10))[0])
    assert not torch.allclose(table(torch.arange(17))[0][:10], table(torch.arange(10))[0])


def test_l2_qk_norm_runs_after_rope_with_an_attention_factor():
    """Llama 4 normalises after RoPE: with a table whose cos/sin carry an attention factor
    (longrope's sqrt(1.5) here) that differs from normalising first."""
    _, table = longrope_pair()
    t = 6
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, qk_norm="l2", qk_norm_eps=1e-5)
    q, k, v = qkv(t)
    pos = torch.arange(t)
    cos, sin = table(pos)
    rot = lambda x: x * cos + torch.cat((-x[..., D // 2:], x[..., : D // 2]), -1) * sin  # noqa: E731
    qh, kh = rms(rot(heads_of(q, H)), eps=1e-5), rms(rot(heads_of(k, KV)), eps=1e-5)
    expected = plain_attention(qh, kh, heads_of(v, KV), allowed_mask(t), D**-0.5)
    torch.testing.assert_close(module(q, k, v, ctx=context(pos), rope=(cos, sin)), expected, **FP32)


