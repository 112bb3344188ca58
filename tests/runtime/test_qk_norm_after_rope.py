"""qk_norm = rmsnorm(after_rope = true): each q/k head normalised after RoPE (Hunyuan's order),
against transformers' HunYuanMoEV1Attention (weights perturbed) and a plain re-expression; the
order matters (the same norm before RoPE gives other outputs), and cached decoding equals the
full forward."""

import pytest
import torch

from archlang import runtime as rt
from archlang.api import compile_spec
from archlang.spec.errors import ArchError, ArchErrors

from ..conftest import FP32
from .test_attention_modern import (D, H, HF_T, KV, B, context, heads_of, hf_config, hf_cos_sin, hf_mask,
                                    ours_through_hf_projections, perturb, plain_attention, qkv, rms, rope_for,
                                    rotate)


def _module(after: bool) -> rt.Attention:
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, qk_norm="rmsnorm", qk_norm_eps=1e-5,
                          qk_norm_after_rope=after)
    perturb(module)
    return module


def test_matches_hf_hunyuan_attention():
    from transformers.models.hunyuan_v1_moe.modeling_hunyuan_v1_moe import HunYuanMoEV1Attention

    config = hf_config("HunYuanMoEV1Config", rms_norm_eps=1e-5)
    hf = HunYuanMoEV1Attention(config, 0).eval()
    perturb(hf)
    module = rt.Attention(H, KV, D, causal=True, scale=D**-0.5, qk_norm="rmsnorm", qk_norm_eps=1e-5,
                          qk_norm_after_rope=True)
    with torch.no_grad():
        module.q_norm.copy_(hf.query_layernorm.weight)
        module.k_norm.copy_(hf.key_layernorm.weight)
    x = torch.randn(B, HF_T, 32)
    expected, _ = hf(x, position_embeddings=hf_cos_sin(), attention_mask=hf_mask(config))
    got = ours_through_hf_projections(hf, module, x, rope=hf_cos_sin(batch=False))
    torch.testing.assert_close(got, expected, **FP32)


def test_matches_a_plain_reexpression_and_differs_from_norm_before_rope():
    t = 7
    q, k, v = qkv(t)
    positions = torch.arange(t)
    after, before = _module(True), _module(False)
    with torch.no_grad():
        got = after(q, k, v, ctx=context(positions), rope=rope_for(positions))
        other = before(q, k, v, ctx=context(positions), rope=rope_for(positions))
        qh = rms(rotate(heads_of(q, H), positions), after.q_norm.detach(), 1e-5)
        kh = rms(rotate(heads_of(k, KV), positions), after.k_norm.detach(), 1e-5)
        ref = plain_attention(qh, kh, heads_of(v, KV), torch.ones(t, t, dtype=torch.bool).tril(), D**-0.5)
    torch.testing.assert_close(got, ref, **FP32)
    assert not torch.allclose(got, other, atol=1e-3)


def test_cached_decoding_equals_the_full_forward():
    t = 6
    q, k, v = qkv(t, seed=3)
    module = _module(True)
    positions = torch.arange(t)
    with torch.no_grad():
        full = module(q, k, v, ctx=context(positions), rope=rope_for(positions))
        cache = rt.Cache()
        steps = []
        for i in range(t):
            pos = positions[i:i + 1]
            steps.append(module(q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], ctx=context(pos, cache), rope=rope_for(pos)))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **FP32)


def _spec(qk_norm: str) -> str:
    return f"""model m {{
    vocab = 97
    d_model = 32
    context = 64
    position = rope()
    final_norm = rmsnorm()
    block layer {{
        norm = rmsnorm()
        attention = gqa(heads = 4, kv_heads = 2, qk_norm = {qk_norm})
        ffn = swiglu(hidden = 48)
    }}
    layers = layer * 2
}}"""


def test_generated_code_names_the_order_only_when_after_rope():
    assert "qk_norm_after_rope=True" in compile_spec(_spec("rmsnorm(after_rope = true)")).source
    assert "after_rope" not in compile_spec(_spec("rmsnorm()")).source


@pytest.mark.parametrize("norm,needle", [("l2(after_rope = true)", "always runs after RoPE"),
                                         ("rmsnorm(after_rope = true, scope = projection)", "scope = head")])
def test_combinations_without_a_meaning_are_refused_where_written(norm, needle):
    with pytest.raises((ArchError, ArchErrors)) as err:
        compile_spec(_spec(norm))
    assert needle in str(err.value) and ":9:" in str(err.value)


def test_the_runtime_refuses_it_for_l2():
    with pytest.raises(ArchError, match="qk_norm_after_rope"):
        rt.Attention(H, KV, D, causal=True, scale=1.0, qk_norm="l2", qk_norm_after_rope=True)
