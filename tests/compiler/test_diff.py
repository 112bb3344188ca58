"""The semantic diff: formatting and renames are not changes; moves and edits are, by layer range."""

from archlang.api import compile_spec, load_model
from archlang.compiler import compute_facts
from archlang.compiler.diff import check_guard, diff_models

from ..conftest import EXAMPLES

JAMBA = (EXAMPLES / "jamba.arch").read_text()


def diff(a_text, b_text):
    a, b = compile_spec(a_text), compile_spec(b_text)
    return diff_models(a.model, b.model, compute_facts(a.graph), compute_facts(b.graph))


def test_renamed_block_is_not_a_change():
    renamed = JAMBA.replace("block attn {", "block attention_layer {").replace("A = attn", "A = attention_layer")
    d = diff(JAMBA, renamed)
    assert not d.changed and d.notes == ["block `attn` renamed to `attention_layer`"]


def test_moved_block_is_reported_as_a_move():
    moved = JAMBA.replace('"MEMEAEME"', '"MEMAMEEE"')
    d = diff(JAMBA, moved)
    texts = [str(c) for c in d.changes]
    assert "layers: block `attn` moved layers 4, 12, 20, 28 → layers 3, 11, 19, 27" in texts
    assert d.facts["params_total"][0] == d.facts["params_total"][1]


def test_component_change_grouped_by_layer_range():
    text = (EXAMPLES / "llama3_8b.arch").read_text()
    b = text.replace("layers = layer * 32", "block wide extends layer { ffn.hidden = 28672 }\n    layers = layer * 8 + wide * 24")
    d = diff(text, b)
    assert [str(c) for c in d.changes] == ["layers 8–31: ffn swiglu(hidden=14336, act=silu) → swiglu(hidden=28672, act=silu)"]
    assert check_guard("params_total>+5%", d) is not None
    assert check_guard("params_total>+60%", d) is None
    assert check_guard("kv_cache_bytes_per_token>0", d) is None


def test_equal_models():
    a = load_model(EXAMPLES / "gpt2.arch")
    assert not diff_models(a, a).changed
