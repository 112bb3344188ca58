"""MoE routing in Triton: for each token, the router probabilities (softmax or sigmoid over the
expert logits), the top-k experts and their weights (renormalised to sum to 1 when asked, then
scaled), in one pass over the logits. Returns the same as `reference.route`; the token
permutation that follows is an argsort by expert, and the experts run as one grouped matmul
(`grouped_matmul.py`).

DeepSeek's routing is done here too: a per-expert correction bias that moves the choice but not
the weights (V3), and group-limited top-k, where the experts form `n_group` equal groups, each
group is scored by the sum of its two best choice scores (V3) or its best one (V2), and the top-k
are taken within the best `topk_group` groups. A token's experts are one (groups, experts per
group) tile, so each group's score is a reduction along the tile's second axis.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers


@triton.jit
def _argmax_first(values, ids, BIG: tl.constexpr):
    """The largest value and its lowest id: torch.topk's choice among equal scores."""
    best = tl.max(values, axis=0)
    return best, tl.min(tl.where(values == best, ids, BIG), axis=0)


@triton.jit
def _route(LOGITS, BIAS, PROBS, WEIGHTS, INDEX, E, S, G, K, KG, scale, norm_min,
           SIGMOID: tl.constexpr, NORMALIZE: tl.constexpr, HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr,
           TOP2_SUM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    g = tl.arange(0, BLOCK_G)
    s = tl.arange(0, BLOCK_S)
    experts = g[:, None] * S + s[None, :]  # (groups, experts per group) → expert id
    mask = (g[:, None] < G) & (s[None, :] < S)
    BIG: tl.constexpr = BLOCK_G * BLOCK_S
    z = tl.load(LOGITS + row * E + experts, mask=mask, other=float("-inf")).to(tl.float32)
    if SIGMOID:
        p = 1.0 / (1.0 + tl.exp(-z))
    else:
        e = tl.exp(z - tl.max(tl.max(z, axis=1), axis=0))
        e = tl.where(mask, e, 0.0)
        p = e / tl.sum(tl.sum(e, axis=1), axis=0)
    p = tl.where(mask, p, 0.0)
    tl.store(PROBS + row * E + experts, p, mask=mask)

    choice = p
    if HAS_BIAS:  # the bias moves the choice only; the weights stay the plain scores
        choice += tl.load(BIAS + experts, mask=mask, other=0.0).to(tl.float32)
    choice = tl.where(mask, choice, float("-inf"))

    if GROUPED:
        first = tl.max(choice, axis=1)  # (groups,)
        if TOP2_SUM:  # remove each group's best (its lowest id among equals) once, take the next
            first_at = tl.min(tl.where(choice == first[:, None], s[None, :], BLOCK_S), axis=1)
            second = tl.max(tl.where(s[None, :] == first_at[:, None], float("-inf"), choice), axis=1)
            group_score = first + second
        else:
            group_score = first
        group_score = tl.where(g < G, group_score, float("-inf"))
        kept = g < 0  # all false
        for j in range(0, KG):
            best, at = _argmax_first(group_score, g, BLOCK_G)
            kept = kept | (g == at)
            group_score = tl.where(g == at, float("-inf"), group_score)
        choice = tl.where(kept[:, None], choice, float("-inf"))

    ks = tl.arange(0, BLOCK_K)
    chosen_w = tl.zeros((BLOCK_K,), tl.float32)
    chosen_i = tl.zeros((BLOCK_K,), tl.int32)
    remaining = choice
    for j in range(0, K):  # k rounds of argmax; ties go to the lower expert index, as torch.topk
        best = tl.max(tl.max(remaining, axis=1), axis=0)
        idx = tl.min(tl.min(tl.where(remaining == best, experts, BIG), axis=1), axis=0)
        weight = tl.sum(tl.sum(tl.where(experts == idx, p, 0.0), axis=1), axis=0)
        chosen_w = tl.where(ks == j, weight, chosen_w)
        chosen_i = tl.where(ks == j, idx, chosen_i)
        remaining = tl.where(experts == idx, float("-inf"), remaining)
    kmask = ks < K
    if NORMALIZE:
        chosen_w = chosen_w / tl.maximum(tl.sum(tl.where(kmask, chosen_w, 0.0), axis=0), norm_min)
    tl.store(WEIGHTS + row * K + ks, chosen_w * scale, mask=kmask)
    tl.store(INDEX + row * K + ks, chosen_i, mask=kmask)


def route(logits: torch.Tensor, top_k: int, *, sigmoid: bool, normalize: bool, scale: float,
          correction_bias: torch.Tensor | None = None, n_group: int = 1, topk_group: int = 1,
          group_score: str = "top2_sum", normalize_min: float = 0.0):
    """(probs (N, E), weights (N, k), index (N, k)) for router logits (N, E), float32; the
    keywords as `reference.route`. When the logits need gradients, the kernel makes the choice
    (which has none) and the weights are gathered again from differentiable scores."""
    if torch.is_grad_enabled() and logits.requires_grad:
        _, _, index = route(logits.detach(), top_k, sigmoid=sigmoid, normalize=normalize, scale=scale,
                            correction_bias=correction_bias, n_group=n_group, topk_group=topk_group,
                            group_score=group_score)
        probs = torch.sigmoid(logits.float()) if sigmoid else torch.softmax(logits.float(), dim=-1)
        weights = probs.gather(1, index)
        if normalize:
            total = weights.sum(dim=-1, keepdim=True)
            weights = weights / (total.clamp(min=normalize_min) if normalize_min else total)
        return probs, weights * scale, index
    logits = logits.float().contiguous()
    n, e = logits.shape
    if e % n_group or not 1 <= topk_group <= n_group or top_k > topk_group * (e // n_group):
        raise ValueError(f"cannot choose {top_k} of {e} experts in {topk_group} of {n_group} groups")
    if group_score not in ("top2_sum", "max"):
        raise ValueError(f"unknown group_score {group_score!r}")
    per_group = e // n_group
    if n_group > 1 and group_score == "top2_sum" and per_group < 2:
        raise ValueError("top2_sum group scores need at least 2 experts per group")
    probs = buffers.empty(n, e, dtype=torch.float32, device=logits.device)
    weights = buffers.empty(n, top_k, dtype=torch.float32, device=logits.device)
    index = torch.empty(n, top_k, dtype=torch.int32, device=logits.device)
    bias = correction_bias.float().contiguous() if correction_bias is not None else logits
    _route[(n,)](logits, bias, probs, weights, index, e, per_group, n_group, top_k, topk_group, scale, normalize_min,
                 SIGMOID=sigmoid, NORMALIZE=normalize, HAS_BIAS=correction_bias is not None, GROUPED=n_group > 1,
                 TOP2_SUM=group_score == "top2_sum", BLOCK_G=triton.next_power_of_2(n_group),
                 BLOCK_S=triton.next_power_of_2(per_group), BLOCK_K=triton.next_power_of_2(top_k))
    return probs, weights, index.long()
