"""The MoE expert matmul in Triton: rows already sorted by expert (group e is rows
offs[e]..offs[e+1]) times that expert's weight, for all experts in one launch. Forward and both
backward products (rows and weights) are grouped GEMMs; no loop over experts, no padding.
Reference: `reference.grouped_matmul`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers
from .attention import dot_precision


@triton.jit
def _gmm(X, W, Y, OFFS, K, N, sw_e, sw_n, sw_k,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr):
    """Y[rows of e] = X[rows of e] @ W[e]^T, W[e] read through strides (so W or W^T)."""
    e, pid_m, pid_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(OFFS + e)
    end = tl.load(OFFS + e + 1)
    rows = start + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if start + pid_m * BLOCK_M < end:
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(X + rows[:, None] * K + ks[None, :], mask=(rows[:, None] < end) & (ks[None, :] < K), other=0.0)
            w = tl.load(W + e * sw_e + cols[None, :] * sw_n + ks[:, None] * sw_k,
                        mask=(cols[None, :] < N) & (ks[:, None] < K), other=0.0)
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision=DOT)
        tl.store(Y + rows[:, None] * N + cols[None, :], acc, mask=(rows[:, None] < end) & (cols[None, :] < N))


@triton.jit
def _gmm_wgrad(DY, X, DW, OFFS, K, N, max_rows,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr):
    """DW[e] = DY[rows of e]^T @ X[rows of e]: (N, K) per expert."""
    e, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(OFFS + e)
    end = tl.load(OFFS + e + 1)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for m0 in range(0, max_rows, BLOCK_M):
        rows = start + m0 + tl.arange(0, BLOCK_M)
        mrow = rows < end
        dy = tl.load(DY + rows[:, None] * N + ns[None, :], mask=mrow[:, None] & (ns[None, :] < N), other=0.0)
        x = tl.load(X + rows[:, None] * K + ks[None, :], mask=mrow[:, None] & (ks[None, :] < K), other=0.0)
        acc += tl.dot(tl.trans(dy.to(tl.float32)), x.to(tl.float32), input_precision=DOT)
    tl.store(DW + e * N * K + ns[:, None] * K + ks[None, :], acc, mask=(ns[:, None] < N) & (ks[None, :] < K))


BLOCK = 16


def _forward(x, weight, offs, max_rows, transpose: bool):
    """x (M, K) grouped, weight (E, N, K) → x @ weight[e]^T; transpose: weight (E, K, N) → x @ weight[e]."""
    experts = weight.shape[0]
    k = x.shape[1]
    if transpose:  # weight[e] is (K, N): read element (n, k) at k * N + n
        n = weight.shape[2]
        strides = (weight.stride(0), weight.stride(2), weight.stride(1))
    else:
        n = weight.shape[1]
        strides = (weight.stride(0), weight.stride(1), weight.stride(2))
    y = buffers.empty(x.shape[0], n, dtype=torch.float32, device=x.device)
    grid = (experts, max(1, triton.cdiv(max_rows, BLOCK)), triton.cdiv(n, BLOCK))
    _gmm[grid](x, weight, y, offs, k, n, *strides, BLOCK_M=BLOCK, BLOCK_N=BLOCK, BLOCK_K=BLOCK,
               DOT=dot_precision(x.dtype))
    return y


class GroupedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, counts):
        x, weight = x.contiguous(), weight.contiguous()
        offs = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=x.device)
        offs[1:] = torch.cumsum(counts, 0)
        max_rows = int(counts.max()) if counts.numel() else 0
        ctx.save_for_backward(x, weight, offs)
        ctx.max_rows = max_rows
        return _forward(x, weight, offs, max_rows, transpose=False).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, offs = ctx.saved_tensors
        dy = dy.contiguous()
        dx = _forward(dy, weight, offs, ctx.max_rows, transpose=True).to(x.dtype)  # dy @ W[e]
        experts, n, k = weight.shape
        dw = buffers.empty(experts, n, k, dtype=torch.float32, device=x.device)
        _gmm_wgrad[(experts, triton.cdiv(n, BLOCK), triton.cdiv(k, BLOCK))](
            dy, x, dw, offs, k, n, ctx.max_rows, BLOCK_M=BLOCK, BLOCK_N=BLOCK, BLOCK_K=BLOCK, DOT=dot_precision(x.dtype))
        return dx, dw.to(weight.dtype), None


def grouped_matmul(x, weight, counts, expert_of=None):
    """Same contract as `reference.grouped_matmul`."""
    return GroupedMatmul.apply(x, weight, counts)
