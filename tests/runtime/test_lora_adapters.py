"""Per-use LoRA adapters on a shared block (Zamba2): `lora = lora(rank = r, targets = [...])`.

The reference merges each use's adapters into unshared weights, W + B_u A_u, in the same spec
without sharing or adapters: W h + B_u A_u h is the same linear map."""

import pytest
import torch

from archlang import checkpoint
from archlang.api import compile_spec, load_source
from archlang.compiler.facts import compute_facts
from archlang.spec.errors import ArchError

from .test_matrix import _check_cache, _check_gradients

ADAPTED = """
model zamba2_like {
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
        lora = lora(rank = 4, targets = [q, k, v, o, gate_up, down])
    }
    layers = [m, s, m, s, s]
}
"""
PLAIN = ADAPTED.replace("        shared = true\n", "").replace(
    "        lora = lora(rank = 4, targets = [q, k, v, o, gate_up, down])\n", "")
USES = (1, 3, 4)
TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate_up": "gate_up_proj", "down": "down_proj"}


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


def merged(model):
    """The unshared, unadapted model with each use's weights W + B_u A_u."""
    plain, _ = build(PLAIN)
    state = {k: v for k, v in model.state_dict().items() if "_lora." not in k}
    shared = model.layers[1]
    with torch.no_grad():
        for use in USES:
            for target, proj in TARGETS.items():
                lora = getattr(shared, f"{target}_lora")
                state[f"layers.{use}.{proj}.weight"] = getattr(shared, proj).weight + lora.B[str(use)] @ lora.A[str(use)]
    plain.load_unfused_state_dict(state)  # q, k, v stacked into the unshared model's qkv_proj
    return plain


def test_adapters_equal_merged_per_use_weights():
    model, _ = build(ADAPTED)
    plain = merged(model)
    with torch.no_grad():
        torch.testing.assert_close(model(ids()), plain(ids()), atol=1e-5, rtol=1e-5)
        for lora in (m for m in model.modules() if type(m).__name__ == "LoRA"):
            for p in lora.B.values():
                p.zero_()  # with every adapter at zero the model is the shared model itself
        shared_only, _ = build(ADAPTED.replace("        lora = lora(rank = 4, targets = [q, k, v, o, gate_up, down])\n",
                                               ""))
        shared_only.load_unfused_state_dict({k: v for k, v in model.state_dict().items() if "_lora." not in k})
        torch.testing.assert_close(model(ids()), shared_only(ids()), atol=1e-5, rtol=1e-5)


def test_each_uses_adapters_change_only_that_use():
    model, _ = build(ADAPTED)
    outputs = []
    model.layers[1].register_forward_hook(lambda m, args, out: outputs.append(out.clone()))
    with torch.no_grad():
        model(ids())
        before = list(outputs)
        outputs.clear()
        model.layers[1].q_lora.A["3"].add_(0.5)
        model(ids())
    assert torch.equal(outputs[0], before[0])  # use 1: its own adapters did not move
    assert not torch.allclose(outputs[1], before[1])  # use 3: changed


def test_gradients_reach_every_adapter_and_cache_matches():
    model, _ = build(ADAPTED)
    _check_gradients(model, ids())  # every parameter, each use's A and B among them
    names = {n for n, _ in model.named_parameters()}
    assert {f"layers.1.q_lora.{m}.{u}" for m in "AB" for u in USES} <= names
    _check_cache(model, ids())


def test_facts_count_shared_weights_once_and_adapters_per_use():
    model, compiled = build(ADAPTED)
    facts = compute_facts(compiled.graph)
    assert facts.params_total == sum(p.numel() for p in model.parameters())
    unadapted = compute_facts(compile_spec(PLAIN.replace("ffn = swiglu(hidden = 48)\n",
                                                         "ffn = swiglu(hidden = 48)\n        shared = true\n")).graph)
    widths = {"q": (32, 32), "k": (32, 16), "v": (32, 16), "o": (32, 32), "gate_up": (32, 96), "down": (48, 32)}
    adapters = sum(len(USES) * 4 * (i + o) for i, o in widths.values())
    assert facts.params_total - unadapted.params_total == adapters
    assert facts.params_active - unadapted.params_active == adapters  # a token runs every use
    assert facts.flops_per_token - unadapted.flops_per_token == sum(
        len(USES) * 2 * 4 * (i + o) for i, o in widths.values())


def test_checkpoints_store_each_uses_adapters(tmp_path):
    from safetensors.torch import load_file

    model, _ = build(ADAPTED)
    checkpoint.save(model, tmp_path / "w.safetensors")
    stored = load_file(str(tmp_path / "w.safetensors"))
    assert {f"layers.1.gate_up_lora.A.{u}" for u in USES} <= set(stored)
    assert not any(k.startswith(("layers.3.", "layers.4.")) for k in stored)
    fresh, _ = build(ADAPTED, seed=5)
    checkpoint.load(fresh, tmp_path / "w.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids()), model(ids()), atol=0, rtol=0)


def test_generated_code_names_the_adapters():
    source = compile_spec(ADAPTED).source
    assert "self.q_lora = rt.LoRA(32, 32, rank=4, uses=(1, 3, 4))" in source
    assert "q = self.q_lora(h, q, ctx)" in source
    assert "gu = self.gate_up_lora(h, gu, ctx)" in source


@pytest.mark.parametrize("old,new,where,message", [
    ("        shared = true\n", "", "lora = lora", "per use of a shared block"),
    ("ffn = swiglu(hidden = 48)", "ffn = mlp(hidden = 48)", "lora = lora", "gate_up"),
    ("attention = gqa(heads = 4, kv_heads = 2)", "attention = mla(heads = 4, kv_lora_rank = 8, rope_head_dim = 4, "
     "nope_head_dim = 4, v_head_dim = 8)", "lora = lora", "mha/mqa/gqa"),
    ("targets = [q, k, v, o, gate_up, down]", "targets = [q, q]", "lora = lora", "listed twice"),
    ("targets = [q, k, v, o, gate_up, down]", "targets = [q, up]", "lora = lora", "must be one of"),
])
def test_refusals_are_located(old, new, where, message):
    text = ADAPTED.replace(old, new)
    with pytest.raises(ArchError) as info:
        compile_spec(text)
    errors = getattr(info.value, "errors", None) or [info.value]
    err = errors[0]
    line = next(i for i, l in enumerate(text.splitlines(), start=1) if where in l)
    assert message in err.message, err.message
    assert err.span is not None and err.span.line == line, (err.span, line)
