"""Fuzzing the front end: mutated examples and random bytes either compile or raise archlang's
own located error — never another exception. `bench/fuzz.py` runs the same for longer."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archlang.api import compile_spec
from archlang.spec import ArchError, ArchErrors

from .conftest import EXAMPLES, SPECS

SOURCES = [p.read_text() for p in sorted(EXAMPLES.glob("*.arch")) + sorted(SPECS.glob("*.arch"))]
TOKENS = ["{", "}", "(", ")", "[", "]", "=", ",", "*", "+", "-", "/", "**", "model", "block", "let", "extends",
          "import", "none", "true", "1e999", "10 ** 300", "0", "-1", '"', "\n", "#", "x", "layers", "é", "\x00", "128k"]


def _must_be_clean(text: str) -> None:
    try:
        compile_spec(text, passes="")
    except (ArchError, ArchErrors) as exc:
        for e in exc.errors if isinstance(exc, ArchErrors) else [exc]:
            assert e.message
    except RecursionError:  # pragma: no cover - reported as a failure below
        pytest.fail("recursion error")


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "swap", "bytes"]))
        if op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 12)):]
        elif op == "insert":
            text = text[:pos] + " " + draw(st.sampled_from(TOKENS)) + " " + text[pos:]
        elif op == "swap":
            other = draw(st.integers(0, len(text)))
            a, b = sorted((pos, other))
            text = text[:a] + text[b:b + 5] + text[a + 5:b] + text[a:a + 5] + text[b + 5:]
        else:
            text = text[:pos] + draw(st.text(max_size=6)) + text[pos:]
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_specs_fail_cleanly(text):
    _must_be_clean(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_fails_cleanly(text):
    _must_be_clean(text)


@pytest.mark.parametrize("text", ["", "\n", "model", "model m {}", "\ufeffmodel m { }", "model m { layers = 1 }"])
def test_degenerate_inputs(text):
    with pytest.raises((ArchError, ArchErrors)):
        compile_spec(text)
