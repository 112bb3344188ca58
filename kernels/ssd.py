"""Mamba-2's chunked state space duality (SSD) in Triton, forward and backward.

One program owns one (sequence, head) and a block of the head's P channels, and walks the chunks
in order with the state block (BLOCK_P, N) in registers: the rows of the state and of the output
that belong to different channel blocks never meet, so the blocks run independently. Per chunk
it does the paper's four steps, fused: (1) the quadratic, attention-like form within the chunk,
(C_l · B_s) exp(cum_l - cum_s) dt_s x_s for s <= l; (4) the read of the state the chunk starts
from, exp(cum_l) C_l · h; (2) the chunk's own contribution to the state at its end and (3) the
pass of the state to the next chunk, h ← exp(cum_end) h + Σ_s exp(cum_end - cum_s) dt_s x_s ⊗ B_s.
Here cum_l is the cumulative log decay Σ_{k<=l} dt_k A within the chunk; every exponent taken
is <= 0 (A < 0, dt >= 0), so nothing overflows.

The forward saves the state at the start of every chunk; the backward walks the chunks in
reverse, recomputes each chunk's products from its saved start state, and carries the gradient
of the state back across chunks. Sums over the channel blocks (dt, A, B, C) and over the heads
of a group (B, C) are written as per-program partials and reduced afterwards.
Reference: `reference.ssd_chunked`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers

# The kernel's own chunk length: the quadratic form costs L² per chunk in registers, so it walks
# at most 64 steps at a time whatever chunk the caller's reference would use (the result is the
# same function; only rounding differs). 16 is the least a tl.dot operand dimension may be.
MAX_CHUNK = 64
MIN_BLOCK = 16


@triton.jit
def _load_chunk(X, DT, B, C, b, h, head_group, start, T, H, G, P, N, offs_l, offs_p, offs_n, mp, mn):
    """dt_s x_s (L, BLOCK_P), dt (L), B (L, N), C (L, N) of one chunk; zeros past the sequence's end,
    which then neither decay nor feed the state."""
    t = start + offs_l
    mt = t < T
    x = tl.load(X + ((b * T + t[:, None]) * H + h) * P + offs_p[None, :], mask=mt[:, None] & mp[None, :], other=0.0)
    dt = tl.load(DT + (b * T + t) * H + h, mask=mt, other=0.0)
    bc_offs = ((b * T + t[:, None]) * G + head_group) * N + offs_n[None, :]
    bmat = tl.load(B + bc_offs, mask=mt[:, None] & mn[None, :], other=0.0)
    cmat = tl.load(C + bc_offs, mask=mt[:, None] & mn[None, :], other=0.0)
    return x, dt, bmat, cmat


@triton.jit
def _decays(dt, a_h, offs_l):
    """The cumulative log decay cum (L,), its total over the chunk, and the causal decay matrix
    exp(cum_l - cum_s) for s <= l (0 above the diagonal)."""
    cum = tl.cumsum(dt * a_h, axis=0)
    total = tl.sum(dt * a_h, axis=0)
    causal = offs_l[:, None] >= offs_l[None, :]
    pair = tl.exp(tl.where(causal, cum[:, None] - cum[None, :], float("-inf")))
    return cum, total, pair


@triton.jit
def _fwd(X, DT, A, B, C, H0, Y, STATES, HLAST, T, H, G, P, N, n_chunks,
         HAS_H0: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_bh, pid_p = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    head_group = h // (H // G)
    offs_l = tl.arange(0, BLOCK_L)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    mpn = mp[:, None] & mn[None, :]
    a_h = tl.load(A + h)
    state_offs = offs_p[:, None] * N + offs_n[None, :]
    state = tl.zeros((BLOCK_P, BLOCK_N), tl.float32)
    if HAS_H0:
        state = tl.load(H0 + (b * H + h) * P * N + state_offs, mask=mpn, other=0.0)
    for c in range(0, n_chunks):
        start = c * BLOCK_L
        tl.store(STATES + ((b * n_chunks + c) * H + h) * P * N + state_offs, state, mask=mpn)
        x, dt, bmat, cmat = _load_chunk(X, DT, B, C, b, h, head_group, start, T, H, G, P, N,
                                        offs_l, offs_p, offs_n, mp, mn)
        u = x * dt[:, None]  # (L, BLOCK_P) the input dt_s x_s
        cum, total, pair = _decays(dt, a_h, offs_l)
        scores = tl.dot(cmat, tl.trans(bmat), input_precision="ieee") * pair  # (L, L)
        y = tl.dot(scores, u, input_precision="ieee")
        y += tl.exp(cum)[:, None] * tl.dot(cmat, tl.trans(state), input_precision="ieee")
        t = start + offs_l
        tl.store(Y + ((b * T + t[:, None]) * H + h) * P + offs_p[None, :], y, mask=(t < T)[:, None] & mp[None, :])
        to_end = tl.exp(total - cum)  # (L,) decay from each step to the chunk's end
        state = tl.exp(total) * state + tl.dot(tl.trans(u * to_end[:, None]), bmat, input_precision="ieee")
    tl.store(HLAST + (b * H + h) * P * N + state_offs, state, mask=mpn)


@triton.jit
def _bwd(X, DT, A, B, C, STATES, DY, DHLAST, DX, DDT_P, DLOG_P, DB_P, DC_P, DH0, T, H, G, P, N, n_chunks,
         BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Per chunk, in reverse, with ȳ the output's gradient and h̄ that of the state at the chunk's
    end, W = (C Bᵀ) ⊙ pair and R = W ⊙ (ȳ uᵀ):
        ū_s = Σ_l W_ls ȳ_l + exp(total - cum_s) h̄ B_s,    x̄ = dt ū, and dt gets x · ū
        C̄_l = Σ_s pair_ls (ȳ_l · u_s) B_s + exp(cum_l) ȳ_l h
        B̄_s = Σ_l pair_ls (ȳ_l · u_s) C_l + exp(total - cum_s) h̄ᵀ u_s
        d cum_l = Σ_s R_ls - Σ_s R_sl + exp(cum_l) ȳ_l · (h C_l) - exp(total - cum_l) u_lᵀ h̄ B_l,
        d total = exp(total) <h, h̄> + Σ_s exp(total - cum_s) u_sᵀ h̄ B_s,
    then the log decays dt_k A get Σ_{l>=k} d cum_l + d total, and the state before the chunk
    h̄ ← exp(total) h̄ + Σ_l exp(cum_l) ȳ_l ⊗ C_l."""
    pid_bh, pid_p = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    head_group = h // (H // G)
    offs_l = tl.arange(0, BLOCK_L)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    mpn = mp[:, None] & mn[None, :]
    a_h = tl.load(A + h)
    state_offs = offs_p[:, None] * N + offs_n[None, :]
    dstate = tl.load(DHLAST + (b * H + h) * P * N + state_offs, mask=mpn, other=0.0)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        start = c * BLOCK_L
        t = start + offs_l
        mt = t < T
        state = tl.load(STATES + ((b * n_chunks + c) * H + h) * P * N + state_offs, mask=mpn, other=0.0)
        x, dt, bmat, cmat = _load_chunk(X, DT, B, C, b, h, head_group, start, T, H, G, P, N,
                                        offs_l, offs_p, offs_n, mp, mn)
        xp_offs = ((b * T + t[:, None]) * H + h) * P + offs_p[None, :]
        mlp = mt[:, None] & mp[None, :]
        dy = tl.load(DY + xp_offs, mask=mlp, other=0.0)
        u = x * dt[:, None]
        cum, total, pair = _decays(dt, a_h, offs_l)
        read = tl.exp(cum)  # (L,) decay from the chunk's start to each step
        to_end = tl.exp(total - cum)
        weights = tl.dot(cmat, tl.trans(bmat), input_precision="ieee") * pair  # W (L, L)
        dy_u = tl.dot(dy, tl.trans(u), input_precision="ieee")  # [l, s] = ȳ_l · u_s
        pair_dy_u = pair * dy_u
        state_b = tl.dot(bmat, tl.trans(dstate), input_precision="ieee")  # (L, BLOCK_P) h̄ B_s
        du = tl.dot(tl.trans(weights), dy, input_precision="ieee") + to_end[:, None] * state_b
        tl.store(DX + xp_offs, du * dt[:, None], mask=mlp)
        ddt_x = tl.sum(du * x, axis=1)
        dc = tl.dot(pair_dy_u, bmat, input_precision="ieee") + read[:, None] * tl.dot(dy, state, input_precision="ieee")
        db = tl.dot(tl.trans(pair_dy_u), cmat, input_precision="ieee")
        db += to_end[:, None] * tl.dot(u, dstate, input_precision="ieee")
        r = weights * dy_u
        written = to_end * tl.sum(u * state_b, axis=1)  # (L,) each step's share of the state at the end
        dcum = tl.sum(r, axis=1) - tl.sum(r, axis=0) - written
        dcum += read * tl.sum(dy * tl.dot(cmat, tl.trans(state), input_precision="ieee"), axis=1)
        dtotal = tl.exp(total) * tl.sum(tl.sum(state * dstate, axis=1), axis=0) + tl.sum(written, axis=0)
        # Σ_{l>=k} d cum_l as the total less the sum before k
        dlog = tl.sum(dcum, axis=0) - tl.cumsum(dcum, axis=0) + dcum + dtotal
        partial = pid_p * (tl.num_programs(0) * T) + b * H * T  # offset of (pblock, b) in (PB, B, T, H)
        tl.store(DDT_P + partial + t * H + h, ddt_x, mask=mt)
        tl.store(DLOG_P + partial + t * H + h, dlog, mask=mt)
        bc_offs = (partial + t[:, None] * H + h) * N + offs_n[None, :]
        tl.store(DB_P + bc_offs, db, mask=mt[:, None] & mn[None, :])
        tl.store(DC_P + bc_offs, dc, mask=mt[:, None] & mn[None, :])
        dstate = tl.exp(total) * dstate + tl.dot(tl.trans(dy * read[:, None]), cmat, input_precision="ieee")
    tl.store(DH0 + (b * H + h) * P * N + state_offs, dstate, mask=mpn)


def _blocks(t: int, p: int, n: int, chunk: int) -> tuple[int, int, int, int, int]:
    block_l = max(MIN_BLOCK, min(MAX_CHUNK, triton.next_power_of_2(max(chunk, 1))))
    block_p = max(MIN_BLOCK, min(32, triton.next_power_of_2(p)))
    block_n = max(MIN_BLOCK, triton.next_power_of_2(n))
    return block_l, block_p, block_n, triton.cdiv(t, block_l), triton.cdiv(p, block_p)


class ChunkedSSD(torch.autograd.Function):
    """(x, dt, A, B, C, initial state) → (y (B, T, H, P), final state (B, H, P, N)), float32."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, initial_state, chunk: int):
        dtypes = [v.dtype for v in (x, dt, A, B, C)] + [initial_state.dtype if initial_state is not None else None]
        x, dt, A = x.float().contiguous(), dt.float().contiguous(), A.float().contiguous()
        B, C = B.float().contiguous(), C.float().contiguous()
        bsz, t, heads, p = x.shape
        groups, n = B.shape[2], B.shape[3]
        block_l, block_p, block_n, n_chunks, n_pblocks = _blocks(t, p, n, chunk)
        y = buffers.empty(bsz, t, heads, p, dtype=torch.float32, device=x.device)
        states = buffers.empty(bsz, n_chunks, heads, p, n, dtype=torch.float32, device=x.device)
        h_last = buffers.empty(bsz, heads, p, n, dtype=torch.float32, device=x.device)
        h0 = initial_state.float().contiguous() if initial_state is not None else h_last
        _fwd[(bsz * heads, n_pblocks)](x, dt, A, B, C, h0, y, states, h_last, t, heads, groups, p, n, n_chunks,
                                       HAS_H0=initial_state is not None, BLOCK_L=block_l, BLOCK_P=block_p,
                                       BLOCK_N=block_n)
        ctx.save_for_backward(x, dt, A, B, C, states)
        ctx.chunk, ctx.dtypes = chunk, dtypes
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        x, dt, A, B, C, states = ctx.saved_tensors
        bsz, t, heads, p = x.shape
        groups, n = B.shape[2], B.shape[3]
        block_l, block_p, block_n, n_chunks, n_pblocks = _blocks(t, p, n, ctx.chunk)
        dy = (dy if dy is not None else torch.zeros_like(x)).float().contiguous()
        dh_last = (dh_last if dh_last is not None else x.new_zeros(bsz, heads, p, n)).float().contiguous()
        dx = buffers.empty_like(x)
        ddt_p = buffers.empty(n_pblocks, bsz, t, heads, dtype=torch.float32, device=x.device)
        dlog_p = buffers.empty(n_pblocks, bsz, t, heads, dtype=torch.float32, device=x.device)
        db_p = buffers.empty(n_pblocks, bsz, t, heads, n, dtype=torch.float32, device=x.device)
        dc_p = buffers.empty(n_pblocks, bsz, t, heads, n, dtype=torch.float32, device=x.device)
        dh0 = buffers.empty(bsz, heads, p, n, dtype=torch.float32, device=x.device)
        _bwd[(bsz * heads, n_pblocks)](x, dt, A, B, C, states, dy, dh_last, dx, ddt_p, dlog_p, db_p, dc_p, dh0,
                                       t, heads, groups, p, n, n_chunks,
                                       BLOCK_L=block_l, BLOCK_P=block_p, BLOCK_N=block_n)
        dlog = dlog_p.sum(0)  # gradient of the log decays dt A, (B, T, H)
        ddt = ddt_p.sum(0) + dlog * A
        dA = (dlog * dt).sum((0, 1))
        # the heads of a group share its B and C
        db = db_p.sum(0).view(bsz, t, groups, heads // groups, n).sum(3)
        dc = dc_p.sum(0).view(bsz, t, groups, heads // groups, n).sum(3)
        grads = [g.to(dtype) for g, dtype in zip((dx, ddt, dA, db, dc), ctx.dtypes)]
        return (*grads, dh0.to(ctx.dtypes[5]) if ctx.dtypes[5] is not None else None, None)


def ssd_chunked(x, dt, A, B, C, chunk: int, initial_state=None):
    """Same contract as `reference.ssd_chunked`. `chunk` picks the kernel's chunk length, a power of
    two between 16 and 64 (the nearest to it); the result does not depend on it beyond rounding."""
    return ChunkedSSD.apply(x, dt, A, B, C, initial_state, chunk)
