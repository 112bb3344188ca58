"""Generation over batches: left-padded prompts (`attention_mask`), per-row stop tokens and the
fill token, the streaming iterator, and encoder input padding. The reference for a padded row is
the same row generated alone, unpadded: padding must never change a row's tokens."""

from pathlib import Path

import pytest
import torch

from archlang.api import build, compile_spec, load_source
from archlang.runtime import padding
from archlang.spec import ArchError

SPECS = Path(__file__).resolve().parents[1] / "specs"
LENGTHS = (7, 3, 5)  # prompt lengths of the batch's rows


def _model(spec: str, name: str | None = None):
    model = build(SPECS / f"{spec}.arch", model=name or spec)
    torch.manual_seed(0)
    with torch.no_grad():  # weights far from the init, so tokens are decided by clear margins
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def _padded(lengths=LENGTHS, vocab: int = 97, seed: int = 1):
    """Left-padded prompts (pad id 0) and their mask; and the unpadded rows."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, vocab, (n,), generator=g) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = row
        mask[b, width - len(row):] = 1
    return ids, mask, rows


def _check_rows_equal_alone(model, new: int = 8, **options):
    ids, mask, rows = _padded()
    out = model.generate(ids, new, attention_mask=mask, **options)
    assert out.shape == (len(rows), ids.shape[1] + new)
    assert torch.equal(out[:, :ids.shape[1]], ids)  # the prompts come back as given, padding included
    for b, row in enumerate(rows):
        alone = model.generate(row[None], new, **options)
        assert torch.equal(out[b, ids.shape[1]:], alone[0, len(row):]), f"row {b}"


# One forward for the batch: positions only enter through relative schemes, and every mixer
# masks the padded tokens (attention, Mamba-1 with its conv, Mamba-2, Gated DeltaNet, GLA,
# retention, short convolutions, mLSTM, sLSTM, S4D, RWKV-4 and -7, RG-LRU, lightning attention,
# KDA; T5's relative bias is covered by the encoder test below).
BATCHED = [("tiny_llama", None), ("tiny_jamba", None), ("tiny_mamba2", None), ("tiny_gated_deltanet", None),
           ("tiny_lfm2", None), ("tiny_gla_retention", None), ("tiny_positions", "tiny_rope_llama3"),
           ("tiny_xlstm", None), ("tiny_s4d", None), ("tiny_rwkv", None), ("tiny_rwkv7", None), ("tiny_rglru", None),
           ("tiny_lightning", None), ("tiny_kimi_linear", None)]


@pytest.mark.parametrize("spec,name", BATCHED)
def test_a_padded_batch_runs_as_one_and_each_row_equals_its_unpadded_run(spec, name):
    model = _model(spec, name)
    assert padding.rows_must_run_alone(model) is None
    _check_rows_equal_alone(model)


# Absolute positions: learned, sinusoidal, and a RoPE table that depends on the forward's length.
ALONE = [("tiny_gpt2", None, "LearnedPositions"), ("tiny_positions", "tiny_sinusoidal", "SinusoidalPositions"),
         ("tiny_modern_attention", "tiny_longrope", "RopeTable")]


@pytest.mark.parametrize("spec,name,why", ALONE)
def test_a_model_reading_absolute_positions_decodes_each_row_alone_and_exactly(spec, name, why):
    model = _model(spec, name)
    assert why in padding.rows_must_run_alone(model)
    _check_rows_equal_alone(model)


def test_chunked_attention_and_an_undeclared_mixer_run_rows_alone():
    model = _model("tiny_llama")
    attention = next(m for m in model.modules() if type(m).__name__ == "Attention")
    assert padding.rows_must_run_alone(model) is None
    attention.chunk = 4  # Llama 4's chunks are cut at absolute positions
    assert "Attention" in padding.rows_must_run_alone(model)
    attention.chunk = None

    class Unknown(torch.nn.Module):  # keeps state, says nothing about padding: not trusted
        cache_key = "x"

    model.extra = Unknown()
    assert "Unknown" in padding.rows_must_run_alone(model)


def test_sampling_a_padded_batch_is_reproducible_and_keeps_the_prompts():
    model = _model("tiny_llama")
    ids, mask, _ = _padded()
    a = model.generate(ids, 6, attention_mask=mask, temperature=0.9, top_k=20,
                       generator=torch.Generator().manual_seed(3))
    b = model.generate(ids, 6, attention_mask=mask, temperature=0.9, top_k=20,
                       generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(a[:, :ids.shape[1]], ids)


def test_uncached_padded_generation_equals_cached():
    model = _model("tiny_jamba")
    ids, mask, _ = _padded()
    assert torch.equal(model.generate(ids, 5, attention_mask=mask),
                       model.generate(ids, 5, attention_mask=mask, use_cache=False))


def test_a_finished_row_stops_growing_and_is_filled_with_the_pad_token():
    model = _model("tiny_llama")
    ids, mask, rows = _padded()
    free = model.generate(ids, 8, attention_mask=mask)
    stop = int(free[1, ids.shape[1] + 2])  # the third token of row 1 becomes its stop token
    out = model.generate(ids, 8, attention_mask=mask, eos_token_id=[stop], pad_token_id=0)
    width = ids.shape[1]
    for b in range(len(rows)):
        made = free[b, width:].tolist()
        end = made.index(stop) + 1 if stop in made else len(made)
        assert out[b, width:width + end].tolist() == made[:end]
        assert set(out[b, width + end:].tolist()) <= {0}, f"row {b} grew after its stop token"


def test_the_stream_yields_the_tokens_generate_returns():
    model = _model("tiny_mamba2")
    ids, mask, _ = _padded()
    steps = model.stream(ids, 6, attention_mask=mask)
    assert torch.equal(steps.start, ids)
    made = list(steps)
    assert len(made) == 6 and all(t.shape == (3,) for t in made)
    assert torch.equal(torch.stack(made, dim=1), model.generate(ids, 6, attention_mask=mask)[:, ids.shape[1]:])


def test_a_streamed_speculative_generation_yields_token_by_token():
    model = _model("tiny_llama")
    prompt = _padded()[2][0][None]
    made = [int(t) for t in model.stream(prompt, 9, draft=1, draft_tokens=3)]
    assert made == model.generate(prompt, 9)[0, prompt.shape[1]:].tolist()


def test_one_padded_row_decodes_speculatively_like_plainly():
    model = _model("tiny_llama")
    ids, mask, _ = _padded()
    one, one_mask = ids[1:2], mask[1:2]
    assert torch.equal(model.generate(one, 6, attention_mask=one_mask, draft=1, draft_tokens=2),
                       model.generate(one, 6, attention_mask=one_mask))


def test_a_stream_abandoned_early_leaves_the_model_as_it_was():
    model = _model("tiny_llama").train()
    steps = model.stream(_padded()[0], 6, attention_mask=_padded()[1])
    next(steps)
    assert torch.is_grad_enabled()  # grad mode is set per step, never held for the consumer
    steps._steps.close()
    assert model.training


@pytest.mark.parametrize("mask,message", [
    ([[1, 1, 0]], "padded on the left"),
    ([[0, 0, 0]], "no real token"),
    ([[1, 2, 1]], "other than 0 and 1"),
    ([[1, 1]], "shape"),
])
def test_a_bad_prompt_mask_is_refused_before_any_forward(mask, message):
    model = _model("tiny_llama")
    with pytest.raises(ArchError, match=message):
        model.stream(torch.ones(1, 3, dtype=torch.long), 2, attention_mask=torch.tensor(mask))


def test_an_encoder_decoder_ignores_the_padding_of_its_encoder_input():
    model = _model("tiny_t5")
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, 97, (n,), generator=g) for n in (6, 3)]
    ids = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.zeros(2, 6, dtype=torch.long)
    for b, row in enumerate(rows):  # right padding, as encoders are usually fed
        ids[b, :len(row)], mask[b, :len(row)] = row, 1
    out = model.generate(ids, 5, attention_mask=mask)
    for b, row in enumerate(rows):
        assert torch.equal(out[b], model.generate(row[None], 5)[0]), f"row {b}"


LINEAR = """
model tiny_linear {
    vocab = 61
    d_model = 32
    context = 64
    family = FAMILY
    block layer {
        norm = rmsnorm()
        attention = linear(heads = 4, kv_heads = 2, feature_map = relu)
        ffn = swiglu(hidden = 48)
    }
    layers = layer * 2
}
"""


@pytest.mark.parametrize("family", ["decoder", "encoder"])
def test_linear_attention_leaves_padded_keys_out(family):
    model = load_source(compile_spec(LINEAR.replace("FAMILY", family)).source, "tiny_linear").build()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ids = torch.randint(1, 61, (1, 5))
    pad = 3
    mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], dim=1)
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), ids], dim=1)
    if family == "decoder":  # the real tokens of a left-padded row: as the row alone
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, pad:], model(ids), atol=1e-5, rtol=1e-5)
    else:  # an encoder sees the whole row: the padding must not enter any token's sums
        got = model(padded, attention_mask=mask)
        got = got[0] if isinstance(got, tuple) else got
        want = model(ids)
        want = want[0] if isinstance(want, tuple) else want
        torch.testing.assert_close(got[:, pad:], want, atol=1e-4, rtol=1e-4)
