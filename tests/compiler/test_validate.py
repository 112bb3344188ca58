"""IR validation: located errors, all collected, for what only the whole model can check."""

import pytest

from archlang.api import compile_spec
from archlang.compiler import lower, validate
from archlang.spec import ArchErrors, SourceMap

from ..conftest import SPECS

TEXT = (SPECS / "tiny_llama.arch").read_text()


def errors(text):
    sources = SourceMap()
    with pytest.raises(ArchErrors) as info:
        compile_spec(text, sources=sources)
    return [e.render(sources) for e in info.value.errors]


def test_window_longer_than_context_points_at_the_attention():
    (msg,) = errors(TEXT.replace("kv_heads = 2)", "kv_heads = 2, window = 100)"))
    assert msg.splitlines()[0].endswith("error: window (100) is longer than the context (64)")
    assert msg.splitlines()[0].startswith("<string>:10:21")
    assert "note: in 2 layers" in msg


def test_rope_dim_checked_against_head_dim():
    (msg,) = errors(TEXT.replace("rope(theta = 10000)", "rope(theta = 10000, dim = 12)"))
    assert "rope rotates 12 channels of a 8-wide head" in msg


def test_structural_problems_are_all_reported():
    g = lower(compile_spec(SPECS / "tiny_llama.arch").model)
    g.remove_node("layers.0.k_proj")  # leaves rope with a missing input
    g.add_node("stray", **{**g.nodes["layers.1.attn_norm"], "order": 10_000})
    with pytest.raises(ArchErrors) as info:
        validate(g)
    text = "\n".join(str(e) for e in info.value.errors)
    assert "rope takes 3..3 inputs, has 2" in text
    assert "norm takes 1..1 inputs, has 0" in text


def test_cycles_are_refused():
    g = lower(compile_spec(SPECS / "tiny_llama.arch").model)
    g.add_edge("logits", "embed", port=1, out=0)
    with pytest.raises(ArchErrors, match="cycle"):
        validate(g)
