"""Fuzzing: random valid specs compile, build and format stably; mutated specs and random text
either compile or raise archlang's own located error — never another exception.
`bench/fuzz.py` runs the same properties for as long as you like."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archlang.api import build, compile_spec, load_model
from archlang.spec import ArchError, ArchErrors
from archlang.spec.format import format_source

from .conftest import EXAMPLES, SPECS
from .strategies import mutated, valid_spec

SOURCES = [p.read_text() for p in sorted(EXAMPLES.glob("*.arch")) + sorted(SPECS.glob("*.arch"))]


def fails_cleanly(text: str) -> None:
    try:
        compile_spec(text, passes="")
    except (ArchError, ArchErrors) as exc:
        for e in exc.errors if isinstance(exc, ArchErrors) else [exc]:
            assert e.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_spec())
def test_random_valid_specs_build_and_run(text):
    model = build(text)
    ids = torch.randint(0, load_model(text).vocab, (1, 6))
    out = model(ids)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(out).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_spec())
def test_fmt_is_idempotent_and_keeps_the_meaning(text):
    once = format_source(text)
    assert format_source(once) == once
    assert load_model(once).model_dump() == load_model(text).model_dump()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SOURCES))
def test_mutated_specs_fail_cleanly(text):
    fails_cleanly(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_fails_cleanly(text):
    fails_cleanly(text)


@pytest.mark.parametrize("text", ["", "\n", "model", "model m {}", "\ufeffmodel m { }", "model m { layers = 1 }"])
def test_degenerate_inputs(text):
    with pytest.raises((ArchError, ArchErrors)):
        compile_spec(text)
