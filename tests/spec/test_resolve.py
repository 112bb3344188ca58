"""Resolution: constants, extends, imports, layer stacks, and located semantic errors."""

import pytest

from archlang.api import load_model
from archlang.spec import ArchError, ArchErrors, SourceMap, load_models
from archlang.spec import ast as A

from ..conftest import EXAMPLES

BASE = """model m {
  vocab = 100
  d_model = 64
  context = 128
  let heads = 8
  block b {
    norm = rmsnorm(eps = 1e-5)
    attention = gqa(heads = heads, kv_heads = 2)
    ffn = swiglu(hidden = 4 * d_model)
  }
  layers = b * 2
}
"""


def errors_of(text: str, **kw) -> list[str]:
    sources = SourceMap()
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text, name="e.arch", sources=sources, **kw)
    errs = info.value.errors if isinstance(info.value, ArchErrors) else [info.value]
    return [e.render(sources) for e in errs]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.arch")), ids=lambda p: p.name)
def test_examples_validate(path):
    model = load_model(path)
    assert model.name == path.stem


def test_constants_and_defaults():
    m = load_model(BASE)
    att = m.blocks["b"].attention
    assert (att.heads, att.kv_heads, att.head_dim) == (8, 2, 8)
    assert m.blocks["b"].ffn.hidden == 256 and m.blocks["b"].ffn.act == "silu"
    assert m.layers == ("b", "b") and m.causal


def test_extends_with_dotted_overrides():
    text = BASE + """
model n extends m {
  d_model = 128
  block b {
    attention.kv_heads = 4
    ffn.hidden = 1000
  }
  block c extends b { attention.window = 16 }
  layers = [b, c] * 3
}
"""
    n = [x for x in load_models(source=text) if x.name == "n"][0]
    assert n.blocks["b"].attention.kv_heads == 4 and n.blocks["b"].attention.head_dim == 16  # d_model override flows
    assert n.blocks["b"].ffn.hidden == 1000 and n.blocks["c"].attention.window == 16
    assert n.layers == ("b", "c") * 3


def test_pattern_and_stack_arithmetic():
    text = BASE.replace("layers = b * 2", 'block f { norm = rmsnorm()  ffn = mlp(hidden = 8) }\n  layers = pattern("BBF", B = b, F = f) * 2 + f')
    assert load_model(text).layers == ("b", "b", "f", "b", "b", "f", "f")


def test_imports_relative_to_the_file(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "base.arch").write_text(BASE)
    (tmp_path / "derived.arch").write_text('import "lib/base.arch"\nmodel big extends m { vocab = 256 }\n')
    (big,) = load_models(tmp_path / "derived.arch")
    assert big.vocab == 256 and big.blocks["b"].attention.kv_heads == 2


def test_import_cycle_and_escape(tmp_path):
    (tmp_path / "a.arch").write_text('import "b.arch"\nmodel a { }')
    (tmp_path / "b.arch").write_text('import "a.arch"\nmodel b { }')
    with pytest.raises(ArchError, match="import cycle"):
        load_models(tmp_path / "a.arch")
    inner = tmp_path / "proj"
    inner.mkdir()
    (inner / "x.arch").write_text('import "../a.arch"\nmodel x { }')
    with pytest.raises(ArchError, match="leaves the project folder"):
        load_models(inner / "x.arch")


def test_golden_divisibility():
    (msg,) = errors_of(BASE.replace("kv_heads = 2", "kv_heads = 3"))
    assert msg == (
        "e.arch:8:47: error: heads (8) must be divisible by kv_heads (3)\n"
        "        attention = gqa(heads = heads, kv_heads = 3)\n"
        "                                                  ^\n"
        "hint: pick kv_heads from the divisors of 8: 1, 2, 4, 8"
    )


def test_golden_misspelled_argument_reports_only_the_cause():
    (msg,) = errors_of(BASE.replace("kv_heads = 2", "kv_head = 2"))
    assert msg == (
        "e.arch:8:36: error: unknown argument `kv_head` for gqa\n"
        "        attention = gqa(heads = heads, kv_head = 2)\n"
        "                                       ^~~~~~~\n"
        "hint: did you mean `kv_heads`?"
    )


def test_golden_unknown_field_and_kind():
    (msg,) = errors_of(BASE.replace("vocab = 100", "vocabb = 100"))
    assert msg.splitlines()[0] == "e.arch:2:3: error: unknown field `vocabb` in model `m`"
    assert msg.splitlines()[-1] == "hint: did you mean `vocab`?"
    (msg,) = errors_of(BASE.replace("gqa(", "gqaa("))
    assert msg.splitlines()[0] == "e.arch:8:17: error: unknown attention kind `gqaa`"
    assert msg.splitlines()[-1] == "hint: did you mean `gqa`?"


def test_golden_enumeration_and_several_errors():
    msgs = errors_of(BASE.replace("eps = 1e-5", "eps = 1e-5, placement = pree").replace("vocab = 100", "vocab = -1"))
    assert [m.splitlines()[0] for m in msgs] == [
        "e.arch:2:11: error: `vocab` must be greater than 0, found -1",
        "e.arch:7:44: error: `placement` must be one of: pre, post, sandwich, output, normed_residual; found the name `pree`",
    ]
    assert msgs[1].splitlines()[-1] == "hint: did you mean `pre`?"


def test_golden_unknown_name_and_cycle():
    (msg,) = errors_of(BASE.replace("heads = heads", "heads = haeds"))
    assert msg.splitlines()[0] == "e.arch:8:29: error: unknown name `haeds`"
    assert msg.splitlines()[-1] == "hint: did you mean `heads`?"
    (msg,) = errors_of(BASE.replace("let heads = 8", "let heads = other\n  let other = heads"))
    assert "is defined in terms of itself: heads → other → heads" in msg.splitlines()[0]


def test_golden_head_dim_derivation():
    (msg,) = errors_of(BASE.replace("gqa(heads = heads, kv_heads = 2)", "mha(heads = 6)"))
    assert msg.splitlines()[0] == "e.arch:8:29: error: d_model (64) must be divisible by heads (6) to derive head_dim"


@pytest.mark.parametrize("stack", ["b * 10 ** 9", "b * 5000", 'pattern("' + "B" * 5000 + '", B = b)'])
def test_huge_stacks_are_refused_before_allocation(stack):
    (msg,) = errors_of(BASE.replace("layers = b * 2", f"layers = {stack}"))
    assert "the limit is 4,096" in msg


def test_huge_numbers_and_dimensions():
    assert "too large" in errors_of(BASE.replace("vocab = 100", "vocab = 10 ** 10 ** 10"))[0]
    assert "must be less than or equal to" in errors_of(BASE.replace("vocab = 100", "vocab = 1G"))[0]


def test_names_that_would_be_unsafe_in_python_are_refused():
    assert "Python keyword" in errors_of(BASE.replace("block b", "block class").replace("b * 2", "class * 2"))[0]
    assert "may not start with `__`" in errors_of(BASE.replace("block b", "block __init__").replace("b * 2", "__init__ * 2"))[0]


def test_cross_attention_only_in_decoders_of_encoder_decoders():
    msgs = errors_of(BASE.replace("ffn = swiglu", "cross_attention = mha(heads = 8)\n    ffn = swiglu"))
    assert "only decoder_layers of an encoder_decoder model" in msgs[0]


def test_ast_is_immutable():
    m = load_model(BASE)
    with pytest.raises(Exception):
        m.vocab = 3
    assert isinstance(m.blocks["b"].attention, A.GQA)


def test_missing_model_fields_are_all_reported():
    msgs = errors_of('model m { vocab = "x" }')
    assert [m.splitlines()[0].split("error: ")[1] for m in msgs] == [
        "`vocab`: expected an integer, got a string",
        "missing required field `d_model` in the model",
        "missing required field `context` in the model",
    ]
