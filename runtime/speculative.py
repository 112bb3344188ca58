"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a cheap draft proposes k
tokens, the target model checks all of them in one forward, and every token it agrees with
costs no forward of its own.

Greedy: a draft token is kept while it equals the target's argmax, then the target's own token
follows, so the output is token for token that of plain greedy decoding. Sampling: draft token
x ~ q is kept with probability min(1, p(x) / q(x)); at the first rejection the next token is
drawn from norm(max(0, p - q)), and after k acceptances from p, so every token follows the
target's distribution p exactly (with temperature, top-k and top-p applied to both p and q).

The draft is another compiled model with the same vocabulary, the target's own first layers
(self-speculation: `draft = 4` runs layers 0..3, then the final norm and the head), or the
target's multi-token prediction modules (`draft = "mtp"`: up to one token per depth). An
encoder-decoder model drafts with another encoder-decoder model; each encodes the input once and
their decoders run as a decoder-only pair would (`Seq2SeqDecoder`). Caches roll back past rejected tokens (`Cache.rollback`): attention caches are cut, recurrent states
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
    family = target.config["family"]
    if family not in ("decoder", "encoder_decoder") or draft.config["family"] != family:
        raise ArchError(f"the draft's family is {draft.config['family']} and the target's {family}: "
                        "speculative decoding takes a decoder with a decoder draft, or an encoder-decoder model "
                        "with an encoder-decoder draft", kind="usage", hint="draft with a model of the target's family")
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


def check_speculative(target: nn.Module, draft: nn.Module | str, input_ids: torch.Tensor, draft_tokens: int) -> None:
    """Refuse, before any forward, what speculative decoding does not do."""
    if isinstance(draft, str):
        if draft != "mtp":
            raise ArchError(f"unknown draft {draft!r}", kind="usage",
                            hint="draft = 'mtp', a compiled model, or a number of the model's leading layers")
        check_mtp_draft(target)
    else:
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


class Seq2SeqDecoder:
    """An encoder-decoder model's decoder on one encoded input, called as a decoder-only model is
    (`(tokens, cache=, logits_to_keep=)`): the encoder runs once, here."""

    def __init__(self, model: nn.Module, encoder_input_ids: torch.Tensor, encoder_mask: torch.Tensor | None):
        self.model, self.config, self.mask = model, model.config, encoder_mask
        with torch.no_grad():
            self.memory = model.encode(encoder_input_ids, encoder_mask)

    def __call__(self, tokens: torch.Tensor, *, cache: Cache, logits_to_keep: int) -> torch.Tensor:
        return self.model(tokens, memory=self.memory, encoder_mask=self.mask, cache=cache)[:, -logits_to_keep:]


class _ModelDrafter:
    """Drafts with another model (or the target's first layers) and its own cache. It is fed
    lazily: `pending` holds the settled tokens it has not seen yet."""

    def __init__(self, draft: nn.Module, prompt: list[int], dist, pick):
        self.model, self.dist, self.pick = draft, dist, pick
        self.cache, self.pending = Cache(), list(prompt)

    def start(self) -> None:
        """The target has read the prompt (nothing to take from it: the draft reads it itself)."""

    def close(self) -> None:
        """Nothing to release."""

    def propose(self, nxt: int, k: int, device) -> tuple[list[int], list[torch.Tensor]]:
        self.snap = self.cache.snapshot()
        feed, drafted, q = self.pending + [nxt], [], []
        for _ in range(k):
            probs = self.dist(_forward(self.model, torch.tensor([feed], device=device), self.cache, 1))[0]
            drafted.append(int(self.pick(probs)))
            q.append(probs)
            feed = [drafted[-1]]
        self.fed = len(self.pending) + k  # pending, nxt and the first k - 1 drafted tokens
        return drafted, q

    def settle(self, kept: list[int], device) -> None:
        """The target kept `kept` (nxt and the accepted drafts): keep what the draft saw of them."""
        seen = min(self.fed, len(self.pending) + len(kept))
        if not self.cache.rollback(self.snap, seen):
            _forward(self.model, torch.tensor([(self.pending + kept)[:seen]], device=device), self.cache, 1)
        self.pending = (self.pending + kept)[seen:]


class _MTPDrafter:
    """Drafts with the target's own multi-token prediction modules (DeepSeek-V3 §2.2): after the
    target's forward has settled token t + 1, depth 1 reads its hidden state h_t and the embedding
    of t + 1 and predicts t + 2; depth k reads depth k - 1 and the token k ahead. Up to `depth`
    tokens per target forward.

    Each depth keeps a cache of the positions whose inputs are settled (`h` its hidden states
    there); a round feeds it the rest up to t, with drafted tokens where settled ones do not
    exist yet, and then forgets those (cut back, or restored and fed the settled part again).
    The target's depth-0 hidden states are read off the input of its final norm."""

    def __init__(self, target: nn.Module, prompt: list[int], dist, pick):
        self.model, self.dist, self.pick = target, dist, pick
        self.tokens = list(prompt)  # the settled sequence
        depth = len(target.mtp)
        self.caches = [Cache() for _ in range(depth)]
        self.h: list[torch.Tensor | None] = [None] * (depth + 1)  # h[0]: the target's; h[k]: depth k's
        self.seen: torch.Tensor | None = None
        self.hook = target.final_norm.register_forward_pre_hook(self._see)

    def _see(self, module, args) -> None:
        self.seen = args[0].detach()

    def close(self) -> None:
        self.hook.remove()

    def _settled(self, n: int) -> None:
        """The target's last forward fed n settled tokens: keep their hidden states."""
        new = self.seen[0, :n]
        self.h[0] = new if self.h[0] is None else torch.cat([self.h[0], new])

    def start(self) -> None:
        """The target has read the prompt: keep its hidden states."""
        self._settled(len(self.tokens))

    @torch.no_grad()
    def propose(self, nxt: int, k: int, device) -> tuple[list[int], list[torch.Tensor]]:
        self.tokens.append(nxt)
        t = len(self.h[0]) - 1  # the target has hidden states for positions 0 .. t
        drafted: list[int] = []
        q: list[torch.Tensor] = []
        below = self.h[0]  # depth k - 1 at positions 0 .. t
        for k_ in range(1, min(k, len(self.caches)) + 1):
            cache, done = self.caches[k_ - 1], self._count(k_)
            ahead = (self.tokens + drafted)[done + k_: t + k_ + 1]  # the tokens k ahead of positions done .. t
            snap = cache.snapshot()
            h, logits = self.model.mtp_step(k_, below[None, done:], torch.tensor([ahead], device=device), cache)
            probs = self.dist(logits[0, -1].float())
            drafted.append(int(self.pick(probs)))
            q.append(probs)
            settled = t + 2 - k_  # positions 0 .. t + 1 - k have settled inputs
            if not cache.rollback(snap, settled - done):
                if settled > done:
                    self.model.mtp_step(k_, below[None, done:settled],
                                        torch.tensor([ahead[:settled - done]], device=device), cache)
            below = h[0] if done == 0 else torch.cat([self.h[k_][:done], h[0]])
            self.h[k_] = below[:settled]
        return drafted, q

    def _count(self, k: int) -> int:
        return 0 if self.h[k] is None else len(self.h[k])

    def settle(self, kept: list[int], device) -> None:
        self.tokens.extend(kept[1:])  # nxt is in already
        self._settled(len(kept))


def check_mtp_draft(target: nn.Module) -> None:
    if not hasattr(target, "mtp_step"):
        raise ArchError(f"`{target.config['name']}` has no multi-token prediction modules to draft with",
                        kind="usage", hint="add mtp = mtp(depth = ...) to the spec, or pass another draft")


def speculative_tokens(target: nn.Module, draft: nn.Module | str, input_ids: torch.Tensor, max_new_tokens: int, *,
                       draft_tokens: int, distribution, generator: torch.Generator | None,
                       stop: torch.Tensor | None, stats: dict | None = None) -> Iterator[int]:
    """The tokens speculative decoding makes, one at a time as they are settled (several per
    target forward); `stats` is filled when the generation ends. `draft = "mtp"` drafts with the
    target's own multi-token prediction modules."""
    greedy = distribution is None

    def pick(probs_or_logits: torch.Tensor) -> torch.Tensor:
        if greedy:
            return probs_or_logits.argmax(-1)
        return torch.multinomial(probs_or_logits, 1, generator=generator).squeeze(-1)

    def dist(logits: torch.Tensor) -> torch.Tensor:
        return logits if greedy else distribution(logits)

    device = input_ids.device
    prompt = input_ids.shape[1]
    made: list[int] = []
    if draft == "mtp":
        drafter = _MTPDrafter(target, input_ids[0].tolist(), dist, pick)
    else:
        drafter = _ModelDrafter(draft, input_ids[0].tolist(), dist, pick)
    t_cache = Cache()
    target_forwards = proposed = accepted = 0
    try:
        nxt = int(pick(dist(_forward(target, input_ids, t_cache, 1))[0]))
        target_forwards += 1
        drafter.start()

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
            drafted, q = drafter.propose(nxt, k, device)
            k = len(drafted)
            # the target checks them all at once: its distributions after nxt, d1, ..., dk
            t_snap = t_cache.snapshot()
            p = dist(_forward(target, torch.tensor([[nxt] + drafted], device=device), t_cache, k + 1))  # (k + 1, V)
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
            kept = [nxt] + drafted[:n]  # the target keeps nxt and the accepted tokens
            if not t_cache.rollback(t_snap, n + 1):
                _forward(target, torch.tensor([kept], device=device), t_cache, 1)
                target_forwards += 1
            drafter.settle(kept, device)
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
    finally:
        drafter.close()
    if stats is not None:
        stats.update(target_forwards=target_forwards, draft_tokens_proposed=proposed, draft_tokens_accepted=accepted,
                     acceptance_rate=accepted / proposed if proposed else 0.0,
                     tokens_per_target_forward=len(made) / target_forwards)
