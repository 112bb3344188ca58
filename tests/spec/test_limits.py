"""The language's explicit limits and the arithmetic corner cases: every one a located error,
never a Python exception escaping the front end."""

import pytest

from archlang.spec import ArchError, ArchErrors, load_models, parse_source
from archlang.spec import parser as P
from archlang.spec import resolve as R

BASE = """model m {
  vocab = VOCAB
  d_model = 64
  context = 128
  block b {
    norm = rmsnorm()
    attention = mha(heads = 8)
    ffn = mlp(hidden = 16)
  }
  layers = b * 2
}
"""


def errors_of(text: str, **kw) -> list[ArchError]:
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text, name="e.arch", **kw)
    return info.value.errors if isinstance(info.value, ArchErrors) else [info.value]


def vocab_error(expr: str) -> ArchError:
    (err,) = errors_of(BASE.replace("VOCAB", expr))
    assert err.span is not None and err.span.line == 2, err
    return err


@pytest.mark.parametrize("expr,limit", [
    ("-" * 491 + "1", "expression depth"),
    ("+".join(["1"] * 491), "expression depth"),
    ("**".join(["1"] * 5000), "expression depth"),
    ("(" * 70 + "1" + ")" * 70, "nested more than 64"),
])
def test_deep_expressions_are_refused_with_the_limit_named(expr, limit):
    assert limit in vocab_error(expr).message


def test_depth_just_under_the_limit_is_fine():
    (m,) = load_models(source=BASE.replace("VOCAB", "+".join(["1"] * 90)))
    assert m.vocab == 90


def test_chained_lets_are_bounded():
    lets = "\n".join(f"  let a{i} = a{i - 1} + 1" for i in range(1, 497))
    text = BASE.replace("VOCAB", "a496").replace("  d_model", "  let a0 = 1\n" + lets + "\n  d_model")
    (err,) = errors_of(text)
    assert "evaluation depth" in err.message and err.span is not None


def test_many_lets_and_blocks_are_bounded():
    lets = "\n".join(f"  let a{i} = 1" for i in range(R.MAX_LETS + 1))
    (err,) = errors_of(BASE.replace("VOCAB", "1").replace("  d_model", lets + "\n  d_model"))
    assert f"the limit is {R.MAX_LETS:,}" in err.message
    blocks = "\n".join(f"  block c{i} {{ norm = rmsnorm() ffn = mlp(hidden = 8) }}" for i in range(R.MAX_BLOCKS + 1))
    (err,) = errors_of(BASE.replace("VOCAB", "1").replace("  layers", blocks + "\n  layers"))
    assert f"the limit is {R.MAX_BLOCKS:,}" in err.message


def test_block_extends_chains_are_bounded():
    chain = " ".join(f"block c{i} extends c{i + 1} {{ }}" for i in range(492))
    text = BASE.replace("VOCAB", "1").replace("  layers", f"  {chain} block c492 {{ norm = rmsnorm() "
                                              "ffn = mlp(hidden = 8) }\n  layers")
    (err,) = errors_of(text)
    assert "`extends` chain of blocks" in err.message


def test_many_distinct_blocks_in_one_stack():
    blocks = " ".join(f"block c{i} {{ norm = rmsnorm() ffn = mlp(hidden = 8) }}" for i in range(492))
    text = BASE.replace("VOCAB", "1").replace("layers = b * 2", blocks + " layers = " + " + ".join(f"c{i}" for i in range(492)))
    (err,) = errors_of(text)
    assert "expression depth" in err.message
    text = BASE.replace("VOCAB", "1").replace("layers = b * 2", blocks + " layers = [" + ", ".join(f"c{i}" for i in range(492)) + "]")
    (m,) = load_models(source=text)
    assert len(m.layers) == 492


@pytest.mark.parametrize("expr,message", [
    ("0 ** -1", "by zero"), ("0.0 ** -1", "by zero"), ("0.0 ** -1.5", "by zero"),
    ("1 // 0", "division by zero"), ("1 % 0.0", "division by zero"),
    ("10 ** 10 ** 10", "too large"), ("2.0 ** 5000", "too large"), ("1e300 * 1e300", "finite"),
    ("(-8) ** 0.5", "finite"), ("10 ** 38 * 10 ** 38", "too large"),
])
def test_arithmetic_errors_are_located(expr, message):
    assert message in vocab_error(expr).message


@pytest.mark.parametrize("literal,message", [
    ("9" * 4000, "4000 digits"), ("9" * 41, "41 digits"), ("1e999", "too large"), ("400000000000000000000000000000000000000G", "bits"),
])
def test_literals_are_bounded(literal, message):
    err = vocab_error(literal)
    assert message in err.message and err.span.column == 11


def test_relative_position_without_attention_is_refused():
    text = BASE.replace("VOCAB", "100").replace("    attention = mha(heads = 8)\n", "").replace(
        "layers = b * 2", "layers = b * 2\n  position = relative()")
    (err,) = errors_of(text)
    assert "needs an attention block" in err.message and err.span.line == 10


def test_relative_position_with_attention_is_fine():
    (m,) = load_models(source=BASE.replace("VOCAB", "100").replace("layers = b * 2", "layers = b * 2 position = relative()"))
    assert m.position.kind == "relative"


def test_bom_is_accepted(tmp_path):
    spec = tmp_path / "m.arch"
    spec.write_bytes(b"\xef\xbb\xbf" + BASE.replace("VOCAB", "100").encode())
    (m,) = load_models(spec)
    assert m.vocab == 100
    assert parse_source("\ufeff" + BASE.replace("VOCAB", "1")).models


def test_a_chain_of_exactly_sixteen_imports_is_allowed(tmp_path):
    depth = R.MAX_IMPORT_DEPTH
    for i in range(depth):
        (tmp_path / f"f{i}.arch").write_text(f'import "f{i + 1}.arch"\n' if i + 1 < depth else "")
    (tmp_path / "main.arch").write_text('import "f0.arch"\n' + BASE.replace("VOCAB", "100"))
    assert load_models(tmp_path / "main.arch")
    (tmp_path / f"f{depth - 1}.arch").write_text(f'import "f{depth}.arch"\n')
    (tmp_path / f"f{depth}.arch").write_text("")
    (err,) = errors_of_file(tmp_path / "main.arch")
    assert f"more than {depth} deep" in err.message


def errors_of_file(path):
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(path)
    return info.value.errors if isinstance(info.value, ArchErrors) else [info.value]


@pytest.mark.parametrize("text", ["modelm { vocab = 1 }", "model m extendsx { }", "importx \"a.arch\" model m {}",
                                  "model m { block b extendsc { } }", "model m { letx = 1 blockb { } }"])
def test_keywords_are_whole_words(text):
    with pytest.raises((ArchError, ArchErrors)):
        parse_source(text)


def test_names_may_start_with_a_keyword():
    (m,) = parse_source("model models { letter = true_ block blocks extends nonex { } modelx = falsey }").models
    assert m.name == "models" and [a.path for a in m.assigns] == [("letter",), ("modelx",)]
    assert m.blocks[0].name == "blocks" and m.blocks[0].parent == "nonex"


@pytest.mark.parametrize("path,message", [("\\x00", "NUL"), ("\\ud800", "surrogate"), ("a\\x00b.arch", "NUL")])
def test_bad_import_paths_are_located(path, message):
    (err,) = errors_of(f'import "{path}"\n' + BASE.replace("VOCAB", "1"))
    assert message in err.message and (err.span.line, err.span.column) == (1, 8)


def test_the_limits_are_documented():
    from ..conftest import ROOT

    docs = (ROOT / "docs" / "language.md").read_text()
    for value in (P.MAX_NESTING, P.MAX_EXPR_DEPTH, P.MAX_NUMBER_DIGITS, R.MAX_EVAL_DEPTH, R.MAX_IMPORT_DEPTH,
                  R.MAX_EXTENDS_DEPTH, f"{R.MAX_LETS:,}", f"{R.MAX_BLOCKS:,}"):
        assert str(value) in docs
