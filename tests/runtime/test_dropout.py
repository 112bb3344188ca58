"""Dropout on the embeddings, the attention probabilities and each residual branch: the
identity in eval mode, and in training the same draws as Hugging Face's GPT-2 (eager attention)
from the same random state."""

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.spec import ArchError, ArchErrors, SourceMap, load_models

from ..conftest import SPECS

DROPOUTS = "    embedding_dropout = 0.1\n    attention_dropout = 0.1\n    residual_dropout = 0.1\n"
TEXT = (SPECS / "tiny_gpt2.arch").read_text().replace("    position = learned()\n", "    position = learned()\n" + DROPOUTS)


def build(text):
    return load_source(compile_spec(text).source, "m").build()


def test_dropout_is_the_identity_in_eval_mode():
    assert DROPOUTS in TEXT
    with_dropout, without = build(TEXT).eval(), build(TEXT.replace(DROPOUTS, "")).eval()
    without.load_state_dict(with_dropout.state_dict())
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(with_dropout(ids), without(ids), atol=0, rtol=0)


@pytest.mark.parametrize("field", ["embedding_dropout", "attention_dropout", "residual_dropout"])
def test_each_dropout_acts_in_training(field):
    text = TEXT.replace(DROPOUTS, f"    {field} = 0.5\n")
    model = build(text).train()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    a = model(ids)
    torch.manual_seed(2)
    b = model(ids)
    assert (a - b).abs().max() > 1e-3
    a.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_training_draws_match_hugging_face_gpt2():
    transformers = pytest.importorskip("transformers")
    from archlang.interop.hf_weights import to_archlang

    config = transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.1,
                                     embd_pdrop=0.1, attn_pdrop=0.1, attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = build(TEXT)
    ours.load_unfused_state_dict(to_archlang(config, hf.state_dict()))
    hf.train(), ours.train()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(7)
    expected = hf(ids).logits
    torch.manual_seed(7)
    got = ours(ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.manual_seed(8)
    assert (ours(ids) - expected).abs().max() > 1e-3  # other draws: the dropout is really there


@pytest.mark.parametrize("attention", ["mla(heads = 4, kv_lora_rank = 8, rope_head_dim = 4, nope_head_dim = 4, "
                                       "v_head_dim = 8)", "differential(heads = 2)", "linear(heads = 4)"])
def test_attention_dropout_is_refused_where_not_implemented(attention):
    text = TEXT.replace("attention = mha(heads = 4, bias = true, out_bias = true)", f"attention = {attention}") \
        .replace("position = learned()", "position = rope()" if "linear" not in attention else "position = learned()")
    sources = SourceMap()
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text, sources=sources)
    msg = getattr(info.value, "errors", [info.value])[0].render(sources)
    assert "attention_dropout is not implemented for" in msg
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "attention = " in l)
    assert msg.startswith(f"<string>:{line}:")
