"""Autoregressive generation with the inference cache: greedy, temperature, top-k and top-p;
per-row stop tokens, a token callback for streaming, and speculative decoding (speculative.py)."""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Iterator, Sequence

import torch

from archlang.spec.errors import ArchError

from . import padding
from .context import Cache
from .depth_router import depth_routing


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
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


def generate(model, input_ids: torch.Tensor, max_new_tokens: int | None = None, *, streamer=None,
             **options) -> torch.Tensor:
    """Prompt + new tokens, (B, T + n): `stream`'s steps collected; `streamer(tokens)` sees each
    step's (B,) tokens as they come. Options as in `stream`."""
    steps = stream(model, input_ids, max_new_tokens, **options)
    made = []
    for step in steps:
        made.append(step)
        if streamer is not None:
            streamer(step)
    start = steps.start
    return torch.cat([start] + [t[:, None] for t in made], dim=1) if made else start


class Steps:
    """An iterator over the tokens a generation makes: each step's (B,) tensor, one per row. `start`
    holds what they follow: the prompt (the decoder start token for encoder-decoder models)."""

    def __init__(self, start: torch.Tensor, steps: Iterator[torch.Tensor]):
        self.start, self._steps = start, steps

    def __iter__(self) -> "Steps":
        return self

    def __next__(self) -> torch.Tensor:
        return next(self._steps)


def stream(model, input_ids: torch.Tensor, max_new_tokens: int | None = None, *, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, eos_token_id: int | Sequence[int] | None = None,
           pad_token_id: int | None = None, attention_mask: torch.Tensor | None = None, use_cache: bool = True,
           generator: torch.Generator | None = None, decoder_start_token_id: int = 0, max_length: int | None = None,
           draft=None, draft_tokens: int = 4, stats: dict | None = None) -> Steps:
    """The tokens of a generation as they are made: an iterator of (B,) tensors, one per step. Every
    check runs here, before any forward, so a refused request raises before iteration starts.

    `attention_mask` (B, T) marks real prompt tokens with 1: a decoder's prompts are padded on the
    left (runtime/padding.py), an encoder-decoder's encoder input anywhere. A row that has made a
    stop token goes on with `pad_token_id` (default: its first stop token)."""
    family, context = model.config["family"], model.config["context"]
    enc_dec = family == "encoder_decoder"
    max_new_tokens = _budget(input_ids, max_new_tokens, max_length, enc_dec)
    if family == "encoder":
        raise ArchError(f"`{model.config['name']}` is an encoder model: it has no LM head and cannot generate",
                        kind="usage", hint="call the model for its hidden states, or build a decoder or "
                                           "encoder-decoder model to generate")
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
                      f"not {max_new_tokens}", stacklevel=5)
        max_new_tokens = room
    stop = None
    if eos_token_id is not None:
        stop = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                            dtype=torch.long, device=input_ids.device)
    fill = pad_token_id if pad_token_id is not None else (int(stop[0]) if stop is not None else None)
    if enc_dec:
        mask = padding.checked_mask(attention_mask, input_ids, "encoder input")
    else:
        mask = padding.left_padding(attention_mask, input_ids)
    pick = functools.partial(sample_next, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    if draft is not None:
        return _speculative(model, input_ids, mask, max_new_tokens, draft=draft, draft_tokens=draft_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, stop=stop,
                            stats=stats, decoder_start_token_id=decoder_start_token_id if enc_dec else None)
    if enc_dec:
        start = torch.full((input_ids.shape[0], 1), decoder_start_token_id, dtype=torch.long, device=input_ids.device)
        forward = _EncoderDecoder(model, input_ids, start, mask, use_cache)
    elif mask is not None and padding.rows_must_run_alone(model):
        start, forward = input_ids, _RowsAlone(model, input_ids, mask, use_cache)
    else:
        start, forward = input_ids, _Batched(model, input_ids, mask, use_cache)
    return Steps(start, _decode(model, forward, pick, max_new_tokens, stop, fill))


def _decode(model, forward, pick, max_new_tokens: int, stop: torch.Tensor | None, fill: int | None):
    was_training = model.training
    model.eval()
    finished = torch.zeros(forward.rows, dtype=torch.bool, device=forward.device)
    # depth-routed blocks choose token by token (causal routing), with or without the cache
    # (grad mode is set per step: a generator's `with` would hold it for its consumer too)
    with depth_routing(model, "causal"):
        try:
            for _ in range(max_new_tokens):
                with torch.no_grad():
                    nxt = pick(forward.next_logits(finished))
                if stop is not None:  # a finished row goes on with the fill token; the others decode
                    nxt = torch.where(finished, fill, nxt)
                    finished |= torch.isin(nxt, stop)
                forward.append(nxt)
                yield nxt
                if stop is not None and bool(finished.all()):
                    break
        finally:
            model.train(was_training)


class _Batched:
    """All rows in one forward: the cache holds the batch; a padding mask grows with the tokens."""

    def __init__(self, model, input_ids: torch.Tensor, mask: torch.Tensor | None, use_cache: bool):
        self.model, self.tokens, self.mask = model, input_ids, mask
        self.cache = Cache() if use_cache else None
        self.feed = input_ids
        self.rows, self.device = input_ids.shape[0], input_ids.device

    def next_logits(self, finished: torch.Tensor) -> torch.Tensor:
        feed = self.feed if self.cache is not None else self.tokens
        # only the last position's logits are needed (a prompt's others would cost T x vocab)
        return self.model(feed, cache=self.cache, attention_mask=self.mask, logits_to_keep=1)[:, -1]

    def append(self, nxt: torch.Tensor) -> None:
        self.tokens = torch.cat((self.tokens, nxt[:, None]), dim=1)
        self.feed = nxt[:, None]
        if self.mask is not None:
            self.mask = torch.cat((self.mask, self.mask.new_ones(self.rows, 1)), dim=1)


class _RowsAlone:
    """Each row in a forward of its own, unpadded, with its own cache: for models whose result
    depends on absolute positions (runtime/padding.py). A finished row is not run again."""

    def __init__(self, model, input_ids: torch.Tensor, mask: torch.Tensor, use_cache: bool):
        pads = (mask == 0).sum(dim=1).tolist()
        self.singles = [_Batched(model, input_ids[b:b + 1, pad:], None, use_cache) for b, pad in enumerate(pads)]
        self.rows, self.device = input_ids.shape[0], input_ids.device
        self.last: list[torch.Tensor | None] = [None] * self.rows

    def next_logits(self, finished: torch.Tensor) -> torch.Tensor:
        for b, row in enumerate(self.singles):
            if self.last[b] is None or not bool(finished[b]):
                self.last[b] = row.next_logits(finished[b:b + 1])[0]
        return torch.stack(self.last)

    def append(self, nxt: torch.Tensor) -> None:
        for b, row in enumerate(self.singles):
            row.append(nxt[b:b + 1])


class _EncoderDecoder:
    """The encoder runs once; the decoder reads its output (and the encoder input's padding mask)."""

    def __init__(self, model, input_ids: torch.Tensor, start: torch.Tensor, mask: torch.Tensor | None,
                 use_cache: bool):
        self.model, self.mask = model, mask
        with torch.no_grad():
            self.memory = model.encode(input_ids, mask)
        self.decoder = _Batched(model, start, None, use_cache)
        self.rows, self.device = start.shape[0], start.device

    def next_logits(self, finished: torch.Tensor) -> torch.Tensor:
        d = self.decoder
        feed = d.feed if d.cache is not None else d.tokens
        return self.model(feed, memory=self.memory, encoder_mask=self.mask, cache=d.cache)[:, -1]

    def append(self, nxt: torch.Tensor) -> None:
        self.decoder.append(nxt)


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


def _speculative(model, input_ids, mask, max_new_tokens, *, draft, draft_tokens, temperature, top_k, top_p,
                 generator, stop, stats, decoder_start_token_id: int | None) -> Steps:
    """One row of speculative decoding; `decoder_start_token_id` is given for encoder-decoder models,
    whose decoders then run on the encoded input as a decoder-only pair."""
    from .speculative import Seq2SeqDecoder, check_speculative, self_draft, speculative_tokens

    if isinstance(draft, int) and not isinstance(draft, bool):
        draft = self_draft(model, draft)
    elif not isinstance(draft, str) and (not hasattr(draft, "config") or not callable(draft)):
        raise ArchError("draft must be a compiled model, a number of the model's own leading layers, or 'mtp'",
                        kind="usage")
    check_speculative(model, draft, input_ids, draft_tokens)
    probs = None if temperature <= 0 else (lambda logits: distribution(logits, temperature, top_k, top_p))
    if decoder_start_token_id is not None:  # the decoders follow the start token
        start = prompt = torch.full((1, 1), decoder_start_token_id, dtype=torch.long, device=input_ids.device)
    else:  # one row: its padding is dropped, and the prompt given back as it came
        start, prompt = input_ids, input_ids if mask is None else input_ids[:, int((mask == 0).sum()):]

    def steps():
        modes = [(m, m.training) for m in ((model,) if isinstance(draft, str) else (model, draft))]
        with contextlib.ExitStack() as stack:
            for m, _ in modes:
                m.eval()
                stack.enter_context(depth_routing(m, "causal"))
            target, drafter = model, draft
            if decoder_start_token_id is not None:  # each model encodes the input once, in eval mode
                target, drafter = Seq2SeqDecoder(model, input_ids, mask), Seq2SeqDecoder(draft, input_ids, mask)
            try:
                for token in speculative_tokens(target, drafter, prompt, max_new_tokens, draft_tokens=draft_tokens,
                                                distribution=probs, generator=generator, stop=stop, stats=stats):
                    yield torch.tensor([token], device=input_ids.device)
            finally:
                for m, training in modes:
                    m.train(training)

    return Steps(start, steps())
