"""Error rendering is bounded and inert; one run reports every independent error."""

import pytest

from archlang.spec import ArchError, ArchErrors, SourceMap, Span, load_models
from archlang.spec.errors import EXCERPT_CHARS, excerpt


def render_all(text: str) -> list[str]:
    sources = SourceMap()
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text, name="e.arch", sources=sources)
    errors = info.value.errors if isinstance(info.value, ArchErrors) else [info.value]
    return [e.render(sources) for e in errors]


def test_long_lines_are_quoted_as_an_excerpt_with_the_caret_in_place():
    text = ("model m { d_model = 64 context = 8 vocab = " + " + ".join(["1"] * 50) + ' + "x"'
            + " + 1" * 50 + "  # " + "y" * 5000 + "\n}")
    (msg,) = render_all(text)
    head, quoted, caret = msg.splitlines()[:3]
    assert len(quoted) <= 4 + EXCERPT_CHARS + 2 and quoted.count("…") == 2
    col = int(head.split(":")[2])
    assert quoted[caret.index("^")] == '"' and text[col - 1] == '"'


def test_control_characters_are_escaped_in_the_quoted_line():
    text = 'model m {\n  vocab = "\x1b[2J\x1b[H\u202e" + 1 \r\n  d_model = 64\n  context = 8\n}\n'
    (msg,) = render_all(text)
    assert "\x1b" not in msg and "\u202e" not in msg and "\r" not in msg
    quoted, caret = msg.splitlines()[1:3]
    assert "\\x1b[2J" in quoted and "\\u202e" in quoted
    assert quoted[caret.index("^")] == '"'


@pytest.mark.parametrize("line,column", [("abc", 2), ("a" * 1000, 1), ("a" * 1000, 500), ("a" * 1000, 1000),
                                         ("a" * 1000, 1001), ("\x1b" * 300 + "X", 301)])
def test_excerpt_caret_points_at_the_column(line, column):
    shown, caret, _ = excerpt(line, column)
    if column <= len(line):
        assert shown[caret] == ("\\" if line[column - 1] == "\x1b" else line[column - 1])
    assert len(shown) <= 4 * EXCERPT_CHARS + 2


def test_lines_are_split_as_the_parser_counts_them():
    sources = SourceMap()
    sources.add("f", "a\x0cb\u2028c\nsecond\r\n")
    assert sources.line(Span("f", 2, 1)) == "second"


FIVE_MISTAKES = """model m {
  vocab = true
  d_model = 64
  context = 128
  block a {
    norm = rmsnorm()
    attention = gqaa(heads = 8)
  }
  block b {
    norm = rmsnorm()
    attention = gqa(heads = 8, kv_heads = 3)
  }
  block c {
    norm = rmsnorm()
    ffn = mlp(hidden = widthh)
  }
  block d {
    norm = rmsnorm(
    ffn = mlp(hidden = 8)
  }
  layers = [a, b, c, d]
}
"""


def test_five_independent_mistakes_are_reported_in_one_run():
    with pytest.raises(ArchErrors) as info:
        load_models(source=FIVE_MISTAKES, name="e.arch")
    found = sorted((e.span.line, e.message) for e in info.value.errors)
    assert [line for line, _ in found] == [2, 7, 11, 15, 20], found
    messages = dict(found)
    assert "expected an integer, got a boolean" in messages[2]
    assert "unknown attention kind `gqaa`" in messages[7]
    assert "must be divisible by kv_heads (3)" in messages[11]
    assert "unknown name `widthh`" in messages[15]
    assert messages[20].startswith("unexpected `}`")


def test_syntax_errors_in_separate_declarations_are_all_reported():
    text = "model m { vocab = 1 +\n}\nmodel n {\n  d_model 3\n}\nmodel o { block b { x = = 1 } }\n"
    with pytest.raises(ArchErrors) as info:
        load_models(source=text, name="e.arch")
    assert [e.span.line for e in info.value.errors] == [2, 4, 6]


def test_errors_in_every_field_and_block_are_reported():
    text = """model m {
  vocab = "1"
  d_model = 64
  context = 1.5
  block a { norm = rmsnorm(eps = true) ffn = mlp(hidden = 8, act = "gelu") }
  block b { norm = rmsnorm() ffn = mlp(hidden = 8) colour = red }
  layers = [a, b]
}
"""
    msgs = render_all(text)
    assert len(msgs) == 5, msgs


def test_a_syntax_error_does_not_cause_knock_on_errors_in_its_block():
    text = """model m {
  vocab = 10
  d_model = 64
  context = 128
  block b {
    norm = = rmsnorm()
    ffn = mlp(hidden = 8)
  }
  layers = b
}
"""
    (msg,) = render_all(text)
    assert msg.startswith("e.arch:6:12: error:")


def test_block_names_that_collide_as_classes_are_refused():
    text = """model m {
  vocab = 10
  d_model = 64
  context = 128
  block a_b { norm = rmsnorm() ffn = mlp(hidden = 8) }
  block aB { norm = rmsnorm() ffn = mlp(hidden = 8) }
  block x_y { norm = rmsnorm() ffn = mlp(hidden = 8) }
  block x__y { norm = rmsnorm() ffn = mlp(hidden = 8) }
  layers = [a_b, aB, x_y, x__y]
}
"""
    msgs = render_all(text)
    assert len(msgs) == 2
    assert msgs[0].startswith("e.arch:6:9: error: block `aB` and block `a_b` would both become the class `ABBlock`")
    assert "e.arch:5:9" in msgs[0] and "rename block `aB`" in msgs[0]
    assert msgs[1].startswith("e.arch:8:9: error: block `x__y` and block `x_y`")


def test_class_names_are_unchanged():
    from archlang.compiler import codegen
    from archlang.spec.names import class_name

    assert codegen.class_name is class_name
    assert [class_name(n, "Block") for n in ("layer", "rope_block", "layer_2_3", "_x", "moe2")] == [
        "LayerBlock", "RopeBlockBlock", "Layer2_3Block", "XBlock", "Moe2Block"]


def test_build_model_refuses_a_program_recovered_from_syntax_errors():
    from archlang.spec.resolve import build_model, load_program

    program = load_program(source="model m {\n  vocab = = 1\n  d_model = 8\n}\n", name="e.arch")
    with pytest.raises(ArchError, match="expected a value"):
        build_model(program, "m")
