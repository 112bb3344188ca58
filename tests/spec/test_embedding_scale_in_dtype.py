"""embedding_scale_in_dtype: the embedding scale rounded to the model's dtype (Gemma)."""

import pytest

from archlang.api import compile_spec
from archlang.spec import ArchError, ArchErrors

SPEC = """model m {
    vocab = 61
    d_model = 32
    context = 64
%s
    block layer {
        norm = rmsnorm()
        attention = mha(heads = 4)
    }
    layers = layer
}
"""


def test_without_a_scale_it_is_refused_at_the_field():
    text = SPEC % "    embedding_scale_in_dtype = true"
    with pytest.raises((ArchError, ArchErrors)) as info:
        compile_spec(text)
    errors = getattr(info.value, "errors", [info.value])
    assert any("rounds embedding_scale, and the model has none" in e.message and e.span.line == 5 for e in errors)


def test_the_generated_code_rounds_the_scale_to_the_table_dtype():
    rounded = compile_spec(SPEC % "    embedding_scale = d_model ** 0.5\n    embedding_scale_in_dtype = true").source
    plain = compile_spec(SPEC % "    embedding_scale = d_model ** 0.5").source
    assert "self.embed(input_ids) * torch.tensor(5.656854249492381, dtype=self.embed.weight.dtype)" in rounded
    assert "self.embed(input_ids) * 5.656854249492381" in plain and "torch.tensor(5.65" not in plain
