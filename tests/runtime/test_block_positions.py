"""Per-block position schemes: a block's attention may use its own RoPE (theta, scaling) or no
position at all (NoPE), where the model's scheme is otherwise inherited."""

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.compiler import lower
from archlang.runtime.context import Cache
from archlang.spec import ArchError, ArchErrors, SourceMap, load_models

from .test_matrix import _check_cache, _check_causal, _check_gradients, _check_shift

VOCAB, T = 61, 12


def spec(model_position: str, positions: dict[str, str | None], window: int | None = None) -> str:
    """Three attention blocks; `positions[block]` is written into the block when not None."""
    pos = f"    position = {model_position}\n" if model_position else ""
    blocks = ""
    for name in ("a", "b", "c"):
        own = positions.get(name)
        win = f", window = {window}" if window and name == "a" else ""
        blocks += (f"    block {name} {{\n        norm = rmsnorm()\n        attention = gqa(heads = 4, kv_heads = 2{win})\n"
                   f"        ffn = swiglu(hidden = 48)\n" + (f"        position = {own}\n" if own is not None else "") + "    }\n")
    return (f"model m {{\n    vocab = {VOCAB}\n    d_model = 32\n    context = 128\n    dtype = fp32\n{pos}"
            f"    final_norm = rmsnorm()\n{blocks}    layers = [a, b, c] * 2\n}}\n")


def build(text: str, seed: int = 0):
    model = load_source(compile_spec(text).source, "m").build().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise * 0.2) if p.dim() >= 2 else p.add_(noise * 0.1)
    return model


def ids(seed=1):
    return torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(seed))


def same_output(x: str, y: str):
    a, b = build(x), build(y)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(ids()), b(ids()), atol=0, rtol=0)


def test_every_block_without_position_is_the_model_without_position():
    same_output(spec("rope(theta = 10000)", {"a": "none", "b": "none", "c": "none"}), spec("", {}))


def test_every_block_with_its_own_rope_is_the_model_with_that_rope():
    own = "rope(theta = 500, scaling = linear(factor = 2))"
    same_output(spec("", {"a": own, "b": own, "c": own}), spec(own, {}))
    same_output(spec("alibi()", {"a": own, "b": own, "c": own}), spec(own, {}))


def test_blocks_inherit_what_they_do_not_set():
    same_output(spec("rope(theta = 500)", {"b": "rope(theta = 500)"}), spec("rope(theta = 500)", {}))


MIXED = spec("rope(theta = 10000)", {"b": "rope(theta = 1000000, scaling = linear(factor = 8))", "c": "none"}, window=4)


def test_each_block_applies_its_own_scheme():
    """Changing one block's scheme changes the output; the three schemes are three tables."""
    base = build(MIXED)
    for other in (MIXED.replace("theta = 1000000", "theta = 20000"), MIXED.replace("position = none\n", ""),
                  MIXED.replace("factor = 8", "factor = 2")):
        changed = build(other)
        changed.load_state_dict(base.state_dict())
        with torch.no_grad():
            assert (changed(ids()) - base(ids())).abs().max() > 1e-3
    g = lower(load_models(source=MIXED)[0])
    tables = {d["attrs"]["theta"] for _, d in g.nodes(data=True) if d["op"] == "const"}
    assert tables == {10000.0, 1000000.0}


def test_mixed_schemes_are_causal_cached_and_shift_invariant():
    model = build(MIXED)
    x = ids()
    _check_causal(model, x)
    full = _check_cache(model, x)
    _check_shift(model, x, full)
    _check_gradients(model, x)


def test_nope_layers_see_no_positions():
    """With every block at `none`, shifting the positions changes nothing, for any offset."""
    model = build(spec("rope(theta = 10000)", {"a": "none", "b": "none", "c": "none"}))
    x = ids()
    with torch.no_grad():
        full = model(x)
        cache = Cache()
        cache.offset = 37
        torch.testing.assert_close(model(x, cache=cache), full, atol=1e-5, rtol=1e-5)


def _error(text: str) -> str:
    sources = SourceMap()
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text, sources=sources)
    errors = getattr(info.value, "errors", [info.value])
    return errors[0].render(sources)


@pytest.mark.parametrize("own,model_position,message", [
    ("learned()", "rope()", "position learned() cannot be set per block: it is added to the embeddings once"),
    ("relative()", "", "position relative() cannot be set per block: it is one bias table shared by a stack"),
    ("rope()", "learned()", "block `b` overrides the model's position learned(), which a block cannot replace"),
])
def test_refused_block_positions_point_at_the_block(own, model_position, message):
    text = spec(model_position, {"b": own})
    msg = _error(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.strip() == f"position = {own}")
    assert f"<string>:{line}:" in msg.splitlines()[0] and message in msg


def test_a_block_without_attention_cannot_set_a_position():
    text = spec("", {}).replace("        attention = gqa(heads = 4, kv_heads = 2)\n        ffn = swiglu(hidden = 48)\n"
                                "    }\n    block c", "        ffn = swiglu(hidden = 48)\n        position = none\n"
                                "    }\n    block c", 1)
    assert "block `b` sets a position but has no attention to apply it to" in _error(text)


def test_refused_combinations_see_the_block_scheme():
    text = spec("", {"b": "alibi()"}).replace("attention = gqa(heads = 4, kv_heads = 2)\n        ffn = swiglu(hidden = 48)\n"
                                             "        position = alibi()",
                                             "attention = mla(heads = 4, kv_lora_rank = 8, rope_head_dim = 4, "
                                             "nope_head_dim = 8, v_head_dim = 8)\n        ffn = swiglu(hidden = 48)\n"
                                             "        position = alibi()")
    msg = _error(text)
    assert "position alibi() with mla (block `b`) is not supported" in msg
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.strip() == "position = alibi()")
    assert f"<string>:{line}:" in msg.splitlines()[0]
