"""Fused LM head + cross-entropy for training: the loss of `hidden @ weight.T` against targets
without ever holding the full (tokens x vocab) logits. Rows are processed in chunks; for each
chunk the logits are formed, a Triton kernel turns them in place into the loss and the gradient
of the logits (softmax - onehot, through an optional tanh soft-cap), and the gradients of the
hidden states and the weight are accumulated. The backward only scales them. Reference:
`reference.linear_cross_entropy`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers

CHUNK_ROWS = 1024


@triton.jit
def _ce_rows(LOGITS, TARGET, LOSS, V, scale, softcap, ignore_index,
             SOFTCAP: tl.constexpr, BLOCK: tl.constexpr):
    """Per row: loss = logsumexp(z) - z[target], and logits ← d loss / d logits (times `scale`)."""
    row = tl.program_id(0)
    base = LOGITS + row.to(tl.int64) * V
    target = tl.load(TARGET + row)
    # pass 1: running max and sum of exp
    m = float("-inf")
    d = 0.0
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
        if SOFTCAP:
            z = softcap * (2.0 / (1.0 + tl.exp(-2.0 * z / softcap)) - 1.0)
        z = tl.where(cols < V, z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(d)
    valid = target != ignore_index
    z_target = 0.0
    # pass 2: gradient in place, and the target's logit
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        raw = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        z = raw
        t = raw
        if SOFTCAP:
            t = 2.0 / (1.0 + tl.exp(-2.0 * raw / softcap)) - 1.0
            z = softcap * t
        z_target += tl.sum(tl.where(cols == target, z, 0.0), axis=0)
        grad = tl.exp(z - lse) - tl.where(cols == target, 1.0, 0.0)
        if SOFTCAP:
            grad = grad * (1.0 - t * t)
        grad = tl.where(valid, grad * scale, 0.0)
        tl.store(base + cols, grad, mask=mask)
    tl.store(LOSS + row, tl.where(valid, lse - z_target, 0.0))


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, ignore_index, softcap):
        n, vocab = hidden.shape[0], weight.shape[0]
        count = max(int((target != ignore_index).sum()), 1)
        loss = buffers.empty(n, dtype=torch.float32, device=hidden.device)
        grad_hidden = buffers.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        block = min(4096, triton.next_power_of_2(vocab))
        for start in range(0, n, CHUNK_ROWS):
            h = hidden[start:start + CHUNK_ROWS]
            logits = (h.float() @ weight.float().t()).contiguous()  # (chunk, V): the only logits in memory
            _ce_rows[(h.shape[0],)](logits, target[start:start + CHUNK_ROWS].contiguous(), loss[start:start + CHUNK_ROWS],
                                    vocab, 1.0 / count, softcap or 1.0, ignore_index,
                                    SOFTCAP=softcap is not None, BLOCK=block)
            grad_hidden[start:start + CHUNK_ROWS] = (logits @ weight.float()).to(hidden.dtype)
            grad_weight += logits.t() @ h.float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss.sum() / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None


def linear_cross_entropy(hidden, weight, target, *, ignore_index: int = -100, softcap: float | None = None):
    """Mean cross-entropy of `hidden (N, d) @ weight.T (V, d)` against `target (N,)`."""
    return LinearCrossEntropy.apply(hidden.contiguous(), weight, target.contiguous(), ignore_index, softcap)
