"""Embeddings in place of token ids (`inputs_embeds`, the language model inside a multimodal
model), and positions given by the caller."""

import pytest
import torch

from archlang.api import build
from archlang.runtime.context import Cache

from ..conftest import SPECS

FAMILIES = ["tiny_llama", "tiny_gemma2", "tiny_gpt2", "tiny_bert", "tiny_jamba"]


def model_of(name):
    torch.manual_seed(0)
    model = build(SPECS / f"{name}.arch", dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norms away from 1, biases away from 0
    return model


def ids(model, t=10, seed=1):
    return torch.randint(0, model.config["vocab"], (2, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES)
def test_embeddings_of_the_tokens_give_the_same_output(name):
    model = model_of(name)
    x = ids(model)
    with torch.no_grad():
        out_ids, out_embeds = model(x), model(inputs_embeds=model.embed_tokens(x))
    for a, b in zip(out_ids if isinstance(out_ids, tuple) else (out_ids,),
                    out_embeds if isinstance(out_embeds, tuple) else (out_embeds,)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_embeddings_are_used_as_given():
    """Other embeddings (image features) change the output where they stand, and only from there on."""
    model = model_of("tiny_llama")
    x = ids(model)
    embeds = model.embed_tokens(x).detach()
    changed = embeds.clone()
    changed[:, 4] = torch.randn(changed.shape[0], changed.shape[-1])
    with torch.no_grad():
        a, b = model(inputs_embeds=embeds), model(inputs_embeds=changed)
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=1e-6, rtol=1e-6)
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_jamba"])
def test_a_prompt_of_embeddings_then_cached_decoding(name):
    model = model_of(name)
    x = ids(model)
    with torch.no_grad():
        full = model(x)
        cache = Cache()
        steps = [model(inputs_embeds=model.embed_tokens(x[:, :6]), cache=cache)]
        steps += [model(x[:, t:t + 1], cache=cache) for t in range(6, x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_given_positions_are_the_positions_used():
    model = model_of("tiny_llama")
    x = ids(model)
    with torch.no_grad():
        shifted = Cache()
        shifted.offset = 5
        at_5 = model(x, cache=shifted)
        torch.testing.assert_close(model(x, positions=torch.arange(5, 5 + x.shape[1])), at_5, atol=0, rtol=0)
        # learned absolute positions read the table at the given positions
        gpt2 = model_of("tiny_gpt2")
        y = ids(gpt2)
        assert (gpt2(y, positions=torch.arange(3, 3 + y.shape[1])) - gpt2(y)).abs().max() > 1e-3


@pytest.mark.parametrize("call,message", [
    (lambda m, x: m(), "give either input_ids or inputs_embeds"),
    (lambda m, x: m(x, inputs_embeds=m.embed_tokens(x)), "give either input_ids or inputs_embeds"),
    (lambda m, x: m(inputs_embeds=torch.zeros(2, 3, 5)), r"inputs_embeds must be \(batch, tokens, 32\)"),
    (lambda m, x: m(x, positions=torch.arange(3)), "positions must be 10 integers"),
    (lambda m, x: m(x, positions=torch.arange(60, 70)), "exceeds the model's context of 64"),
])
def test_bad_arguments_are_refused(call, message):
    model = model_of("tiny_llama")
    with pytest.raises(ValueError, match=message):
        call(model, ids(model))


def test_matches_hugging_face_given_embeddings():
    transformers = pytest.importorskip("transformers")
    from archlang.interop.hf import from_hf

    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = from_hf(hf).eval()
    embeds = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(inputs_embeds=embeds), hf(inputs_embeds=embeds).logits, atol=1e-4, rtol=1e-4)
