"""The attention options of 2024–2026 models in the language: located refusals, weights, facts."""

from __future__ import annotations

import pytest
import torch

from archlang.api import compile_spec
from archlang.compiler import compute_facts
from archlang.compiler.ops.attention import attended, cached
from archlang.spec import ArchError, ArchErrors, load_models

BASE = """model m {{
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    family = {family}
    position = {position}
    block layer {{
        norm = rmsnorm()
        attention = {attention}
    }}
    layers = layer * 2
}}
"""


def spec(attention: str, position: str = "rope()", family: str = "decoder") -> str:
    return BASE.format(attention=attention, position=position, family=family)


def error_of(text: str) -> ArchError:
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text)
    errors = info.value.errors if isinstance(info.value, ArchErrors) else [info.value]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize("attention,position,family,column_of,words", [
    ("gqa(heads = 4, kv_heads = 2, chunk = 8, window = 4)", "rope()", "decoder", "chunk", "window"),
    ("gqa(heads = 4, kv_heads = 2, sink_tokens = 2)", "rope()", "decoder", "sink_tokens", "window"),
    ("gqa(heads = 4, kv_heads = 2, floor_scale = 4)", "none", "decoder", "floor_scale", "temperature_tuning"),
    ("gqa(heads = 4, kv_heads = 2, temperature_tuning = true)", "rope()", "decoder", "temperature_tuning", "NoPE"),
    ("gqa(heads = 4, kv_heads = 2, temperature_tuning = true)", "learned()", "decoder", "temperature_tuning", "NoPE"),
    ("mha(heads = 4, chunk = 8)", "rope()", "encoder", "chunk", "encoder"),
    ("gqa(heads = 4, kv_heads = 2, qk_norm = layernorm(unit_offset = true))", "rope()", "decoder", "unit_offset",
     "rmsnorm"),
    ("gqa(heads = 4, kv_heads = 2, qk_norm = l2(scope = projection))", "rope()", "decoder", "scope", "head"),
    ("gqa(heads = 4, kv_heads = 2, qk_norm = batchnorm())", "rope()", "decoder", "batchnorm", "qk_norm"),
    ("mla(heads = 4, kv_lora_rank = 8, rope_head_dim = 4, nope_head_dim = 8, v_head_dim = 8, qk_norm = rmsnorm())",
     "rope()", "decoder", "qk_norm", "mla"),
    ("differential(heads = 4, sinks = true)", "rope()", "decoder", "sinks", "differential"),
    ("linear(heads = 4, chunk = 8)", "none", "decoder", "chunk", "linear"),
])
def test_refusals_are_located(attention, position, family, column_of, words):
    text = spec(attention, position, family)
    err = error_of(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "attention =" in s)
    assert err.span is not None and err.span.line == line
    before, at = text.splitlines()[line - 1][:err.span.column - 1], text.splitlines()[line - 1][err.span.column - 1:]
    assert at.startswith(column_of) or before.endswith(f"{column_of} = ")  # the option, or its value
    assert words in err.message + (err.hint or "")


def test_longrope_needs_one_factor_per_rotated_frequency():
    text = spec("gqa(heads = 4, kv_heads = 2)",
                "rope(scaling = longrope(short_factor = [1, 2], long_factor = [1, 2], original_context = 16))")
    err = error_of(text)
    assert "needs 4" in err.message and err.span.line == 7
    mismatched = spec("gqa(heads = 4, kv_heads = 2)",
                      "rope(scaling = longrope(short_factor = [1, 2, 3, 4], long_factor = [1, 2], original_context = 16))")
    assert "long_factor" in error_of(mismatched).message
    with_bools = spec("gqa(heads = 4, kv_heads = 2)",
                      "rope(scaling = longrope(short_factor = [1, 2, 3, true], long_factor = [1, 2, 3, 4], "
                      "original_context = 16))")
    error_of(with_bools)


@pytest.mark.parametrize("qk_norm,expected", [
    ("rmsnorm()", {"q_norm": (8,), "k_norm": (8,)}),
    ("rmsnorm(scope = projection)", {"q_norm": (32,), "k_norm": (16,)}),
    ("layernorm(scope = projection)", {"q_norm": (32,), "q_norm_bias": (32,), "k_norm": (16,), "k_norm_bias": (16,)}),
    ("l2()", {}),
])
def test_qk_norm_weights_are_attention_parameters(qk_norm, expected):
    compiled = compile_spec(spec(f"gqa(heads = 4, kv_heads = 2, qk_norm = {qk_norm}, sinks = true)"))
    (attn,) = [d for _, d in compiled.graph.nodes(data=True) if d["op"] == "attention"][:1]
    assert attn["params"] == {**expected, "sinks": (4,)}
    plain = compute_facts(compile_spec(spec("gqa(heads = 4, kv_heads = 2)")).graph)
    facts = compute_facts(compiled.graph)
    extra = 2 * (sum(s[0] for s in expected.values()) + 4)
    assert facts.params_total - plain.params_total == extra
    assert facts.breakdown["attention"] - plain.breakdown["attention"] == extra


def _mask(context, chunk=None, window=None, sink_tokens=0):
    """The reference kernel's mask, rebuilt from its definition: which keys each query sees."""
    q = torch.arange(context)[:, None]
    k = torch.arange(context)[None, :]
    seen = k <= q
    if window:
        seen &= ((q - k) < window) | (k < sink_tokens)
    if chunk:
        seen &= (q // chunk) == (k // chunk)
    return seen


@pytest.mark.parametrize("context,chunk,window,sink_tokens", [
    (64, 8, None, 0), (61, 8, None, 0), (5, 8, None, 0), (64, None, 8, 3), (64, None, 8, 60), (10, None, 8, 4),
    (64, None, 8, 0),
])
def test_flops_count_the_keys_each_query_attends(context, chunk, window, sink_tokens):
    mean = _mask(context, chunk, window, sink_tokens).sum().item() / context
    assert attended(context, True, window, chunk, sink_tokens) == pytest.approx(mean)
    held = _mask(context + 1, chunk, window, sink_tokens)[-1].sum().item()  # what the next query needs
    assert cached(context, window, chunk, sink_tokens) >= held - 1


def test_cache_at_context_is_bounded_by_chunk_and_sink_tokens():
    chunked = compute_facts(compile_spec(spec("gqa(heads = 4, kv_heads = 2, chunk = 8)")).graph)
    assert chunked.kv_cache_bytes_at_context == 8 * chunked.kv_cache_bytes_per_token
    streaming = compute_facts(compile_spec(spec("gqa(heads = 4, kv_heads = 2, window = 8, sink_tokens = 4)")).graph)
    assert streaming.kv_cache_bytes_at_context == 12 * streaming.kv_cache_bytes_per_token


def test_weighted_qk_norm_rotates_inside_the_attention():
    """rmsnorm/layernorm q/k norms come before RoPE: the lowered graph has no rope op in front."""
    from archlang.compiler.lower import lower

    (model,) = load_models(source=spec("gqa(heads = 4, kv_heads = 2, qk_norm = rmsnorm())"))
    ops = [d["op"] for _, d in lower(model).nodes(data=True)]
    assert "rope" not in ops
    (model,) = load_models(source=spec("gqa(heads = 4, kv_heads = 2, qk_norm = l2())"))
    assert "rope" in [d["op"] for _, d in lower(model).nodes(data=True)]


def test_the_docs_example_compiles_and_runs():
    from archlang.api import load_source

    from ..conftest import ROOT

    docs = (ROOT / "docs" / "language.md").read_text()
    text = next(block for block in docs.split("```") if "model modern_attention" in block)
    compiled = compile_spec(text.replace("d_model = 512", "d_model = 64").replace("head_dim = 128", "head_dim = 8")
                            .replace("hidden = 1536", "hidden = 32").replace("vocab = 1000", "vocab = 61"))
    model = load_source(compiled.source, "modern_attention").build().eval()
    with torch.no_grad():
        assert model(torch.randint(0, 61, (1, 9))).shape == (1, 9, 61)
