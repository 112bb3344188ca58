"""The grammar, literals, and the catalogue of syntax errors."""

import pytest

from archlang.spec import ArchError, SourceMap, parse_source
from archlang.spec import syntax as S
from archlang.spec.parser import SYNTAX_ERROR_EXAMPLES, parse_number

from ..conftest import EXAMPLES, SPECS


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.arch")) + sorted(SPECS.glob("*.arch")), ids=lambda p: p.name)
def test_every_spec_parses(path):
    parsed = parse_source(path.read_text(), str(path))
    assert parsed.models


@pytest.mark.parametrize("text,value", [
    ("4096", 4096), ("4_096", 4096), ("128k", 131072), ("32K", 32768), ("1M", 1 << 20), ("2G", 2 << 30),
    ("1e-5", 1e-5), ("0.02", 0.02), ("1.5k", 1536), ("10000.0", 10000.0),
])
def test_number_literals(text, value):
    assert parse_number(text) == value
    assert type(parse_number(text)) is type(value)


def test_constructs_become_syntax_nodes():
    f = parse_source(
        'import "base.arch"\n'
        "model m extends base {\n"
        "  let h = d_model / (heads - 2) ** 2 # comment\n"
        "  layers = [a, b] * 4 + pattern(\"MA\", M = a, A = b)\n"
        "  block a extends b { attention.window = none  ffn = swiglu(hidden = 1.5k,) }\n"
        "}\n", "t.arch")
    (imp,) = f.imports
    assert imp.path == "base.arch" and imp.span.line == 1
    (m,) = f.models
    assert m.parent == "base"
    (let,) = m.lets
    assert isinstance(let.value, S.BinOp) and let.value.op == "/"
    assert isinstance(let.value.right, S.BinOp) and let.value.right.op == "**"
    (block,) = m.blocks
    assert block.parent == "b"
    assert block.assigns[0].path == ("attention", "window") and isinstance(block.assigns[0].value, S.NoneLit)
    call = block.assigns[1].value
    assert isinstance(call, S.Call) and call.args[0].name == "hidden" and call.args[0].value.value == 1536
    assert (m.assigns[0].span.line, m.assigns[0].span.column) == (4, 3)


@pytest.mark.parametrize("label,snippet", [(label, s) for label, snippets in SYNTAX_ERROR_EXAMPLES.items() for s in snippets])
def test_error_catalogue_classifies_its_examples(label, snippet):
    with pytest.raises(ArchError) as info:
        parse_source(snippet, "e.arch")
    assert info.value.kind == f"syntax:{label}"


def _render(text: str) -> str:
    sources = SourceMap()
    sources.add("e.arch", text)
    with pytest.raises(ArchError) as info:
        parse_source(text, "e.arch")
    return info.value.render(sources)


def test_golden_missing_comma():
    assert _render("model m {\n  a = f(x = 1 y = 2)\n}\n") == (
        "e.arch:2:15: error: expected `,` between arguments or items, found `y`\n"
        "      a = f(x = 1 y = 2)\n"
        "                  ^\n"
        "note: expected one of: `)`, `,`\n"
        "hint: separate arguments with commas: `gqa(heads = 32, kv_heads = 8)`"
    )


def test_golden_unterminated_string():
    assert _render('model m {\n  a = "abc\n}\n') == (
        "e.arch:2:7: error: unterminated string\n"
        '      a = "abc\n'
        "          ^\n"
        'hint: close the string with `"` on the same line'
    )


def test_golden_unclosed_brace():
    text = _render("model m {\n  vocab = 1\n")
    assert text.startswith("e.arch:2:12: error: unexpected end of file: a `{` is never closed")
    assert text.endswith("hint: add the missing `}`")


def test_golden_bad_character():
    assert _render("model m {\n  a = 1 $ 2\n}") == (
        "e.arch:2:9: error: unexpected character '$'\n"
        "      a = 1 $ 2\n"
        "            ^"
    )


def test_deep_nesting_is_refused_before_parsing():
    with pytest.raises(ArchError, match="nested more than"):
        parse_source("model m { a = " + "(" * 500 + "1" + ")" * 500 + " }")


def test_huge_file_is_refused():
    with pytest.raises(ArchError, match="too large"):
        parse_source("#" * 2_000_000)
