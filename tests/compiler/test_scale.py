"""Checking and compiling stay near-linear in depth: the folded IR (compiler/fold.py) gives the
same code and the same problems as the whole model's IR, its size does not grow with depth,
validation walks the graph a fixed number of times, and the `check --run` stand-in has one
layer per block kind. Nothing here is timed (bench/compile.py is)."""

from pathlib import Path

import networkx as nx
import pytest

from archlang.api import check_file, compile_spec, load_model
from archlang.compiler import generate, lower, run_pipeline, validate
from archlang.compiler.tiny import stand_in
from archlang.spec import ArchError, ArchErrors, load_models

from ..conftest import EXAMPLES, SPECS

# Three block kinds with different norm placements, one used once and a late one ending the stack.
MIXED = """
model mixed {
    vocab = 97
    d_model = 32
    context = 64
    dtype = fp32
    position = rope(theta = 10000)
    final_norm = rmsnorm(eps = 1e-5)
    block layer {
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 48)
    }
    block late {
        norm = layernorm(eps = 1e-5, placement = post)
        attention = mha(heads = 4)
        ffn = mlp(hidden = 64, act = gelu)
    }
    block once {
        norm = rmsnorm(eps = 1e-5, placement = sandwich)
        attention = gqa(heads = 4, kv_heads = 1, window = 16)
        ffn = swiglu(hidden = 32)
    }
    layers = layer * 3 + late * 2 + once + layer + late
}
"""


def _deep(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text
    return text.replace(old, new)


DEEP = {
    "mixed": MIXED,
    "mixed_alibi": MIXED.replace("rope(theta = 10000)", "alibi()"),
    "llama_4096": _deep(SPECS / "tiny_llama.arch", "layer * 2", "layer * 4096"),
    "jamba_x64": _deep(SPECS / "tiny_jamba.arch", '"MEAE", M = mamba, E = mamba_moe, A = attn)',
                       '"MEAE", M = mamba, E = mamba_moe, A = attn) * 64'),
    "t5_2048": _deep(SPECS / "tiny_t5.arch", "encoder * 2", "encoder * 2048").replace("decoder * 2", "decoder * 2048"),
}


def _full_source(model, name: str, text: str, passes: list[str]) -> str:
    """Code generated from the IR of every layer, the way compile worked before folding."""
    from archlang import __version__

    return generate(run_pipeline(lower(model)), spec_name=name, spec_text=text, passes=passes, version=__version__)


CASES = [(p.name, p.read_text()) for p in sorted(SPECS.glob("*.arch")) + sorted(EXAMPLES.glob("*.arch"))] + [
    (name, text) for name, text in DEEP.items() if name in ("mixed", "mixed_alibi", "jamba_x64")]


@pytest.mark.parametrize("name,text", CASES, ids=[c[0] for c in CASES])
def test_folded_compile_is_byte_identical_to_the_whole_model(name, text):
    for model in load_models(source=text):
        compiled = compile_spec(text, model=model.name)
        assert compiled.source == _full_source(model, "<string>", text, compiled.passes)


def test_folded_ir_does_not_grow_with_depth():
    shallow = load_model(DEEP["llama_4096"].replace("layer * 4096", "layer * 3"))
    deep = load_model(DEEP["llama_4096"])
    assert lower(deep, folded=True).number_of_nodes() == lower(shallow, folded=True).number_of_nodes()
    t5 = load_model(DEEP["t5_2048"])
    kept = {d["layer"] for _, d in lower(t5, folded=True).nodes(data=True) if d["stack"] == "decoder"}
    assert kept == {0, 2047}  # the first layer of the one block kind, and the last


def test_compiled_ir_is_still_the_whole_model():
    compiled = compile_spec(DEEP["mixed"])
    assert {d["layer"] for _, d in compiled.graph.nodes(data=True) if d["stack"] == "layers"} == set(range(8))
    assert compiled.lowered.number_of_nodes() == lower(compiled.model).number_of_nodes()


def _problems(exc) -> list[tuple[str, list[str]]]:
    errors = exc.errors if isinstance(exc, ArchErrors) else [exc]
    return [(e.message, e.notes) for e in errors]


@pytest.mark.parametrize("old,new", [
    ("kv_heads = 2)", "kv_heads = 2, window = 100)"),  # every `layer` layer
    ("window = 16)", "window = 100)"),  # the one `once` layer
    ("rope(theta = 10000)", "rope(theta = 10000, dim = 12)"),  # every layer
])
def test_folded_validation_reports_the_same_problems_and_counts(old, new):
    model = load_model(MIXED.replace(old, new))
    with pytest.raises(ArchErrors) as full:
        validate(lower(model))
    with pytest.raises(ArchErrors) as folded:
        validate(lower(model, folded=True))
    assert _problems(folded.value) == _problems(full.value)
    with pytest.raises(ArchErrors) as checked:
        compile_spec(MIXED.replace(old, new))
    assert _problems(checked.value) == _problems(full.value)


def test_deep_stack_problem_is_counted_in_every_layer():
    with pytest.raises(ArchErrors) as info:
        compile_spec(DEEP["llama_4096"].replace("kv_heads = 2)", "kv_heads = 2, window = 100)"))
    (error,) = info.value.errors
    assert "window (100) is longer than the context (64)" in error.message
    assert "in 4096 layers" in error.notes


def test_cross_attention_check_walks_the_graph_a_fixed_number_of_times(monkeypatch):
    """One reachability search per output, not one per cross-attention layer."""
    walks = []
    ancestors = nx.ancestors
    monkeypatch.setattr(nx, "ancestors", lambda g, n: walks.append(n) or ancestors(g, n))
    counts = []
    for depth in (2, 32):
        text = _deep(SPECS / "tiny_t5.arch", "encoder * 2", f"encoder * {depth}").replace("decoder * 2", f"decoder * {depth}")
        g = lower(load_model(text))  # the whole model, not folded
        walks.clear()
        validate(g)
        counts.append(len(walks))
    assert counts[0] == counts[1] == 1


def test_cross_attention_from_the_decoder_is_still_refused():
    g = lower(load_model((SPECS / "tiny_t5.arch").read_text()))
    cross = next(n for n, d in g.nodes(data=True) if d["op"] == "attention" and d["attrs"]["cross"])
    k_src = [u for u, _, d in g.in_edges(cross, data=True) if d["port"] == 1][0]
    g.remove_edges_from([(u, cross, k) for u, _, k, d in g.in_edges(cross, keys=True, data=True) if d["port"] in (1, 2)])
    g.add_edge("decoder_embed", cross, port=1, out=0)
    g.add_edge("decoder_embed", cross, port=2, out=0)
    assert k_src != "decoder_embed"
    with pytest.raises(ArchErrors, match="cross-attention keys and values must come from the encoder"):
        validate(g)


@pytest.mark.parametrize("name", ["llama_4096", "t5_2048", "jamba_x64"])
def test_checks_at_the_depth_limit_complete(name, tmp_path):
    path = tmp_path / f"{name}.arch"
    path.write_text(DEEP[name])
    (model,) = check_file(path)
    assert sum(len(v) for v in model.stacks().values()) in (4096, 256)


def test_stand_in_has_one_layer_per_block_kind():
    big = load_model(DEEP["jamba_x64"])
    small, origin = stand_in(big)
    assert small.layers == ("mamba", "mamba_moe", "attn")
    assert origin == {"layers": (0, 1, 2)}
    mixed, origin = stand_in(load_model(MIXED))
    assert mixed.layers == ("layer", "late", "once") and origin == {"layers": (0, 3, 5)}
    t5, origin = stand_in(load_model(DEEP["t5_2048"]))
    assert (t5.encoder_layers, t5.decoder_layers) == (("encoder",), ("decoder",))
    assert origin == {"encoder": (0,), "decoder": (0,)}


def test_numerics_check_names_the_layer_as_the_spec_numbers_it(tmp_path):
    path = tmp_path / "boom.arch"
    path.write_text(MIXED.replace("attention = mha(heads = 4)", "attention = mha(heads = 4, scale = 1e39)"))
    with pytest.raises(ArchError, match=r"non-finite values \(NaN/Inf\) first appear in `layers\.3\.") as info:
        check_file(path, run=True)
    assert info.value.span.line == 16  # the `late` block's attention, first used by layer 3


def test_archc_compile_folds_unless_it_prints_the_ir(tmp_path, monkeypatch, capsys):
    import archlang.api
    from archlang.cli import main

    folded = []
    real_lower = archlang.api.lower
    monkeypatch.setattr(archlang.api, "lower", lambda m, **kw: folded.append(kw.get("folded", False)) or real_lower(m, **kw))
    spec = tmp_path / "deep.arch"
    spec.write_text(DEEP["jamba_x64"])
    assert main(["compile", str(spec), "-o", str(tmp_path / "a.py")]) == 0
    assert folded == [True]
    folded.clear()
    assert main(["compile", str(spec), "-o", str(tmp_path / "b.py"), "--print-ir-after", "dce"]) == 0
    assert folded == [False] and "%layers.255." in capsys.readouterr().err
    assert (tmp_path / "a.py").read_text() == (tmp_path / "b.py").read_text()


def test_stand_in_merges_blocks_that_shrink_alike():
    """Blocks differing only in widths the stand-in cuts down are one stand-in layer."""
    text = MIXED.replace("layers = layer * 3", """block wide {
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 96)
    }
    layers = wide + layer * 3""")
    small, origin = stand_in(load_model(text))
    assert small.layers == ("wide", "late", "once") and origin == {"layers": (0, 4, 6)}


@pytest.mark.parametrize("passes", ["", "fuse-qkv,dce", "share-constants", "fold-rope,fuse-add-norm"])
@pytest.mark.parametrize("name", ["mixed", "mixed_alibi"])
def test_folded_compile_matches_with_any_pipeline(name, passes):
    from archlang import __version__

    text = DEEP[name]
    compiled = compile_spec(text, passes=passes)
    whole = generate(run_pipeline(lower(compiled.model), passes), spec_name="<string>", spec_text=text,
                     passes=compiled.passes, version=__version__)
    assert compiled.source == whole
