"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a cheap draft proposes k
tokens, the target model checks all of them in one forward, and every token it agrees with
costs no forward of its own.

Greedy: a draft token is kept while it equals the target's argmax, then the target's own token
follows, so the output is token for token that of plain greedy decoding. Sampling: draft token
x ~ q is kept with probability min(1, p(x) / q(x)); at the first rejection the next token is
drawn from norm(max(0, p - q)), and after k acceptances from p, so every token follows the
target's distribution p exactly (with temperature, top-k and top-p applied to both p and q).

The draft is another compiled model with the same vocabulary, or the target's own first layers
(self-speculation: `draft = 4` runs layers 0..3, then the final norm and the head). Both caches
roll back past rejected tokens (`Cache.rollback`): attention caches are cut, recurrent states
are restored and the kept tokens fed again. One sequence at a time: rows of a batch would
accept different numbers of tokens.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn

from archlang.spec.errors import ArchError

from .context import Cache


def self_draft(model: nn.Module, layers: int) -> nn.Module:
    """The model cut after its first `layers` layers: the same weights (no copy), its own final
    norm and head on top."""
    stack = getattr(model, "layers", None)
    if model.config["family"] != "decoder" or not isinstance(stack, nn.ModuleList):
        raise ArchError("self-speculation drafts with a decoder model's first layers", kind="usage",
                        hint="pass another compiled model as the draft")
    if not 1 <= layers < len(stack):
        raise ArchError(f"a self-speculation draft takes 1 to {len(stack) - 1} of the {len(stack)} layers, not {layers}",
                        kind="usage", hint="pass draft = the number of leading layers to run")
    draft = copy.copy(model)  # shares parameters and buffers; only the layer list differs
    draft._modules = dict(model._modules)
    draft._modules["layers"] = nn.ModuleList(stack[:layers])
    return draft


def _check_draft(target: nn.Module, draft: nn.Module) -> None:
    if target.config["family"] != "decoder" or draft.config["family"] != "decoder":
        raise ArchError("speculative decoding is implemented for decoder models", kind="usage",
                        hint="generate without draft=")
    if draft.config["vocab"] != target.config["vocab"]:
        raise ArchError(f"the draft's vocabulary ({draft.config['vocab']}) is not the target's "
                        f"({target.config['vocab']})", kind="usage", hint="draft with a model of the same tokenizer")


def accept_or_correct(p: torch.Tensor, q: torch.Tensor, token: int, generator: torch.Generator | None
                      ) -> tuple[bool, int | None]:
    """The sampling rule for one draft token x ~ q: keep it with probability min(1, p(x) / q(x));
    else the replacement, drawn from norm(max(0, p - q)). The kept-or-replaced token is
    distributed as p."""
    ratio = (p[token] / q[token].clamp_min(1e-30)).clamp(max=1.0)
    if bool(torch.rand((), generator=generator, device=p.device) < ratio):
        return True, None
    residual = (p - q).clamp_min(0)
    total = residual.sum()
    # p == q leaves nothing to correct for (and a rejection has probability 0); p is the answer
    residual = residual / total if total > 0 else p
    return False, int(torch.multinomial(residual, 1, generator=generator).squeeze(-1))


@torch.no_grad()
def _forward(model: nn.Module, tokens: torch.Tensor, cache: Cache, keep: int) -> torch.Tensor:
    return model(tokens, cache=cache, logits_to_keep=keep)[0].float()  # (keep, V)


def check_speculative(target: nn.Module, draft: nn.Module, input_ids: torch.Tensor, draft_tokens: int) -> None:
    """Refuse, before any forward, what speculative decoding does not do."""
    _check_draft(target, draft)
    if input_ids.shape[0] != 1:
        raise ArchError(f"speculative decoding takes one sequence at a time, got a batch of {input_ids.shape[0]}",
                        kind="usage", hint="generate the rows one by one, or without draft=")
    if draft_tokens < 1:
        raise ArchError("draft_tokens must be at least 1", kind="usage")


def speculative_decode(target: nn.Module, draft: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
                       draft_tokens: int, distribution, generator: torch.Generator | None,
                       stop: torch.Tensor | None, stats: dict | None = None) -> torch.Tensor:
    """Prompt + up to max_new_tokens tokens of `target` (one row). `distribution(logits)` gives
    the processed probabilities (None: greedy); `stop` holds the end-of-sequence ids."""
    check_speculative(target, draft, input_ids, draft_tokens)
    made = list(speculative_tokens(target, draft, input_ids, max_new_tokens, draft_tokens=draft_tokens,
                                   distribution=distribution, generator=generator, stop=stop, stats=stats))
    return torch.tensor([input_ids[0].tolist() + made], dtype=input_ids.dtype, device=input_ids.device)


def speculative_tokens(target: nn.Module, draft: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
                       draft_tokens: int, distribution, generator: torch.Generator | None,
                       stop: torch.Tensor | None, stats: dict | None = None) -> Iterator[int]:
    """The tokens speculative decoding makes, one at a time as they are settled (several per
    target forward); `stats` is filled when the generation ends."""
    greedy = distribution is None

    def pick(probs_or_logits: torch.Tensor) -> torch.Tensor:
        if greedy:
            return probs_or_logits.argmax(-1)
        return torch.multinomial(probs_or_logits, 1, generator=generator).squeeze(-1)

    def dist(logits: torch.Tensor) -> torch.Tensor:
        return logits if greedy else distribution(logits)

    prompt = input_ids.shape[1]
    made: list[int] = []
    t_cache, d_cache = Cache(), Cache()
    target_forwards = proposed = accepted = 0
    nxt = int(pick(dist(_forward(target, input_ids, t_cache, 1))[0]))
    target_forwards += 1
    pending = input_ids[0].tolist()  # tokens the draft's cache has not seen

    def ends(token: int) -> bool:
        made.append(token)
        return (stop is not None and token in stop.tolist()) or len(made) >= max_new_tokens

    done = ends(nxt)
    yield nxt
    while not done:
        # the check feeds nxt and k drafts after the prompt + len(made) - 1 tokens already fed
        k = min(draft_tokens, max_new_tokens - len(made), target.config["context"] - prompt - len(made))
        if k < 1:
            break
        # the draft proposes k tokens, from what it has not seen yet
        d_snap = d_cache.snapshot()
        feed, drafted, q = pending + [nxt], [], []
        for _ in range(k):
            probs = dist(_forward(draft, torch.tensor([feed], device=input_ids.device), d_cache, 1))[0]
            token = int(pick(probs))
            drafted.append(token)
            q.append(probs)
            feed = [token]
        d_fed = len(pending) + k  # pending, nxt and the first k - 1 drafted tokens
        # the target checks them all at once: its distributions after nxt, d1, ..., dk
        t_snap = t_cache.snapshot()
        chain = torch.tensor([[nxt] + drafted], device=input_ids.device)
        p = dist(_forward(target, chain, t_cache, k + 1))  # (k + 1, V)
        target_forwards += 1
        proposed += k
        n = 0
        bonus = None
        for i, token in enumerate(drafted):
            if greedy:
                ok, correction = int(p[i].argmax()) == token, int(p[i].argmax())
            else:
                ok, correction = accept_or_correct(p[i], q[i], token, generator)
            if not ok:
                bonus = correction
                break
            n += 1
        if bonus is None:
            bonus = int(pick(p[k]))
        accepted += n
        # the target keeps nxt and the accepted tokens; the draft what it saw of them
        kept = [nxt] + drafted[:n]
        if not t_cache.rollback(t_snap, n + 1):
            _forward(target, torch.tensor([kept], device=input_ids.device), t_cache, 1)
            target_forwards += 1
        seen = min(d_fed, len(pending) + n + 1)
        if not d_cache.rollback(d_snap, seen):
            _forward(draft, torch.tensor([(pending + kept)[:seen]], device=input_ids.device), d_cache, 1)
        pending = (pending + kept)[seen:]
        for token in drafted[:n]:
            done = ends(token)
            yield token
            if done:
                break
        if done:
            break
        nxt = bonus
        done = ends(nxt)
        yield nxt
    if stats is not None:
        stats.update(target_forwards=target_forwards, draft_tokens_proposed=proposed, draft_tokens_accepted=accepted,
                     acceptance_rate=accepted / proposed if proposed else 0.0,
                     tokens_per_target_forward=len(made) / target_forwards)
