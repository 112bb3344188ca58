"""Pipeline stage marks in a layer stack (`layers = dense * 2 | moe * 4`): parsed, checked with
located errors, formatted, and resolved into the AST's stage_marks."""

import pytest

from archlang.spec import ArchError, ArchErrors, load_models, parse_source
from archlang.spec import ast as A
from archlang.spec import syntax as S
from archlang.spec.format import format_source

from .test_format import check

HEAD = """model m {{
    vocab = 97
    d_model = 32
    context = 64
    block dense {{
        norm = rmsnorm()
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 48)
    }}
    block moe extends dense {{
        ffn = moe(experts = 4, top_k = 2, expert = swiglu(hidden = 16))
    }}
{body}
}}
"""


def spec(body: str) -> str:
    return HEAD.format(body="\n".join("    " + line for line in body.strip().splitlines()))


def model(body: str) -> A.Model:
    (m,) = load_models(source=spec(body))
    return m


def error(body: str) -> ArchError:
    text = spec(body)
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text)
    exc = info.value
    return exc.errors[0] if isinstance(exc, ArchErrors) else exc


def at(exc: ArchError, body: str) -> str:
    """The text from the error's column to the end of its line."""
    line = spec(body).splitlines()[exc.span.line - 1]
    return line[exc.span.column - 1:]


# ----------------------------------------------------------------------------- parsing


def test_a_mark_binds_loosest_so_each_side_is_a_whole_stage():
    text = spec("layers = dense * 2 + moe * 6 | moe * 8 | moe * 6 + dense")
    (m,) = parse_source(text).models
    value = m.assigns[-1].value
    assert isinstance(value, S.BinOp) and value.op == "|"
    assert value.left.op == "|" and value.left.left.op == "+"  # left-associative: ((a | b) | c)
    assert value.right.op == "+"
    line = text.splitlines()[12]
    assert (value.op_span.line, value.op_span.column) == (13, line.index("| moe * 6") + 1)  # the `|` itself


def test_marks_resolve_to_the_first_layer_of_every_stage_after_the_first():
    m = model("layers = dense * 2 + moe * 6 | moe * 8 | moe * 8 | moe * 6 + dense")
    assert m.stage_marks == (8, 16, 24)
    assert m.layers == ("dense",) * 2 + ("moe",) * 28 + ("dense",)


@pytest.mark.parametrize("body,marks,depth", [
    ("layers = dense | moe", (1,), 2),
    ("let front = dense * 2 | moe\nlayers = front + moe * 2 | dense", (2, 5), 6),  # through a constant
    ("layers = [dense, moe | moe, dense]", (2,), 4),  # inside a list of stacks
    ('layers = pattern("DM", D = dense, M = moe) * 2 | pattern("MM", M = moe)', (4,), 6),
    ("layers = (dense + moe) * 2 | (dense + moe) * 2", (4,), 8),  # marks between whole repeats
    ("layers = (dense | moe) * 1", (1,), 2),  # a repeat of one is no repeat
    ("layers = dense * 4", (), 4),
])
def test_marks_through_constants_lists_patterns_and_repeats(body, marks, depth):
    m = model(body)
    assert m.stage_marks == marks and len(m.layers) == depth


def test_an_extending_model_gets_its_own_marks():
    text = spec("layers = dense * 2 | moe * 2") + "model n extends m {\n    layers = dense | moe | moe\n}\n"
    m, n = load_models(source=text)
    assert m.stage_marks == (2,) and n.stage_marks == (1, 2)


def test_stage_marks_is_not_a_field_a_spec_can_write():
    exc = error("layers = dense * 2\nstage_marks = [1]")
    assert "unknown field `stage_marks`" in exc.message


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("body,message,where", [
    ("layers = | dense * 2", "a stage mark `|` needs a stage on each side", "| dense * 2"),
    ("layers = dense * 2 |", "a stage mark `|` needs a stage on each side", ""),  # at the model's `}`
    ("layers = dense | | moe", "two stage marks in a row", "| moe"),
    ("layers = [dense, | moe]", "a stage mark `|` needs a stage on each side", "| moe]"),
])
def test_a_mark_at_the_start_or_end_or_twice_is_a_located_syntax_error(body, message, where):
    exc = error(body)
    assert exc.kind.startswith("syntax:stage-mark") and message in exc.message and exc.hint
    if where:
        assert at(exc, body) == where
    else:
        assert (exc.span.line, exc.span.column) == (14, 1)


@pytest.mark.parametrize("body,message,where", [
    ("layers = dense * 2 | moe * 0 | moe", "the stage after this mark has no layers", "| moe * 0 | moe"),
    ("layers = dense * 0 | moe", "the stage before this mark has no layers", "| moe"),
    ("layers = (dense * 2 | moe) * 3", "a stage mark inside a repeated group would repeat with it", "| moe) * 3"),
    ("let stage = dense | moe\nlayers = stage * 2", "would repeat with it", "| moe"),  # the mark, in the let
    ("layers = 2 * (dense | moe)", "would repeat with it", "| moe)"),
    ("layers = dense | 3", "found 3 on its right", "| 3"),
    ("let x = 32 | 64\nlayers = dense * x", "found 32 on its left", "| 64"),
    ("layers = dense | mo", "unknown name `mo`", "mo"),
    ("layers = dense - (moe | dense)", "not `-`", "dense - (moe | dense)"),
])
def test_marks_that_make_an_empty_or_repeated_stage_are_located_errors(body, message, where):
    exc = error(body)
    assert message in exc.message and at(exc, body) == where


def test_marks_in_a_stack_other_than_a_decoders_layers_are_refused():
    exc = error("layers = dense * 2 | moe\nfamily = encoder")
    assert "this model's family is encoder" in exc.message and exc.hint
    text = spec("layers = dense").replace("    layers = dense\n", """    block enc {
        norm = rmsnorm()
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 48)
    }
    block dec extends enc {
        cross_attention = gqa(heads = 4, kv_heads = 2)
    }
    family = encoder_decoder
    encoder_layers = enc | enc
    decoder_layers = dec * 2
""")
    with pytest.raises(ArchError, match="`encoder_layers` takes none") as info:
        load_models(source=text)
    assert (info.value.span.line, info.value.span.column) == (22, 26)


def test_the_ast_refuses_marks_that_do_not_cut_the_stack_into_stages():
    m = model("layers = dense * 2 | moe * 2")
    data = {**m.model_dump(), "stage_marks": (3, 2)}
    with pytest.raises(ValueError, match="do not cut the 4 layers into non-empty stages"):
        A.Model.model_validate(data)
    with pytest.raises(ValueError, match="do not cut"):
        A.Model.model_validate({**data, "stage_marks": (4,)})


# ----------------------------------------------------------------------------- formatting


@pytest.mark.parametrize("text,expected", [
    ("layers = dense*2+moe*6|moe*8 |(moe*8)| moe * 6 + dense",
     "layers = dense * 2 + moe * 6 | moe * 8 | moe * 8 | moe * 6 + dense"),
    ("layers = (dense | moe) * 1", "layers = (dense | moe) * 1"),
    ("layers = dense + (moe | moe)", "layers = dense + (moe | moe)"),
    ("layers = (dense | moe) | moe", "layers = dense | moe | moe"),
    ("layers = dense | (moe | moe)", "layers = dense | (moe | moe)"),
    ("layers = [dense | moe,moe]", "layers = [dense | moe, moe]"),
])
def test_fmt_keeps_the_marks_and_round_trips(text, expected):
    once = check(spec(text))
    assert expected in once
    assert model(text).stage_marks == load_models(source=once)[0].stage_marks


def test_fmt_keeps_a_comment_inside_a_marked_stack():
    text = spec("layers = dense * 2 |  # stage two\n    moe * 4")
    once = format_source(text)
    assert "# stage two\n    layers = dense * 2 | moe * 4\n" in once and format_source(once) == once


def test_the_example_in_the_language_docs_resolves_to_its_stated_stages():
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "language.md").read_text()
    section = docs.split("### Pipeline stage marks", 1)[1]
    example = section.split("```\n", 2)[1]
    (m,) = load_models(source=example)
    assert m.stage_marks == (8, 16, 24) and len(m.layers) == 31


def test_editors_scope_the_mark_as_an_operator():
    import json
    import re
    from pathlib import Path

    grammar = json.loads((Path(__file__).parents[2] / "editors" / "arch.tmLanguage.json").read_text())
    assert re.findall(grammar["repository"]["operator"]["match"], "layers = a * 2 | b") == ["=", "*", "|"]


def test_a_shared_block_on_two_marked_stages_is_refused_at_the_mark():
    body = "layers = dense | shared_moe + moe | shared_moe"
    text = spec(body).replace("    layers =", "    block shared_moe extends moe {\n        shared = true\n    }\n"
                              "    layers =")
    with pytest.raises(ArchError, match="block `shared_moe` is shared .* used on pipeline stages 1 and 2") as info:
        load_models(source=text)
    line = text.splitlines()[info.value.span.line - 1]
    assert line[info.value.span.column - 1:] == "| shared_moe"  # the mark between its two uses
    assert model("layers = dense | moe * 2 + dense").stage_marks == (1,)  # an unshared block on two stages is fine
