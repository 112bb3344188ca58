"""Parallel blocks (x + attn(norm1(x)) + ffn(norm2(x)), GPT-NeoX / GPT-J) and the model-level
residual scale (Granite: each branch multiplied before it is added back), against a plain
PyTorch re-expression of the same function with the same weights."""

import pytest
import torch
import torch.nn.functional as F

from archlang.api import build, compile_spec, load_model
from archlang.compiler import lower
from archlang.compiler.facts import compute_facts
from archlang.spec import ArchError, ArchErrors

from .test_matrix import _check_cache, _check_causal, _check_gradients

VOCAB, T, D, HEADS = 61, 12, 32, 4


def spec(*, parallel: str = "true", residual_scale: str | None = "0.5", norm: str = "layernorm(eps = 1e-5)",
         extra: str = "") -> str:
    scale = f"    residual_scale = {residual_scale}\n" if residual_scale else ""
    return (f"model m {{\n    vocab = {VOCAB}\n    d_model = {D}\n    context = 64\n    dtype = fp32\n{scale}"
            f"    final_norm = layernorm(eps = 1e-5)\n"
            f"    block layer {{\n        norm = {norm}\n        attention = mha(heads = {HEADS}, bias = true, out_bias = true)\n"
            f"        ffn = mlp(hidden = 48, act = gelu)\n        parallel = {parallel}\n{extra}    }}\n"
            f"    layers = layer * 2\n}}\n")


def perturbed(text: str, passes: str):
    torch.manual_seed(0)
    model = build(text, passes=passes).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def reference(w: dict[str, torch.Tensor], ids: torch.Tensor, parallel: bool, scale: float) -> torch.Tensor:
    """The same network written out by hand (no position scheme: causal attention alone)."""

    def ln(x, name):
        return F.layer_norm(x, (D,), w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-5)

    def lin(x, name):
        return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))

    def attn(h, p):
        b, t, _ = h.shape
        q, k, v = (lin(h, f"{p}{n}_proj").view(b, t, HEADS, -1).transpose(1, 2) for n in "qkv")
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return lin(a.transpose(1, 2).reshape(b, t, D), f"{p}o_proj")

    def mlp(h, p):
        return lin(F.gelu(lin(h, f"{p}up_proj")), f"{p}down_proj")

    x = F.embedding(ids, w["embed.weight"])
    for i in range(2):
        p = f"layers.{i}."
        if parallel:
            x = x + scale * attn(ln(x, f"{p}attn_norm"), p) + scale * mlp(ln(x, f"{p}ffn_norm"), p)
        else:
            x = x + scale * attn(ln(x, f"{p}attn_norm"), p)
            x = x + scale * mlp(ln(x, f"{p}ffn_norm"), p)
    return F.linear(ln(x, "final_norm"), w["lm_head.weight"])


@pytest.mark.parametrize("parallel,residual_scale", [("true", "0.5"), ("true", None), ("false", "0.5")])
@pytest.mark.parametrize("passes", ["", None])
def test_matches_a_plain_pytorch_reexpression(parallel, residual_scale, passes):
    text = spec(parallel=parallel, residual_scale=residual_scale)
    model = perturbed(text, passes="" if passes == "" else "fold-rope,fuse-qkv,fuse-gate-up,fuse-add-norm,dce")
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(ids)
        ref = reference(model.unfuse_state_dict(), ids, parallel == "true", float(residual_scale or 1))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_parallel_differs_from_sequential_with_the_same_weights():
    """The reference above would pass for either wiring if they computed the same thing."""
    a, b = perturbed(spec(parallel="true"), ""), perturbed(spec(parallel="false"), "")
    ids = torch.randint(0, VOCAB, (2, T))
    with torch.no_grad():
        assert not torch.allclose(a(ids), b(ids), atol=1e-3)


def test_parallel_block_is_causal_caches_and_trains():
    text = spec(extra="        position = rope(theta = 10000, dim = 4)\n")
    model = perturbed(text, passes="fold-rope,fuse-qkv,fuse-gate-up,fuse-add-norm,dce")
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(3))
    _check_causal(model, ids)
    _check_cache(model, ids)
    _check_gradients(model, ids)


def test_parallel_keeps_the_parameters_of_the_sequential_block():
    f = [compute_facts(compile_spec(spec(parallel=p)).graph) for p in ("true", "false")]
    assert f[0].params_total == f[1].params_total
    assert f[0].flops_per_token == f[1].flops_per_token


def test_off_by_default_the_ir_is_unchanged():
    """Neither field writes anything into the IR when it is off."""
    plain = load_model(spec(parallel="false", residual_scale=None))
    ops = [d["op"] for _, d in lower(plain).nodes(data=True)]
    assert "scale" not in ops and ops.count("add") == 4


@pytest.mark.parametrize("text,where,message", [
    (spec(norm="layernorm(placement = post)"), "norm", "placement = post is not implemented with `parallel`"),
    (spec(norm="rmsnorm(placement = sandwich)"), "norm", "placement = sandwich"),
    (spec().replace("        ffn = mlp(hidden = 48, act = gelu)\n", ""), "parallel", "lacks an ffn"),
    (spec(residual_scale="0"), "residual_scale", "greater than 0"),
])
def test_refusals_are_located(text, where, message):
    with pytest.raises((ArchError, ArchErrors)) as info:
        compile_spec(text)
    errors = getattr(info.value, "errors", [info.value])
    assert any(message in e.message for e in errors), [e.message for e in errors]
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.strip().startswith(where))
    assert any(e.span is not None and e.span.line == line for e in errors), [str(e) for e in errors]


def test_cross_attention_is_refused_in_a_parallel_block():
    text = """model m {
    family = encoder_decoder
    vocab = 61
    d_model = 32
    context = 64
    block enc {
        norm = layernorm()
        attention = mha(heads = 4)
        ffn = mlp(hidden = 48)
    }
    block dec extends enc {
        cross_attention = mha(heads = 4)
        parallel = true
    }
    encoder_layers = enc
    decoder_layers = dec
}
"""
    with pytest.raises((ArchError, ArchErrors)) as info:
        compile_spec(text)
    errors = getattr(info.value, "errors", [info.value])
    assert any("no cross_attention" in e.message for e in errors), [e.message for e in errors]
