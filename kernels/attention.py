"""FlashAttention-style attention in Triton: tiled, online softmax, no T x S matrix in memory.

Causal or bidirectional, masks from absolute positions (so a cached decode step works), sliding
windows (with StreamingLLM's sink tokens kept visible), chunked attention (Llama 4), grouped /
multi-query heads read straight from the shared K/V (no repeat), soft-capping of the scores, an
additive bias (ALiBi, T5 buckets) given as an (H, T, S) tensor, and learned per-head sink logits
(gpt-oss) in the softmax denominator. Forward and backward (FlashAttention-2: the backward
recomputes the scores from the saved log-sum-exp). The reference is `reference.attention`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import buffers

# Small tiles keep the CPU interpreter fast in tests; real GPUs get larger ones.
BLOCK = 16 if os.environ.get("TRITON_INTERPRET") == "1" else 64


@triton.jit
def _tile(ptr, rows, row_stride, offs_d, row_valid, d_valid):
    """A (rows x head_dim) tile in float32; rows past the end and padding channels read as 0."""
    return tl.load(ptr + rows[:, None] * row_stride + offs_d[None, :],
                   mask=row_valid[:, None] & d_valid[None, :], other=0.0).to(tl.float32)


@triton.jit
def _scores(q, k, qpos, kpos, k_valid, bias_ptrs, scale, softcap, window, chunk, sink_tokens,
            CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr,
            CHUNK: tl.constexpr, SINK_TOKENS: tl.constexpr, bias_mask, DOT: tl.constexpr):
    """Masked scores of one tile, and the raw tanh used by the soft-cap's derivative."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT) * scale
    t = s
    if SOFTCAP:
        t = 2.0 / (1.0 + tl.exp(-2.0 * s / softcap)) - 1.0  # tanh(s / softcap)
        s = softcap * t
    if HAS_BIAS:
        s += tl.load(bias_ptrs, mask=bias_mask, other=0.0).to(tl.float32)
    allowed = k_valid[None, :]
    rel = qpos[:, None] - kpos[None, :]
    if CAUSAL:
        allowed = allowed & (rel >= 0)
    if WINDOW:
        near = tl.abs(rel) < window
        if SINK_TOKENS:
            near = near | (kpos[None, :] < sink_tokens)
        allowed = allowed & near
    if CHUNK:
        allowed = allowed & ((qpos[:, None] // chunk) == (kpos[None, :] // chunk))
    s = tl.where(allowed, s, float("-inf"))
    return s, t


@triton.jit
def _probs_and_grads(q, k, v, do, lse, delta, qpos, kpos, m_valid, n_valid, bias_ptrs, scale, softcap, window,
                     chunk, sink_tokens, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                     HAS_BIAS: tl.constexpr, CHUNK: tl.constexpr, SINK_TOKENS: tl.constexpr, DOT: tl.constexpr):
    """A tile's probabilities, recomputed from the saved log-sum-exp, and the gradient of its raw
    scores (through the soft-cap): what both backward kernels need."""
    s, t = _scores(q, k, qpos, kpos, n_valid, bias_ptrs, scale, softcap, window, chunk, sink_tokens, CAUSAL, WINDOW,
                   SOFTCAP, HAS_BIAS, CHUNK, SINK_TOKENS, m_valid[:, None] & n_valid[None, :], DOT)
    p = tl.where(m_valid[:, None], tl.exp(s - lse[:, None]), 0.0)  # (M, N)
    ds = p * (tl.dot(do, tl.trans(v), input_precision=DOT) - delta[:, None])
    if SOFTCAP:
        ds = ds * (1.0 - t * t)
    return p, ds


@triton.jit
def _key_rows(K, V, KPOS, b, kvh, skb, skh, sks, svb, svh, svs, offs_n, n_valid, offs_d, d_valid):
    """What every kernel reads per key tile: k, v and their positions."""
    k = _tile(K + b * skb + kvh * skh, offs_n, sks, offs_d, n_valid, d_valid)
    v = _tile(V + b * svb + kvh * svh, offs_n, svs, offs_d, n_valid, d_valid)
    kpos = tl.load(KPOS + offs_n, mask=n_valid, other=0)
    return k, v, kpos


@triton.jit
def _fwd(Q, K, V, O, LSE, QPOS, KPOS, BIAS, SINKS,
         sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sob, soh, sot, sbh, sbt,
         H, T, S, D, group, scale, softcap, window, chunk, sink_tokens,
         CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr,
         CHUNK: tl.constexpr, SINK_TOKENS: tl.constexpr, HAS_SINKS: tl.constexpr, DOT: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    kvh = h // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < T
    d_valid = offs_d < D
    q = _tile(Q + b * sqb + h * sqh, offs_m, sqt, offs_d, m_valid, d_valid)
    qpos = tl.load(QPOS + offs_m, mask=m_valid, other=0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    if HAS_SINKS:  # the sink is a column of the softmax with no value: it starts the running sums
        m_i = tl.zeros((BLOCK_M,), tl.float32) + tl.load(SINKS + h).to(tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32) + 1.0
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, S, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_valid = offs_n < S
        k, v, kpos = _key_rows(K, V, KPOS, b, kvh, skb, skh, sks, svb, svh, svs, offs_n, n_valid, offs_d, d_valid)
        bias_ptrs = BIAS + h * sbh + offs_m[:, None] * sbt + offs_n[None, :]
        s, _ = _scores(q, k, qpos, kpos, n_valid, bias_ptrs, scale, softcap, window, chunk, sink_tokens, CAUSAL,
                       WINDOW, SOFTCAP, HAS_BIAS, CHUNK, SINK_TOKENS, m_valid[:, None] & n_valid[None, :], DOT)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], out, mask=m_valid[:, None] & d_valid[None, :])
    tl.store(LSE + bh * T + offs_m, tl.where(l_i == 0.0, 0.0, m_i + tl.log(l_safe)), mask=m_valid)


@triton.jit
def _query_rows(Q, DO, QPOS, LSE, DELTA, b, h, bh, sqb, sqh, sqt, T, offs_m, m_valid, offs_d, d_valid):
    """What the backward kernels read per query tile: q, dO, positions, log-sum-exp and delta."""
    q = _tile(Q + b * sqb + h * sqh, offs_m, sqt, offs_d, m_valid, d_valid)
    do = _tile(DO + b * sqb + h * sqh, offs_m, sqt, offs_d, m_valid, d_valid)
    qpos = tl.load(QPOS + offs_m, mask=m_valid, other=0)
    lse = tl.load(LSE + bh * T + offs_m, mask=m_valid, other=0.0)
    delta = tl.load(DELTA + bh * T + offs_m, mask=m_valid, other=0.0)
    return q, do, qpos, lse, delta


@triton.jit
def _bwd_dkdv(Q, K, V, DO, LSE, DELTA, QPOS, KPOS, BIAS, DK, DV,
              sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sbh, sbt,
              H, T, S, D, group, scale, softcap, window, chunk, sink_tokens,
              CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr,
              CHUNK: tl.constexpr, SINK_TOKENS: tl.constexpr, HAS_SINKS: tl.constexpr, DOT: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dK and dV of one key tile for one query head (summed over the group afterwards)."""
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    kvh = h // group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < S
    d_valid = offs_d < D
    kv_mask = n_valid[:, None] & d_valid[None, :]
    k, v, kpos = _key_rows(K, V, KPOS, b, kvh, skb, skh, sks, svb, svh, svs, offs_n, n_valid, offs_d, d_valid)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for start in range(0, T, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        m_valid = offs_m < T
        q, do, qpos, lse, delta = _query_rows(Q, DO, QPOS, LSE, DELTA, b, h, bh, sqb, sqh, sqt, T, offs_m, m_valid,
                                              offs_d, d_valid)
        bias_ptrs = BIAS + h * sbh + offs_m[:, None] * sbt + offs_n[None, :]
        p, ds = _probs_and_grads(q, k, v, do, lse, delta, qpos, kpos, m_valid, n_valid, bias_ptrs, scale, softcap,
                                 window, chunk, sink_tokens, CAUSAL, WINDOW, SOFTCAP, HAS_BIAS, CHUNK, SINK_TOKENS, DOT)
        dv += tl.dot(tl.trans(p), do, input_precision=DOT)
        dk += tl.dot(tl.trans(ds), q, input_precision=DOT) * scale
    out_ptrs = bh * S * D + offs_n[:, None] * D + offs_d[None, :]
    tl.store(DK + out_ptrs, dk, mask=kv_mask)
    tl.store(DV + out_ptrs, dv, mask=kv_mask)


@triton.jit
def _bwd_dq(Q, K, V, DO, LSE, DELTA, QPOS, KPOS, BIAS, DQ,
            sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sbh, sbt,
            H, T, S, D, group, scale, softcap, window, chunk, sink_tokens,
            CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr,
            CHUNK: tl.constexpr, SINK_TOKENS: tl.constexpr, HAS_SINKS: tl.constexpr, DOT: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    kvh = h // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < T
    d_valid = offs_d < D
    q_mask = m_valid[:, None] & d_valid[None, :]
    q, do, qpos, lse, delta = _query_rows(Q, DO, QPOS, LSE, DELTA, b, h, bh, sqb, sqh, sqt, T, offs_m, m_valid,
                                          offs_d, d_valid)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, S, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_valid = offs_n < S
        k, v, kpos = _key_rows(K, V, KPOS, b, kvh, skb, skh, sks, svb, svh, svs, offs_n, n_valid, offs_d, d_valid)
        bias_ptrs = BIAS + h * sbh + offs_m[:, None] * sbt + offs_n[None, :]
        _, ds = _probs_and_grads(q, k, v, do, lse, delta, qpos, kpos, m_valid, n_valid, bias_ptrs, scale, softcap,
                                 window, chunk, sink_tokens, CAUSAL, WINDOW, SOFTCAP, HAS_BIAS, CHUNK, SINK_TOKENS, DOT)
        dq += tl.dot(ds, k, input_precision=DOT) * scale
    tl.store(DQ + bh * T * D + offs_m[:, None] * D + offs_d[None, :], dq, mask=q_mask)


def dot_precision(dtype: torch.dtype) -> str:
    """Tiles are float32: with float32 inputs the products run in full precision ("ieee"), since
    TF32 tensor cores would round them to 10 mantissa bits; 16-bit inputs are exact in TF32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch_args(q, k, v, bias):
    b, h, t, d = q.shape
    s, kv = k.shape[2], k.shape[1]
    bias_t = bias if bias is not None else q.new_zeros(1, 1, 1)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2))
    return b, h, t, s, d, kv, bias_t, strides


class FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_pos, k_pos, causal, scale, window, softcap, bias, sinks, chunk, sink_tokens):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b, h, t, s, d, kv, bias_t, strides = _launch_args(q, k, v, bias)
        out = buffers.empty_like(q)
        lse = buffers.empty(b * h, t, dtype=torch.float32, device=q.device)
        sinks_t = sinks.detach().float().contiguous() if sinks is not None else lse.new_zeros(1)
        flags = dict(CAUSAL=bool(causal), WINDOW=bool(window), SOFTCAP=softcap is not None, HAS_BIAS=bias is not None,
                     CHUNK=bool(chunk), SINK_TOKENS=bool(sink_tokens) and bool(window), HAS_SINKS=sinks is not None,
                     DOT=dot_precision(q.dtype), BLOCK_M=BLOCK, BLOCK_N=BLOCK, BLOCK_D=max(16, triton.next_power_of_2(d)))
        positional = (scale, softcap or 1.0, window or 0, chunk or 1, sink_tokens or 0)
        _fwd[(triton.cdiv(t, BLOCK), b * h)](
            q, k, v, out, lse, q_pos, k_pos, bias_t, sinks_t, *strides, out.stride(0), out.stride(1), out.stride(2),
            bias_t.stride(0), bias_t.stride(1), h, t, s, d, h // kv, *positional, **flags)
        ctx.save_for_backward(q, k, v, out, lse, q_pos, k_pos, bias_t, sinks_t)
        ctx.args = (positional, flags, sinks is not None)
        ctx.sinks_dtype = sinks.dtype if sinks is not None else None
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, q_pos, k_pos, bias_t, sinks_t = ctx.saved_tensors
        positional, flags, has_sinks = ctx.args
        do = do.contiguous()
        b, h, t, s, d, kv, _, strides = _launch_args(q, k, v, None)
        delta = (do.float() * out.float()).sum(-1).reshape(b * h, t)
        dk = buffers.empty(b, h, s, d, dtype=torch.float32, device=q.device)
        dv = buffers.empty_like(dk)
        dq = buffers.empty(b, h, t, d, dtype=torch.float32, device=q.device)
        common = (*strides, bias_t.stride(0), bias_t.stride(1), h, t, s, d, h // kv, *positional)
        _bwd_dkdv[(triton.cdiv(s, BLOCK), b * h)](q, k, v, do, lse, delta, q_pos, k_pos, bias_t, dk, dv, *common, **flags)
        _bwd_dq[(triton.cdiv(t, BLOCK), b * h)](q, k, v, do, lse, delta, q_pos, k_pos, bias_t, dq, *common, **flags)
        dsinks = None
        if has_sinks:  # the sink column's probability times (its dP, which is 0, minus delta), summed
            p_sink = torch.exp(sinks_t[None, :, None] - lse.view(b, h, t))
            dsinks = -(p_sink * delta.view(b, h, t)).sum((0, 2))
        # each key/value head collects the gradients of the query heads that share it
        dk = dk.view(b, kv, h // kv, s, d).sum(2).to(k.dtype)
        dv = dv.view(b, kv, h // kv, s, d).sum(2).to(v.dtype)
        return (dq.to(q.dtype), dk, dv, None, None, None, None, None, None, None,
                dsinks.to(ctx.sinks_dtype) if dsinks is not None else None, None, None)


def attention(q, k, v, q_pos, k_pos, *, causal: bool, scale: float, window=None, softcap=None, bias=None,
              key_mask=None, sinks=None, chunk=None, sink_tokens=0, dropout=0.0):
    """Same contract as `reference.attention`. Padding masks, learned biases that need a
    gradient (it would need the full score matrix), value widths unlike the key width
    (differential attention's halves) and dropout on the probabilities go to the reference."""
    from . import reference

    if key_mask is not None or (bias is not None and bias.requires_grad) or v.shape[-1] != q.shape[-1] or dropout:
        return reference.attention(q, k, v, q_pos, k_pos, causal=causal, scale=scale, window=window, softcap=softcap,
                                   bias=bias, key_mask=key_mask, sinks=sinks, chunk=chunk, sink_tokens=sink_tokens,
                                   dropout=dropout)
    if bias is not None:
        bias = bias.expand(q.shape[1], q.shape[2], k.shape[2]).contiguous()
    return FlashAttention.apply(q, k, v, q_pos.to(torch.int32).contiguous(), k_pos.to(torch.int32).contiguous(),
                                causal, scale, window, softcap, bias, sinks, chunk, sink_tokens)
