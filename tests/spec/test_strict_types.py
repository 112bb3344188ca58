"""Values have strict types: a bool is not an integer, a string is not a number, an
enumeration value is a bare word. Each wrong type is one located error, with no knock-ons."""

from pathlib import Path

import pytest

from archlang.spec import ArchError, ArchErrors, SourceMap, load_models
from archlang.spec import ast as A
from archlang.spec import value_types as VT

BASE = """model m {
  vocab = 100
  d_model = 64
  context = 128
  block b {
    norm = rmsnorm(eps = 1e-5)
    attention = gqa(heads = 8, kv_heads = 2)
    ffn = swiglu(hidden = 4 * d_model)
  }
  layers = b * 2
}
"""


BLT = (Path(__file__).parents[1] / "specs" / "byte_latent" / "blt_tiny.arch").read_text()


def errors_of(text: str) -> list:
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text, name="e.arch")
    return info.value.errors if isinstance(info.value, ArchErrors) else [info.value]


def one_error(old: str, new: str):
    text = BASE.replace(old, new)
    assert text != BASE
    errors = errors_of(text)
    assert len(errors) == 1, [str(e) for e in errors]
    (err,) = errors
    line = next(i for i, l in enumerate(text.splitlines(), 1) if new in l)
    return err, line, text.splitlines()[line - 1]


@pytest.mark.parametrize("old,new,value,expected,got", [
    ("vocab = 100", "vocab = true", "true", "an integer", "a boolean"),
    ("vocab = 100", 'vocab = "100"', '"100"', "an integer", "a string"),
    ("vocab = 100", "vocab = 100.0", "100.0", "an integer", "a number"),
    ("d_model = 64", "d_model = true", "true", "an integer", "a boolean"),
    ("context = 128", 'context = 128 tie_embeddings = "yes"', '"yes"', "true or false", "a string"),
    ("context = 128", "context = 128 tie_embeddings = 1", "1", "true or false", "an integer"),
    ("context = 128", 'context = 128 dtype = "bf16"', '"bf16"', "a word", "a string"),
    ("context = 128", 'context = 128 family = "decoder"', '"decoder"', "a word", "a string"),
    ("context = 128", 'context = 128 embedding_scale = "8"', '"8"', "a number or none", "a string"),
    ("eps = 1e-5", 'eps = "1e-5"', '"1e-5"', "a number", "a string"),
    ("eps = 1e-5", 'eps = 1e-5, bias = "no"', '"no"', "true or false or none", "a string"),
    ("eps = 1e-5", 'eps = 1e-5, placement = "pre"', '"pre"', "a word", "a string"),
    ("heads = 8", 'heads = "8"', '"8"', "an integer", "a string"),
    ("heads = 8", "heads = true", "true", "an integer", "a boolean"),
    ("kv_heads = 2", "kv_heads = 2.0", "2.0", "an integer", "a number"),
    ("4 * d_model)", '4 * d_model, act = "silu")', '"silu"', "a word or none", "a string"),
    ("4 * d_model)", "4 * d_model, bias = 0)", "0", "true or false", "an integer"),
    ("attention = gqa(heads = 8, kv_heads = 2)", "attention = 8", "8", "a call or none", "an integer"),
])
def test_wrong_type_is_one_located_error(old, new, value, expected, got):
    err, line, text = one_error(old, new)
    assert f"expected {expected}, got {got}" in err.message
    assert (err.span.line, err.span.column) == (line, text.index(value, text.index(new.split("=")[-2].split()[-1])) + 1)


def test_wrong_types_in_nested_calls():
    text = BASE.replace("ffn = swiglu(hidden = 4 * d_model)",
                        'ffn = moe(experts = 4, top_k = true, expert = mlp(hidden = 8, act = "gelu"))')
    msgs = sorted(e.message for e in errors_of(text))
    assert msgs == ["`act`: expected a word, got a string", "`top_k`: expected an integer, got a boolean"]
    text = BASE.replace("layers = b * 2", "layers = b * 2 position = rope(scaling = yarn(factor = \"4\", "
                        "original_context = 4096))")
    assert [e.message for e in errors_of(text)] == ["`factor`: expected a number, got a string"]


def test_ints_are_accepted_where_a_float_is_expected():
    (m,) = load_models(source=BASE.replace("eps = 1e-5", "eps = 1").replace("layers = b * 2",
                                           "layers = b * 2 position = rope(theta = 500000)"))
    assert m.blocks["b"].norm.eps == 1.0 and m.position.theta == 500000.0


def test_words_are_still_words():
    (m,) = load_models(source=BASE.replace("context = 128", "context = 128 dtype = bf16 family = decoder"))
    assert m.dtype == "bfloat16" and m.family == "decoder"


def test_no_knock_on_errors_from_a_bad_value():
    # `heads = "8"` used to report "missing required argument `head_dim`"; `d_model = true`
    # a divisibility error and a type error where `4 * d_model` uses it.
    for old, new in [("heads = 8", 'heads = "8"'), ("d_model = 64", "d_model = true"),
                     ("d_model = 64", 'd_model = "64"'), ("vocab = 100", "vocabb = 100")]:
        (err,) = errors_of(BASE.replace(old, new))
        assert "head_dim" not in err.message and "divisible" not in err.message


def test_every_field_kind_is_derived_from_the_ast():
    # Every field of every AST class gets a kind of value, so none falls through unchecked.
    classes = {cls for kinds in A.SLOT_CLASSES.values() for cls in kinds.values()} | {A.Block}
    for cls in classes:
        for name, info in cls.model_fields.items():
            if name in ("kind", "name"):
                continue
            assert VT.accepted(info.annotation), f"{cls.__name__}.{name}"
    for name in A.MODEL_FIELDS:
        if name not in ("layers", "encoder_layers", "decoder_layers", "entropy_layers", "global_layers"):
            assert VT.accepted(A.Model.model_fields[name].annotation), name


@pytest.mark.parametrize("item,got", [("true", "a boolean"), ("4.0", "a number"), ('"4"', "a string")])
def test_each_item_of_a_list_of_integers_is_checked(item, got):
    # pydantic's lax mode read `ngrams = [3, true]` as (3, 1).
    text = BLT.replace("ngrams = [3, 4, 5]", f"ngrams = [3, {item}, 5]")
    (err,) = errors_of(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "ngrams" in l)
    assert err.message == f"`ngrams`: each item is expected to be an integer, got {got}"
    assert (err.span.line, err.span.column) == (line, text.splitlines()[line - 1].index(item) + 1)
    (m,) = load_models(source=BLT.replace("ngrams = [3, 4, 5]", "ngrams = [2, 4]"))
    assert m.byte_latent.ngrams == (2, 4)


@pytest.mark.parametrize("old,new,hint", [
    ("attention = gqa(heads = 8, kv_heads = 2)", "attention = linear(heads = 8, factor = 2)",
     "linear takes: heads, head_dim, bias, out_bias, window, softcap, scale, qk_norm, sinks, chunk, sink_tokens, dilation, "
     "global_tokens, temperature_tuning, floor_scale, attn_scale, output_gate, kv_heads, feature_map"),
    ("ffn = swiglu(hidden = 4 * d_model)", "ffn = mlp(hidden = 8, experts = 2)", "mlp takes: hidden, act, bias"),
])
def test_allowed_arguments_come_from_the_slot(old, new, hint):
    (err,) = errors_of(BASE.replace(old, new))
    assert err.message.startswith("unknown argument") and err.hint == hint


def test_linear_scaling_still_takes_factor():
    text = BASE.replace("layers = b * 2", "layers = b * 2 position = rope(scaling = linear(factor = 2, heads = 8))")
    (err,) = errors_of(text)
    assert err.message == "unknown argument `heads` for linear" and err.hint == "linear takes: factor"


def test_kind_words_in_two_slots_have_distinct_fields():
    shared = {}
    for slot, kinds in A.SLOT_CLASSES.items():
        for kind, cls in kinds.items():
            shared.setdefault(kind, set()).add(cls)
    assert shared["linear"] == {A.LinearAttention, A.LinearScaling}



HEADER = """model m {
  vocab = 100
  d_model = 64
  context = 128
"""


def test_an_enumeration_word_means_itself_next_to_a_block_of_that_name():
    text = HEADER + """  block post {
    norm = rmsnorm(placement = post)
    attention = mha(heads = 4)
  }
  layers = post * 2
}
"""
    (model,) = load_models(source=text)
    assert model.blocks["post"].norm.placement == "post"


def test_mla_refuses_a_head_dim_other_than_its_parts():
    text = HEADER + """  block a {
    norm = rmsnorm()
    attention = mla(heads = 4, kv_lora_rank = 16, head_dim = 999)
  }
  layers = a * 2
}
"""
    (err,) = errors_of(text)
    assert "nope_head_dim + rope_head_dim" in err.message
    assert (err.span.line, err.span.column) == (7, 62)
