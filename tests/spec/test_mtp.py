"""The `mtp` field: every illegal combination refused at its location, and `fmt` keeps it."""

import pytest

from archlang.spec.errors import ArchError, all_errors
from archlang.spec.format import format_source
from archlang.spec.resolve import load_models

from ..conftest import SPECS

TEXT = (SPECS / "tiny_mtp.arch").read_text()
MTP_LINE = "mtp = mtp(depth = 2, block = sparse, loss_weight = 0.3)"


def errors_of(text):
    with pytest.raises(Exception) as info:
        load_models(source=text, name="m.arch")
    return all_errors(info.value)


def line_of(text, needle):
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("replacement, message", [
    ("mtp = mtp(depth = 2, block = nope)", "unknown name `nope`"),
    ("mtp = mtp(block = dense + sparse)", "one block, found a stack of 2"),
    ("mtp = mtp(block = 3)", "expected a block name"),
    ("mtp = mtp(block = \"dense\")", "expected a block name"),
    ("mtp = mtp(depth = 0, block = dense)", "`depth` must be greater than or equal to 1"),
    ("mtp = mtp(block = dense, loss_weight = -1)", "`loss_weight` must be greater than or equal to 0"),
    ("mtp = mtp(block = dense, foo = 1)", "unknown argument `foo` for mtp"),
    ("mtp = mtp()", "missing required argument `block`"),
    ("mtp = mtp(block = unused)\n    block unused extends dense { ffn = swiglu(hidden = 8) }", "is not used in `layers`"),
    ("mtp = mtp(block = dense)\n    embedding_norm = rmsnorm()", "embedding_norm is not implemented"),
    ("mtp = mtp(block = dense)\n    logit_scale = 0.5", "logit_scale is not implemented"),
])
def test_errors_point_at_the_mtp_line(replacement, message):
    text = TEXT.replace(MTP_LINE, replacement)
    errors = errors_of(text)
    assert len(errors) == 1 and message in errors[0].message, [e.message for e in errors]
    assert errors[0].span is not None and errors[0].span.line == line_of(text, "mtp = mtp(")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace(MTP_LINE, "mtp = mtp(block = ffn_only)\n    block ffn_only {\n        norm = rmsnorm()\n"
                         "        ffn = swiglu(hidden = 8)\n    }").replace("layers = dense + sparse * 2",
                                                                         "layers = dense + ffn_only"), "no token mixer"),
    (lambda t: t.replace("    final_norm = rmsnorm(eps = 1e-6)\n", ""), "has no final_norm"),
    (lambda t: t.replace("position = rope(theta = 10000)", "position = learned()"), "position learned() is not implemented"),
    (lambda t: t.replace("block sparse extends dense {", "block sparse extends dense {\n        shared = true"), "is shared"),
    (lambda t: t.replace("context = 64", "context = 2"), "leaves no position with a target"),
])
def test_combinations_that_are_not_implemented_are_refused(edit, message):
    errors = errors_of(edit(TEXT))
    assert any(message in e.message for e in errors), [e.message for e in errors]
    assert all(e.span is not None for e in errors)


def test_encoder_families_are_refused():
    text = TEXT.replace("dtype = fp32", "dtype = fp32\n    family = encoder").replace("position = rope(theta = 10000)", "")
    errors = errors_of(text)
    assert any("mtp predicts further tokens of a decoder" in e.message for e in errors), [e.message for e in errors]
    assert errors[0].span.line == line_of(text, "mtp = mtp(")


def test_fmt_round_trips_the_field():
    formatted = format_source(TEXT.replace(MTP_LINE, "mtp=mtp(depth=2,block=sparse,loss_weight=0.3)"))
    assert MTP_LINE in formatted
    assert format_source(formatted) == formatted
    (model,) = load_models(source=formatted)
    assert (model.mtp.depth, model.mtp.block, model.mtp.loss_weight) == (2, "sparse", 0.3)


def test_default_is_none():
    text = TEXT.replace(MTP_LINE, "")
    (model,) = load_models(source=text)
    assert model.mtp is None
