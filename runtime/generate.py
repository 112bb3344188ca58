"""Autoregressive generation with the inference cache: greedy, temperature, top-k and top-p."""

from __future__ import annotations

import warnings

import torch

from archlang.spec.errors import ArchError

from .context import Cache
from .depth_router import depth_routing


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token from (B, V) logits."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
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
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(model, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None,
             decoder_start_token_id: int = 0) -> torch.Tensor:
    family, context = model.config["family"], model.config["context"]
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
            if eos_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished |= nxt == eos_token_id
            tokens = torch.cat((tokens, nxt[:, None]), dim=1)
            step_input = nxt[:, None]
            if eos_token_id is not None and bool(finished.all()):
                break
    finally:
        routing.__exit__(None, None, None)
        model.train(was_training)
    return tokens
