"""The formatter never changes meaning, keeps every comment where it was, and is idempotent."""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archlang.api import load_model
from archlang.spec import ArchError, load_models, parse_source
from archlang.spec import syntax as S
from archlang.spec.format import format_source

from ..conftest import EXAMPLES, SPECS
from ..strategies import commented, expressions, string_literals, valid_spec

ALL_SPECS = sorted(EXAMPLES.glob("*.arch")) + sorted(SPECS.glob("*.arch"))


def shape(node):
    """A syntax tree without positions, for comparing meaning."""
    if isinstance(node, tuple):
        return tuple(shape(n) for n in node)
    if hasattr(node, "__dataclass_fields__"):
        return (type(node).__name__,) + tuple(
            shape(getattr(node, f)) for f in node.__dataclass_fields__ if f not in ("span", "op_span", "parent_span", "end_line", "end_column"))
    return node


def comments_of(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        in_string = False
        for i, ch in enumerate(line):
            if ch == '"' and (i == 0 or line[i - 1] != "\\" or line[i - 2 : i] == "\\\\"):
                in_string = not in_string
            elif ch == "#" and not in_string:
                out.append(line[i:].rstrip())
                break
    return sorted(out)


def check(text: str) -> str:
    once = format_source(text)
    assert shape(parse_source(once)) == shape(parse_source(text))
    assert format_source(once) == once
    return once


@pytest.mark.parametrize("text,expected", [
    ("vocab = 97 + (-2) ** 2", "vocab = 97 + (-2) ** 2"),
    ("vocab = -2 ** 2", "vocab = -2 ** 2"),
    ("vocab = (-2) ** -2 ** 2", "vocab = (-2) ** -2 ** 2"),
    ("vocab = (2 ** 3) ** 2", "vocab = (2 ** 3) ** 2"),
    ("vocab = - (1 + 2)", "vocab = -(1 + 2)"),
    ("vocab = 1 - (2 - 3)", "vocab = 1 - (2 - 3)"),
    ("vocab = (1 - 2) - 3", "vocab = 1 - 2 - 3"),
    ("vocab = -(2 * 3)", "vocab = -(2 * 3)"),
    ("vocab = (-2) * 3", "vocab = -2 * 3"),
    ('a = "x\\ry"', 'a = "x\\ry"'),
    ('a = "\\x1b[2J\\u202e"', 'a = "\\x1b[2J\\u202e"'),
])
def test_expressions_keep_their_meaning(text, expected):
    once = check(f"model m {{\n    {text}\n}}\n")
    assert once.splitlines()[1] == "    " + expected


@pytest.mark.parametrize("path", ['a\\"b.arch', "c\\\\d.arch", "e\\rf.arch"])
def test_import_paths_keep_their_escapes(path):
    text = f'import "{path}"\n\nmodel m {{\n}}\n'
    assert check(text) == text


COMMENTED = """# file header
model m {  # after the model's brace
    # before a
    a = f(  # after the call's bracket
        # before x
        x = 1,  # after x
        y = g(  # inner bracket
            z = 2,  # after z
        ),  # after y
        # before the call's close
    )  # after a

    block b {  # after the block's brace
        c = 1  # after c
        # last in the block
    }  # after the block's close

    d = [
        1,  # after 1
        2,
    ]
    # last in the model
}  # after the model's close
# end of file
"""


def test_comments_stay_where_they_are():
    assert format_source(COMMENTED) == COMMENTED


def test_comments_inside_an_expression_move_before_their_statement():
    once = check("model m {\n    e = 1 + # inside\n      2\n    f = # after equals\n      3\n}\n")
    assert once == "model m {\n    # inside\n    e = 1 + 2\n    # after equals\n    f = 3\n}\n"


@settings(max_examples=150, deadline=None)
@given(expressions())
def test_generated_expressions_keep_their_meaning(expr):
    check(f"model m {{\n    let x = 1\n    vocab = {expr}\n    a = f(b = {expr}, c = [{expr}, 1])\n}}\n")


@settings(max_examples=150, deadline=None)
@given(string_literals())
def test_generated_strings_keep_their_value(literal):
    text = f"model m {{\n    a = {literal}\n}}\n"
    once = check(text)
    assert parse_source(once).models[0].assigns[0].value.value == parse_source(text).models[0].assigns[0].value.value
    with_import = f"import {literal}\n\n" + text
    try:
        (imp,) = parse_source(with_import).imports
    except ArchError:  # a NUL or a lone surrogate: refused as a path, tested in test_limits
        return
    assert parse_source(check(with_import)).imports[0].path == imp.path


def _check_commented(text: str) -> None:
    once = check(text)
    assert comments_of(once) == comments_of(text)
    return once


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_comments_anywhere_survive_and_fmt_is_idempotent(data):
    spec = data.draw(valid_spec())
    text = data.draw(commented(spec))
    once = _check_commented(text)
    assert load_model(once).model_dump() == load_model(spec).model_dump()


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: p.name)
def test_every_spec_formats_to_the_same_models(path):
    text = path.read_text()
    once = check(text)
    assert [m.model_dump() for m in load_models(source=once)] == [m.model_dump() for m in load_models(path)]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_SPECS), st.data())
def test_every_spec_with_comments_everywhere(path, data):
    text = path.read_text()
    _check_commented(data.draw(commented(text)))
