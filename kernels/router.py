"""MoE routing in Triton: for each token, the router probabilities (softmax or sigmoid over the
expert logits), the top-k experts and their weights (renormalised to sum to 1 when asked, then
scaled), in one pass over the logits. Returns the same as `reference.route`; the token
permutation that follows is an argsort by expert, and the experts run as one grouped matmul
(`grouped_matmul.py`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers


@triton.jit
def _route(LOGITS, PROBS, WEIGHTS, INDEX, E, K, scale,
           SIGMOID: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_E)
    mask = cols < E
    z = tl.load(LOGITS + row * E + cols, mask=mask, other=float("-inf")).to(tl.float32)
    if SIGMOID:
        p = tl.where(mask, 1.0 / (1.0 + tl.exp(-z)), -1.0)
    else:
        e = tl.exp(z - tl.max(z, axis=0))
        p = tl.where(mask, e / tl.sum(tl.where(mask, e, 0.0), axis=0), -1.0)
    tl.store(PROBS + row * E + cols, p, mask=mask)
    ks = tl.arange(0, BLOCK_K)
    chosen_w = tl.zeros((BLOCK_K,), tl.float32)
    chosen_i = tl.zeros((BLOCK_K,), tl.int32)
    remaining = p
    for j in range(0, K):  # k rounds of argmax; ties go to the lower expert index, as torch.topk
        best = tl.max(remaining, axis=0)
        idx = tl.min(tl.where(remaining == best, cols, BLOCK_E), axis=0)
        chosen_w = tl.where(ks == j, best, chosen_w)
        chosen_i = tl.where(ks == j, idx, chosen_i)
        remaining = tl.where(cols == idx, -2.0, remaining)
    kmask = ks < K
    if NORMALIZE:
        chosen_w = chosen_w / tl.sum(tl.where(kmask, chosen_w, 0.0), axis=0)
    tl.store(WEIGHTS + row * K + ks, chosen_w * scale, mask=kmask)
    tl.store(INDEX + row * K + ks, chosen_i, mask=kmask)


def route(logits: torch.Tensor, top_k: int, *, sigmoid: bool, normalize: bool, scale: float):
    """(probs (N, E), weights (N, k), index (N, k)) for router logits (N, E), float32."""
    logits = logits.float().contiguous()
    n, e = logits.shape
    probs = buffers.empty(n, e, dtype=torch.float32, device=logits.device)
    weights = buffers.empty(n, top_k, dtype=torch.float32, device=logits.device)
    index = torch.empty(n, top_k, dtype=torch.int32, device=logits.device)
    _route[(n,)](logits, probs, weights, index, e, top_k, scale, SIGMOID=sigmoid, NORMALIZE=normalize,
                 BLOCK_E=triton.next_power_of_2(e), BLOCK_K=triton.next_power_of_2(top_k))
    return probs, weights, index.long()
