"""Longformer's masks beside the sliding window: `dilation` and `global_tokens`. The reference
attention against boolean masks built here position by position, decoders (cached decode = full
forward, the cache bytes the facts state) and encoders (both directions), the facts' key counts
against the masks, the located refusals, and the kernel never chosen for them."""

from __future__ import annotations

import re

import pytest
import torch

from archlang.api import build, compile_spec
from archlang.compiler.facts import compute_facts
from archlang.compiler.ops.attention import attended
from archlang.kernels import dispatch, reference
from archlang.runtime import Cache
from archlang.spec.errors import ArchError, ArchErrors, all_errors

from ..conftest import ROOT


def explicit_mask(t: int, s: int, *, causal: bool, window: int, dilation: int = 1, global_tokens: int = 0,
                  offset: int = 0) -> torch.Tensor:
    """True where query i (at position offset + i) may see key j, by the definitions in the docs."""
    mask = torch.zeros(t, s, dtype=torch.bool)
    for i in range(t):
        qi = offset + i
        for j in range(s):
            if causal and j > qi:
                continue
            distance = abs(qi - j)
            in_window = distance % dilation == 0 and distance // dilation < window
            mask[i, j] = in_window or j < global_tokens or qi < global_tokens
    return mask


def _masked_attention(q, k, v, mask, scale):
    scores = (q @ k.transpose(-1, -2)) * scale
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window,dilation,global_tokens", [(3, 2, 0), (2, 3, 2), (4, 1, 3), (3, 4, 1)])
def test_reference_attention_applies_the_explicit_mask(causal, window, dilation, global_tokens):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g) for _ in range(3))
    pos = torch.arange(17)
    got = reference.attention(q, k, v, pos, pos, causal=causal, scale=0.35, window=window, dilation=dilation,
                              global_tokens=global_tokens)
    mask = explicit_mask(17, 17, causal=causal, window=window, dilation=dilation, global_tokens=global_tokens)
    torch.testing.assert_close(got, _masked_attention(q, k, v, mask, 0.35))


def test_a_decode_step_sees_the_masked_keys_of_its_position():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 1, 8, generator=g)
    k, v = torch.randn(1, 2, 14, 8, generator=g), torch.randn(1, 2, 14, 8, generator=g)
    got = reference.attention(q, k, v, torch.tensor([13]), torch.arange(14), causal=True, scale=0.3, window=3,
                              dilation=3, global_tokens=2)
    mask = explicit_mask(1, 14, causal=True, window=3, dilation=3, global_tokens=2, offset=13)
    assert mask[0].nonzero().flatten().tolist() == [0, 1, 7, 10, 13]
    torch.testing.assert_close(got, _masked_attention(q, k, v, mask, 0.3))


DECODER = """
model masked {{
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    position = rope(theta = 10000)
    final_norm = rmsnorm(eps = 1e-6)
    block layer {{
        norm = rmsnorm(eps = 1e-6)
        attention = gqa(heads = 4, kv_heads = 2, {options})
        ffn = swiglu(hidden = 48)
    }}
    layers = layer * 2
}}
"""


def _perturbed(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("options", ["window = 3, dilation = 2", "window = 2, global_tokens = 3",
                                     "window = 3, dilation = 3, global_tokens = 2"])
def test_decoder_cached_decode_equals_the_full_forward(options):
    spec = DECODER.format(options=options)
    model = _perturbed(build(spec))
    ids = torch.randint(0, 61, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        cache = Cache()
        steps = [model(ids[:, :7], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # the cache holds what the facts say: the span of the dilated window and the global tokens
    held = sum(t.numel() * t.element_size() for state in cache.layers.values() for n, t in state.items()
               if n != "pos") // 2  # per sequence of the batch of 2
    facts = compute_facts(compile_spec(spec).graph, context=20, dtype="float32")
    assert held == facts.kv_cache_bytes_at_context
    window = int(re.search(r"window = (\d+)", options).group(1))
    dilation = int((re.search(r"dilation = (\d+)", options) or re.search("()", "")).group(1) or 1)
    first = int((re.search(r"global_tokens = (\d+)", options) or re.search("()", "")).group(1) or 0)
    assert held == 2 * 2 * (2 * 8) * 4 * ((window - 1) * dilation + 1 + first)  # layers * k,v * kv width * fp32


def test_decoder_is_causal_and_the_mask_reaches_the_model():
    """A change at the last position moves nothing before it; tokens outside a dilated window of
    one layer are invisible to it, visible through a global token."""
    model = _perturbed(build(DECODER.format(options="window = 2, dilation = 3").replace("layer * 2", "layer * 1")))
    ids = torch.randint(1, 61, (1, 12), generator=torch.Generator().manual_seed(3))
    other = ids.clone()
    other[0, -1] = 0
    with torch.no_grad():
        a, b = model(ids), model(other)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    # the last position (11) sees 11 and 8 only: changing 9 and 10 changes nothing there
    moved = ids.clone()
    moved[0, 9:11] = (moved[0, 9:11] + 1) % 61
    with torch.no_grad():
        torch.testing.assert_close(model(moved)[:, -1], a[:, -1])


ENCODER = """
model enc {{
    family = encoder
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    position = learned()
    final_norm = layernorm(eps = 1e-5)
    block layer {{
        norm = layernorm(eps = 1e-5, placement = post)
        attention = mha(heads = 4, {options})
        ffn = mlp(hidden = 48)
    }}
    layers = layer * 1
}}
"""


def test_encoder_masks_reach_both_ways():
    model = _perturbed(build(ENCODER.format(options="window = 2, dilation = 2, global_tokens = 1")))
    ids = torch.randint(1, 61, (1, 15), generator=torch.Generator().manual_seed(4))

    def hidden(x):
        with torch.no_grad():
            out = model(x)
        return out[0] if isinstance(out, tuple) else out

    base = hidden(ids)
    for changed, seen_by in [(14, (0, 12, 14)), (9, (0, 7, 9, 11)), (0, tuple(range(15)))]:
        x = ids.clone()
        x[0, changed] = (x[0, changed] + 1) % 61
        moved = ((hidden(x) - base).abs().amax(-1) > 1e-6)[0].nonzero().flatten().tolist()
        assert tuple(moved) == seen_by, changed


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window,dilation,global_tokens", [(3, 2, 0), (2, 3, 2), (4, 1, 3), (5, 2, 1)])
def test_facts_count_the_keys_the_mask_allows(causal, window, dilation, global_tokens):
    context = 23
    mask = explicit_mask(context, context, causal=causal, window=window, dilation=dilation,
                         global_tokens=global_tokens)
    mean = mask.sum().item() / context
    got = attended(context, causal, window, dilation=dilation, global_tokens=global_tokens)
    if causal:
        assert got == pytest.approx(mean)
    else:  # interior queries exactly; the sequence's two edges see fewer keys
        assert mean <= got <= mean + 2 * window * (window - 1) * dilation / context


def _errors(text: str):
    try:
        compile_spec(text)
    except (ArchError, ArchErrors) as exc:
        return all_errors(exc)
    raise AssertionError("accepted")


@pytest.mark.parametrize("options,needle", [
    ("dilation = 2", "dilation spreads a sliding window"),
    ("global_tokens = 2", "global tokens are seen beside a sliding window"),
    ("window = 4, sink_tokens = 1, global_tokens = 2", "global tokens are already visible"),
    ("window = 40, dilation = 2", "spans 79 positions, more than the context (64)"),
])
def test_invalid_masks_are_refused_where_written(options, needle):
    (err,) = _errors(DECODER.format(options=options))
    assert needle in err.message
    assert err.span is not None and err.span.line == 11


def test_other_mixers_refuse_the_masks_at_check_time():
    text = DECODER.format(options="window = 4").replace(
        "gqa(heads = 4, kv_heads = 2, window = 4)",
        "mla(heads = 2, kv_lora_rank = 8, rope_head_dim = 4, nope_head_dim = 8, v_head_dim = 8, window = 4, "
        "dilation = 2)")
    (err,) = _errors(text)
    assert "mla attention with dilation is not supported" in err.message and err.span.line == 11


def test_generated_code_passes_the_masks():
    source = compile_spec(DECODER.format(options="window = 3, dilation = 2, global_tokens = 1")).source
    assert "dilation=2," in source and "global_tokens=1," in source
    plain = compile_spec(DECODER.format(options="window = 3")).source
    assert "dilation" not in plain and "global_tokens" not in plain


def test_the_kernel_is_never_chosen_for_these_masks(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch, "_kernel", lambda *a: calls.append(a) or (lambda *x, **k: None))
    if not dispatch.triton_available():
        pytest.skip("triton is not installed")
    q = k = v = torch.randn(1, 1, 6, 8)
    pos = torch.arange(6)
    with dispatch.force("triton"):
        for masks in (dict(dilation=2), dict(global_tokens=1)):
            out = dispatch.attention(q, k, v, pos, pos, causal=True, scale=0.3, window=2, **masks)
            assert out is not None
        dispatch.attention(q, k, v, pos, pos, causal=True, scale=0.3, window=2)  # a plain window: the kernel
    assert len(calls) == 1


@pytest.mark.parametrize("name,shrink", [
    ("longformer_like", {"d_model = 256": "d_model = 32", "hidden = 1024": "hidden = 48", "window = 256": "window = 3",
                         "vocab = 1000": "vocab = 61"}),
    ("sparse_latent", {"vocab = 1000": "vocab = 61", "top_k = 256": "top_k = 3"}),
])
def test_the_docs_examples_compile_and_run(name, shrink):
    docs = (ROOT / "docs" / "language.md").read_text()
    text = next(block for block in docs.split("```") if f"model {name} " in block)
    for old, new in shrink.items():
        text = text.replace(old, new)
    model = build(text, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.randint(0, 61, (1, 9)))
    assert (out[0] if isinstance(out, tuple) else out).shape[:2] == (1, 9)
