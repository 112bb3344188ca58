"""Weight sharing: a block declared `shared` is one layer at every place it is used in a stack
(ALBERT; Zamba's shared attention block), with its own cache entry per use."""

import pytest
import torch

from archlang import checkpoint
from archlang.api import compile_spec, load_source
from archlang.compiler.facts import compute_facts
from archlang.runtime.context import Cache

from .test_matrix import _check_cache, _check_causal, _check_gradients

HYBRID = """
model zamba_like {
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    position = rope()
    final_norm = rmsnorm()
    block m {
        norm = rmsnorm()
        ssm = mamba(d_state = 4)
    }
    block s {
        norm = rmsnorm()
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 48)
        shared = true
    }
    layers = [m, s, m, s, s]
}
"""


def build(text, seed=0):
    compiled = compile_spec(text)
    model = load_source(compiled.source, "m").build().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise * 0.2) if p.dim() >= 2 else p.add_(noise * 0.1)
    return model, compiled


def ids(t=12):
    return torch.randint(0, 61, (2, t), generator=torch.Generator().manual_seed(1))


def test_every_use_is_one_module_and_facts_count_its_weights_once():
    model, compiled = build(HYBRID)
    assert model.layers[1] is model.layers[3] is model.layers[4]
    assert model.layers[0] is not model.layers[2]
    n = sum(p.numel() for p in model.parameters())  # parameters() lists a shared weight once
    facts = compute_facts(compiled.graph)
    assert facts.params_total == n
    unshared = compute_facts(compile_spec(HYBRID.replace("shared = true", "")).graph)
    layer = sum(p.numel() for p in model.layers[1].parameters())
    assert unshared.params_total - facts.params_total == 2 * layer
    assert unshared.flops_per_token == facts.flops_per_token  # every use still computes
    assert unshared.kv_cache_bytes_per_token == facts.kv_cache_bytes_per_token  # and caches its own keys


def test_sharing_computes_the_unshared_model_with_equal_weights():
    """The reference: the same spec unshared, every use of `s` given the shared weights."""
    shared, _ = build(HYBRID)
    unshared, _ = build(HYBRID.replace("shared = true", ""))
    unshared.load_state_dict(shared.state_dict())  # the shared weights under every index
    for i in (3, 4):
        for a, b in zip(unshared.layers[1].parameters(), unshared.layers[i].parameters()):
            assert torch.equal(a, b)
    with torch.no_grad():
        torch.testing.assert_close(shared(ids()), unshared(ids()), atol=0, rtol=0)


def test_each_use_keeps_its_own_cache():
    model, _ = build(HYBRID)
    x = ids()
    _check_causal(model, x)
    _check_cache(model, x)
    with torch.no_grad():
        cache = Cache()
        model(x[:, :4], cache=cache)
    assert len([k for k in cache.layers if k.endswith("/layers.1")]) == 3  # three uses of layer 1's module


def test_gradients_of_a_shared_weight_sum_over_its_uses():
    model, _ = build(HYBRID)
    _check_gradients(model, ids())


def test_checkpoints_store_a_shared_weight_once_and_load_it_everywhere(tmp_path):
    from safetensors.torch import load_file

    model, _ = build(HYBRID)
    checkpoint.save(model, tmp_path / "w.safetensors")
    stored = load_file(str(tmp_path / "w.safetensors"))
    assert not any(k.startswith(("layers.3.", "layers.4.")) for k in stored)
    fresh, _ = build(HYBRID, seed=5)
    checkpoint.load(fresh, tmp_path / "w.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids()), model(ids()), atol=0, rtol=0)


def test_shared_layers_compile_in_one_graph():
    model, _ = build(HYBRID.replace("ssm = mamba(d_state = 4)", "attention = gqa(heads = 4, kv_heads = 2)"))
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids()), model(ids()), atol=1e-5, rtol=1e-5)


def test_albert_like_one_layer_repeated():
    text = HYBRID.replace("layers = [m, s, m, s, s]", "layers = s * 6")
    model, compiled = build(text)
    assert len({id(layer) for layer in model.layers}) == 1
    assert compute_facts(compiled.graph).params_total == sum(p.numel() for p in model.parameters())
    assert "shared weights" in compiled.source
