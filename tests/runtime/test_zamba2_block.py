"""Zamba2's hybrid layer (`hybrid = zamba2()`): the shared transformer reads concat(x, embeddings)
at twice the width, has no residual adds, and hands its output, through a projection of each
use's own, to the next layer's normed mixer input. The reference re-expresses Hugging Face's
Zamba2HybridLayer equations in plain PyTorch on the same weights (the Mamba-2 mixers, tested on
their own in test_mamba2.py, are called as modules)."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from archlang.api import compile_spec, load_source
from archlang.compiler.facts import compute_facts
from archlang.runtime.context import Cache
from archlang.spec.errors import ArchError

VOCAB, T, D, HEADS, HIDDEN = 61, 12, 32, 4, 48

SPEC = """
model zamba2_tiny {
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    position = rope(theta = 500.0)
    final_norm = rmsnorm()
    block m {
        norm = rmsnorm()
        ssm = mamba2(d_state = 8, heads = 4, head_dim = 16, chunk = 4)
    }
    block s0 {
        norm = rmsnorm()
        attention = mha(heads = 4, scale = 0.3535533905932738)
        ffn = geglu(hidden = 48)
        shared = true
        lora = lora(rank = 4, targets = [q, k, v, gate_up])
        hybrid = zamba2()
    }
    block s1 {
        norm = rmsnorm()
        attention = mha(heads = 4, scale = 0.3535533905932738)
        ffn = geglu(hidden = 48)
        shared = true
        lora = lora(rank = 4, targets = [q, k, v, gate_up])
        hybrid = zamba2()
    }
    layers = [m, s0, m, m, s1, m, s0, m]
}
"""
HYBRID_USES = {1: "s0", 4: "s1", 6: "s0"}


@functools.lru_cache(maxsize=None)
def compiled_spec(text):
    return compile_spec(text)


def build(text=SPEC, seed=0):
    compiled = compiled_spec(text)
    model = load_source(compiled.source, "m").build().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise * 0.2) if p.dim() >= 2 else p.add_(noise * 0.1)
    return model, compiled


def ids(t=T, seed=1):
    return torch.randint(0, VOCAB, (2, t), generator=torch.Generator().manual_seed(seed))


def rms(x, w, eps=1e-5):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate(x, pos, theta=500.0):
    """HF's rotate_half RoPE over the whole head: x (B, H, T, hd)."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    freqs = pos[:, None].float() * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()


def shared_transformer(w, use, h, e):
    """Zamba2AttentionDecoderLayer + the hybrid layer's `linear`, from HF's equations."""
    b, t, _ = h.shape
    hd = 2 * D // HEADS
    x = rms(torch.cat([h, e], dim=-1), w["attn_norm.weight"])  # input_layernorm over 2d

    def proj(name):
        y = x @ w[f"{name}_proj.weight"].T
        return y + x @ w[f"{name}_lora.A.{use}"].T @ w[f"{name}_lora.B.{use}"].T  # the use's adapter

    q, k, v = (proj(n).view(b, t, HEADS, hd).transpose(1, 2) for n in ("q", "k", "v"))
    pos = torch.arange(t)
    q, k = rotate(q, pos), rotate(k, pos)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd / 2)  # HF scales by sqrt(head_dim / 2)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, 2 * D) @ w["o_proj.weight"].T  # 2d -> d
    y = rms(a, w["ffn_norm.weight"])  # pre_ff_layernorm, no attention residual
    gu = y @ w["gate_up_proj.weight"].T + y @ w[f"gate_up_lora.A.{use}"].T @ w[f"gate_up_lora.B.{use}"].T
    gate, up = gu.chunk(2, dim=-1)
    y = (F.gelu(gate) * up) @ w["down_proj.weight"].T  # no FFN residual
    return y @ w[f"hybrid_proj.weight.{use}"].T  # the hybrid layer's own linear (d -> d)


def reference(model, tokens):
    """Zamba2Model.forward: mamba layers x + mamba(norm(x)); a hybrid layer runs the shared
    transformer on (x, embeddings), then x + mamba(norm(x + linear(transformer)))."""
    e = model.embed.weight[tokens]
    x, pending = e, None
    for i, layer in enumerate(model.layers):
        if i in HYBRID_USES:
            w = {k: v for k, v in layer.state_dict().items()}
            pending = shared_transformer(w, i, x, e)
            continue
        h = x if pending is None else x + pending
        x = x + layer.ssm(rms(h, layer.ssm_norm.weight))  # the residual is x, not x + pending
        pending = None
    return rms(x, model.final_norm.weight) @ model.lm_head.weight.T


def test_hybrid_layers_compute_zamba2s_equations():
    model, _ = build()
    tokens = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(model, tokens), atol=1e-4, rtol=1e-4)


def test_uses_share_weights_but_not_adapters_or_projections():
    model, compiled = build()
    assert model.layers[1] is model.layers[6] and model.layers[1] is not model.layers[4]
    names = set(model.layers[1].state_dict())
    assert {"hybrid_proj.weight.1", "hybrid_proj.weight.6", "q_lora.A.1", "q_lora.A.6"} <= names
    assert model.layers[1].q_proj.weight.shape == (2 * D, 2 * D)  # reads concat(x, embeddings)
    assert model.layers[1].o_proj.weight.shape == (D, 2 * D)
    facts = compute_facts(compiled.graph)
    assert facts.params_total == sum(p.numel() for p in model.parameters())  # shared weights once


def test_facts_count_flops_and_kv_cache_per_use():
    _, compiled = build()
    once = compile_spec(SPEC.replace("layers = [m, s0, m, m, s1, m, s0, m]", "layers = [m, s0, m, m, s1, m]"))
    full, short = compute_facts(compiled.graph), compute_facts(once.graph)
    hd_bytes = 2 * 2 * D * 4  # keys and values of 2d channels, fp32
    assert full.kv_cache_bytes_per_token - short.kv_cache_bytes_per_token == hd_bytes  # the third use's own
    assert full.flops_per_token > short.flops_per_token
    # adapters and the projection are per use; the shared block's other weights are counted once
    per_use = 4 * (2 * D) * 2 * 3 + 4 * (D + 2 * HIDDEN) + D * D
    mamba = sum(p.numel() for p in load_source(compiled.source, "m").build().layers[7].parameters())
    assert full.params_total - short.params_total == per_use + mamba


def test_cached_decoding_equals_the_full_forward():
    model, _ = build()
    tokens = ids()
    with torch.no_grad():
        full = model(tokens)
        cache = Cache()
        steps = [model(tokens[:, :3], cache=cache)] + [model(tokens[:, t:t + 1], cache=cache) for t in range(3, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    assert {k for k in cache.layers if "/" in k} >= {"layers.1/layers.1", "layers.6/layers.1", "layers.4/layers.4"}


def test_causal():
    model, _ = build()
    tokens = ids()
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-5, rtol=1e-5)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


def test_gradients_reach_every_parameter():
    model, _ = build()
    model.train()
    logits = model(ids())
    (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    bad = [n for n, p in model.named_parameters()
           if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    assert not bad


def test_unshared_hybrid_block_has_a_plain_projection():
    text = SPEC.replace("        shared = true\n        lora = lora(rank = 4, targets = [q, k, v, gate_up])\n", "")
    model, _ = build(text)
    assert model.layers[1] is not model.layers[6]
    assert model.layers[1].hybrid_proj.weight.shape == (D, D)
    with torch.no_grad():
        assert torch.isfinite(model(ids())).all()


@pytest.mark.parametrize("edit,key", [
    (("layers = [m, s0, m, m, s1, m, s0, m]", "layers = [m, s0, m, m, s1, m, s0]"), "hybrid"),
    (("layers = [m, s0, m, m, s1, m, s0, m]", "layers = [m, s0, s1, m]"), "hybrid"),
    (("        hybrid = zamba2()\n    }\n    block s1", "        hybrid = zamba2()\n        parallel = true\n    }\n"
      "    block s1"), "parallel"),
    (("ffn = geglu(hidden = 48)\n        shared = true\n        lora = lora(rank = 4, targets = [q, k, v, gate_up])\n"
      "        hybrid = zamba2()\n    }\n    block s1",
      "ffn = moe(experts = 2, top_k = 1, expert = swiglu(hidden = 8))\n        shared = true\n"
      "        hybrid = zamba2()\n    }\n    block s1"), "hybrid"),
])
def test_what_is_not_implemented_is_refused_where_it_is_written(edit, key):
    with pytest.raises(ArchError) as e:
        compile_spec(SPEC.replace(*edit))
    assert key in str(e.value) and e.value.span is not None


def test_fmt_round_trips_the_hybrid_spelling():
    from archlang.compiler import lower
    from archlang.compiler.ir import dump
    from archlang.spec.format import format_source
    from archlang.api import load_model

    text = format_source(SPEC)
    assert "hybrid = zamba2()" in text and format_source(text) == text
    assert dump(lower(load_model(text))) == dump(lower(load_model(SPEC)))
