"""Autoregressive generation with the inference cache: greedy, temperature, top-k and top-p;
per-row stop tokens, a token callback for streaming, and speculative decoding (speculative.py)."""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Sequence

import torch

from archlang.spec.errors import ArchError

from .context import Cache
from .depth_router import depth_routing


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token from (B, V) logits."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = distribution(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def distribution(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The probabilities sampling draws from: (..., V) logits after temperature, top-k and top-p."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.softmax(logits, dim=-1)


def generate(model, input_ids: torch.Tensor, max_new_tokens: int | None = None, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | Sequence[int] | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None,
             decoder_start_token_id: int = 0, max_length: int | None = None,
             streamer: Callable[[torch.Tensor], None] | None = None, draft=None, draft_tokens: int = 4,
             stats: dict | None = None) -> torch.Tensor:
    family, context = model.config["family"], model.config["context"]
    max_new_tokens = _budget(input_ids, max_new_tokens, max_length, family == "encoder_decoder")
    if family == "encoder":
        raise ArchError(f"`{model.config['name']}` is an encoder model: it has no LM head and cannot generate",
                        kind="usage", hint="call the model for its hidden states, or build a decoder or "
                                           "encoder-decoder model to generate")
    enc_dec = family == "encoder_decoder"
    prompt = input_ids.shape[1]
    if enc_dec and prompt > context:
        raise ArchError(f"the encoder input has {prompt} tokens, more than the model's context of {context}",
                        kind="usage", hint=f"shorten the encoder input to at most {context} tokens")
    if not enc_dec and prompt >= context:
        raise ArchError(f"the prompt has {prompt} tokens, already at or over the model's context of {context}: "
                        "no token can be generated", kind="usage",
                        hint=f"shorten the prompt to fewer than {context} tokens")
    # Every generated token but the last is fed back: the sequence may grow to the context.
    room = context - (1 if enc_dec else prompt)
    if max_new_tokens > room:
        warnings.warn(f"generation stops at the model's context of {context} tokens: {room} new tokens, "
                      f"not {max_new_tokens}", stacklevel=4)
        max_new_tokens = room
    stop = None
    if eos_token_id is not None:
        stop = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                            dtype=torch.long, device=input_ids.device)
    if draft is not None:
        return _speculative(model, input_ids, max_new_tokens, draft=draft, draft_tokens=draft_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, stop=stop,
                            streamer=streamer, stats=stats)
    was_training = model.training
    model.eval()
    memory = model.encode(input_ids) if enc_dec else None
    tokens = (torch.full((input_ids.shape[0], 1), decoder_start_token_id, dtype=torch.long, device=input_ids.device)
              if enc_dec else input_ids)
    cache = Cache() if use_cache else None
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    step_input = tokens
    # depth-routed blocks choose token by token (causal routing), with or without the cache
    routing = depth_routing(model, "causal")
    routing.__enter__()
    try:
        for _ in range(max_new_tokens):
            feed = step_input if use_cache else tokens
            # only the last position's logits are needed (a prompt's others would cost T x vocab)
            logits = model(feed, memory=memory, cache=cache) if enc_dec else model(feed, cache=cache, logits_to_keep=1)
            nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            if stop is not None:  # a finished row repeats its stop token; the others go on
                nxt = torch.where(finished, stop[0], nxt)
                finished |= torch.isin(nxt, stop)
            tokens = torch.cat((tokens, nxt[:, None]), dim=1)
            if streamer is not None:
                streamer(nxt)
            step_input = nxt[:, None]
            if stop is not None and bool(finished.all()):
                break
    finally:
        routing.__exit__(None, None, None)
        model.train(was_training)
    return tokens


def _budget(input_ids: torch.Tensor, max_new_tokens: int | None, max_length: int | None, enc_dec: bool) -> int:
    """New tokens to make: `max_new_tokens`, or up to `max_length` tokens in all (the decoder's
    tokens, start token included, for an encoder-decoder model), whichever is fewer."""
    if max_new_tokens is None and max_length is None:
        raise ArchError("say how long to generate", kind="usage", hint="pass max_new_tokens or max_length")
    budget = max_new_tokens if max_new_tokens is not None else max_length
    if max_length is not None:
        budget = min(budget, max_length - (1 if enc_dec else input_ids.shape[1]))
    if budget < 0:
        raise ArchError(f"max_length ({max_length}) is shorter than the prompt ({input_ids.shape[1]} tokens)",
                        kind="usage", hint="raise max_length, or pass max_new_tokens")
    return budget


def _speculative(model, input_ids, max_new_tokens, *, draft, draft_tokens, temperature, top_k, top_p, generator,
                 stop, streamer, stats):
    from .speculative import self_draft, speculative_decode

    if isinstance(draft, int) and not isinstance(draft, bool):
        draft = self_draft(model, draft)
    elif not hasattr(draft, "config") or not callable(draft):
        raise ArchError("draft must be a compiled model or a number of the model's own leading layers", kind="usage")
    probs = None if temperature <= 0 else (lambda logits: distribution(logits, temperature, top_k, top_p))
    modes = [(m, m.training) for m in (model, draft)]
    with contextlib.ExitStack() as stack:
        for m, _ in modes:
            m.eval()
            stack.enter_context(depth_routing(m, "causal"))
        try:
            return speculative_decode(model, draft, input_ids, max_new_tokens, draft_tokens=draft_tokens,
                                      distribution=probs, generator=generator, stop=stop, streamer=streamer,
                                      stats=stats)
        finally:
            for m, training in modes:
                m.train(training)
