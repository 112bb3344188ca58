"""The gated linear scan's chunked form in Triton (retention, GLA, Gated DeltaNet), forward and
backward.

Per head the state S (dk, dv) decays by exp(g_t), one gate per head or one per key dimension, and
takes k_t v_t^T; o_t = S_t^T (scale · q_t). One program owns one (sequence, head) and a block of
the dv columns, which never meet, and walks the chunks with its state block in registers. Within a
chunk, with c the cumulative log decay from the chunk's start:

    o_i = (q_i ⊙ exp(c_i))ᵀ S + Σ_{j<=i} (Σ_d q_id k_jd exp(c_id - c_jd)) v_j
    S ← exp(c_end) ⊙ S + Σ_j (k_j ⊙ exp(c_end - c_j)) v_jᵀ

Decays are only exponentiated as differences that are <= 0, so nothing overflows however strong
the gates: with one gate per head the pairwise decays are an (L, L) matrix and the scores a
matmul; with one per key dimension they are an (L, L, dk) block, so those chunks are 16 long.
The delta rule (β, one gate per head) replaces v by what the state does not predict, folded over
the chunk by the UT transform as in the reference (`_delta_system`). The forward saves the state
at each chunk's start; the backward walks the chunks in reverse and recomputes each from it. Sums
over the dv blocks (dq, dk, the gates, β) are per-program partials reduced afterwards.
Reference: `reference.gated_linear_chunked`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers

MAX_CHUNK = 64  # one gate per head: (L, L) scores
PER_DIM_CHUNK = 16  # one gate per key dimension: (L, L, dk) pairwise decays
DELTA_CHUNK = 16  # the delta rule: its (L, L) system is inverted row by row
MIN_BLOCK = 16  # the least a tl.dot operand dimension may be


@triton.jit
def _load_chunk(Q, K, V, G, bh, start, T, DK, DV, offs_l, offs_k, offs_v, mk, mv, PER_DIM: tl.constexpr):
    """q, k (L, BLOCK_K), v (L, BLOCK_V) of one chunk and the cumulative log decay c (L, BLOCK_K),
    the same in every column for one gate per head; zeros past the sequence's end (no update, no decay)."""
    t = start + offs_l
    mt = t < T
    mlk = mt[:, None] & mk[None, :]
    qk_offs = (bh * T + t[:, None]) * DK + offs_k[None, :]
    q = tl.load(Q + qk_offs, mask=mlk, other=0.0)
    k = tl.load(K + qk_offs, mask=mlk, other=0.0)
    v = tl.load(V + (bh * T + t[:, None]) * DV + offs_v[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
    if PER_DIM:
        g = tl.load(G + qk_offs, mask=mlk, other=0.0)
    else:
        g = tl.load(G + bh * T + t, mask=mt, other=0.0)[:, None] + tl.zeros_like(q)
    return q, k, v, tl.cumsum(g, axis=0), t, mt


@triton.jit
def _pairwise(c, offs_l, PER_DIM: tl.constexpr):
    """exp(c_i - c_j) for j <= i, 0 above the diagonal: (L, L, BLOCK_K) or, for one gate per head, (L, L)."""
    causal = offs_l[:, None] >= offs_l[None, :]
    if PER_DIM:
        diff = c[:, None, :] - c[None, :, :]
        return tl.exp(tl.where(causal[:, :, None], diff, float("-inf")))
    head = tl.max(c, axis=1)  # every column holds the same value
    return tl.exp(tl.where(causal, head[:, None] - head[None, :], float("-inf")))


@triton.jit
def _scores(q, k, pair, PER_DIM: tl.constexpr):
    """Σ_d q_id k_jd exp(c_id - c_jd), (L, L)."""
    if PER_DIM:
        return tl.sum(q[:, None, :] * k[None, :, :] * pair, axis=2)
    return tl.dot(q, tl.trans(k), input_precision="ieee") * pair


@triton.jit
def _fwd(Q, K, V, G, S0, O, STATES, SLAST, T, DK, DV, n_chunks, scale,
         HAS_S0: tl.constexpr, PER_DIM: tl.constexpr,
         BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):
    bh, pid_v = tl.program_id(0), tl.program_id(1)
    offs_l = tl.arange(0, BLOCK_L)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mk, mv = offs_k < DK, offs_v < DV
    mkv = mk[:, None] & mv[None, :]
    state_offs = offs_k[:, None] * DV + offs_v[None, :]
    state = tl.zeros((BLOCK_K, BLOCK_V), tl.float32)
    if HAS_S0:
        state = tl.load(S0 + bh * DK * DV + state_offs, mask=mkv, other=0.0)
    for ci in range(0, n_chunks):
        start = ci * BLOCK_L
        tl.store(STATES + (bh * n_chunks + ci) * DK * DV + state_offs, state, mask=mkv)
        q, k, v, c, t, mt = _load_chunk(Q, K, V, G, bh, start, T, DK, DV, offs_l, offs_k, offs_v, mk, mv, PER_DIM)
        q = q * scale
        last = tl.sum(tl.where((offs_l == BLOCK_L - 1)[:, None], c, 0.0), axis=0)  # c at the chunk's end, (BLOCK_K,)
        o = tl.dot(q * tl.exp(c), state, input_precision="ieee")
        o += tl.dot(_scores(q, k, _pairwise(c, offs_l, PER_DIM), PER_DIM), v, input_precision="ieee")
        tl.store(O + (bh * T + t[:, None]) * DV + offs_v[None, :], o, mask=mt[:, None] & mv[None, :])
        k_end = k * tl.exp(last[None, :] - c)  # each update decayed to the chunk's end
        state = tl.exp(last)[:, None] * state + tl.dot(tl.trans(k_end), v, input_precision="ieee")
    tl.store(SLAST + bh * DK * DV + state_offs, state, mask=mkv)


@triton.jit
def _bwd(Q, K, V, G, STATES, DO, DSLAST, DQ_P, DK_P, DV, DG_P, DS0, T, DK, DVAL, n_chunks, n_bh, scale,
         PER_DIM: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):
    """Per chunk, in reverse, with ō the output's gradient, S̄ that of the state at the chunk's end,
    q the scaled queries, A the scores and Ā_ij = ō_i · v_j (j <= i):
        v̄_j = Σ_i A_ij ō_i + S̄ᵀ (k_j ⊙ exp(c_end - c_j))
        q̄_i = exp(c_i) ⊙ (S ō_i) + Σ_j Ā_ij k_j ⊙ exp(c_i - c_j)
        k̄_j = Σ_i Ā_ij q_i ⊙ exp(c_i - c_j) + exp(c_end - c_j) ⊙ (S̄ v_j)
        c̄_i = q_i ⊙ q̄_i - k_i ⊙ k̄_i,   c̄_end = exp(c_end) ⊙ Σ_v S ⊙ S̄ + Σ_j k_j ⊙ exp(c_end - c_j) ⊙ (S̄ v_j)
    then each log gate g_k gets Σ_{l>=k} c̄_l + c̄_end (summed over d for one gate per head), and the
    state before the chunk S̄ ← exp(c_end) ⊙ S̄ + Σ_i (q_i ⊙ exp(c_i)) ō_iᵀ."""
    bh, pid_v = tl.program_id(0), tl.program_id(1)
    offs_l = tl.arange(0, BLOCK_L)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mk, mv = offs_k < DK, offs_v < DVAL
    mkv = mk[:, None] & mv[None, :]
    state_offs = offs_k[:, None] * DVAL + offs_v[None, :]
    dstate = tl.load(DSLAST + bh * DK * DVAL + state_offs, mask=mkv, other=0.0)
    partial = pid_v * n_bh + bh  # this program's row of the (V blocks, B·H) partials
    causal = offs_l[:, None] >= offs_l[None, :]
    for i in range(0, n_chunks):
        ci = n_chunks - 1 - i
        start = ci * BLOCK_L
        state = tl.load(STATES + (bh * n_chunks + ci) * DK * DVAL + state_offs, mask=mkv, other=0.0)
        q, k, v, c, t, mt = _load_chunk(Q, K, V, G, bh, start, T, DK, DVAL, offs_l, offs_k, offs_v, mk, mv, PER_DIM)
        q = q * scale
        mlv = mt[:, None] & mv[None, :]
        do = tl.load(DO + (bh * T + t[:, None]) * DVAL + offs_v[None, :], mask=mlv, other=0.0)
        last = tl.sum(tl.where((offs_l == BLOCK_L - 1)[:, None], c, 0.0), axis=0)
        read = tl.exp(c)  # (L, BLOCK_K)
        to_end = tl.exp(last[None, :] - c)
        pair = _pairwise(c, offs_l, PER_DIM)
        scores = _scores(q, k, pair, PER_DIM)
        dscores = tl.where(causal, tl.dot(do, tl.trans(v), input_precision="ieee"), 0.0)  # Ā (L, L)
        k_end = k * to_end
        dv = tl.dot(tl.trans(scores), do, input_precision="ieee") + tl.dot(k_end, dstate, input_precision="ieee")
        tl.store(DV + (bh * T + t[:, None]) * DVAL + offs_v[None, :], dv, mask=mlv)
        written = tl.dot(v, tl.trans(dstate), input_precision="ieee")  # (L, BLOCK_K) S̄ v_j
        if PER_DIM:
            dq = tl.sum(dscores[:, :, None] * k[None, :, :] * pair, axis=1)
            dk = tl.sum(dscores[:, :, None] * q[:, None, :] * pair, axis=0)
        else:
            dq = tl.dot(dscores * pair, k, input_precision="ieee")
            dk = tl.dot(tl.trans(dscores * pair), q, input_precision="ieee")
        dq += read * tl.dot(do, tl.trans(state), input_precision="ieee")
        dk += to_end * written
        dc = q * dq - k * dk
        dlast = tl.exp(last) * tl.sum(state * dstate, axis=1) + tl.sum(k_end * written, axis=0)
        # Σ_{l>=k} c̄_l as the total less the sum before k
        dg = tl.sum(dc, axis=0)[None, :] - tl.cumsum(dc, axis=0) + dc + dlast[None, :]
        mlk = mt[:, None] & mk[None, :]
        qk_offs = (partial * T + t[:, None]) * DK + offs_k[None, :]
        tl.store(DQ_P + qk_offs, dq * scale, mask=mlk)
        tl.store(DK_P + qk_offs, dk, mask=mlk)
        if PER_DIM:
            tl.store(DG_P + qk_offs, dg, mask=mlk)
        else:
            tl.store(DG_P + partial * T + t, tl.sum(tl.where(mk[None, :], dg, 0.0), axis=1), mask=mt)
        dstate = tl.exp(last)[:, None] * dstate + tl.dot(tl.trans(q * read), do, input_precision="ieee")
    tl.store(DS0 + bh * DK * DVAL + state_offs, dstate, mask=mkv)


@triton.jit
def _delta_system(k, beta, pair, offs_l, BLOCK_L: tl.constexpr):
    """The chunk's delta-rule system: the strictly lower part of (β ⊙ k) kᵀ ⊙ pair, and the
    inverse of the unit lower-triangular matrix it makes (the UT transform, Yang et al. 2025),
    by forward substitution, row by row: each row of the inverse needs only the rows above it."""
    rows = offs_l[:, None]
    strict = rows > offs_l[None, :]
    system = tl.where(strict, tl.dot(k * beta[:, None], tl.trans(k), input_precision="ieee") * pair, 0.0)
    identity = tl.where(rows == offs_l[None, :], 1.0, 0.0)
    inverse = identity
    for i in range(1, BLOCK_L):
        row = tl.sum(tl.where(rows == i, system, 0.0), axis=0)  # (L,) over the rows above i
        solved = -tl.sum(row[:, None] * inverse, axis=0)
        inverse = tl.where(rows == i, identity + solved[None, :], inverse)
    return system, inverse


@triton.jit
def _delta_fwd(Q, K, V, G, BETA, S0, O, STATES, SLAST, T, DK, DV, n_chunks, scale,
               HAS_S0: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):
    """The delta rule per chunk, as the reference: with Tinv the inverse of the chunk's system,
    w = Tinv (β ⊙ v) and u = Tinv (β ⊙ k ⊙ exp(c)), the new values are w - u S (what the state
    does not predict), read and written as without the delta rule."""
    bh, pid_v = tl.program_id(0), tl.program_id(1)
    offs_l = tl.arange(0, BLOCK_L)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mk, mv = offs_k < DK, offs_v < DV
    mkv = mk[:, None] & mv[None, :]
    state_offs = offs_k[:, None] * DV + offs_v[None, :]
    state = tl.zeros((BLOCK_K, BLOCK_V), tl.float32)
    if HAS_S0:
        state = tl.load(S0 + bh * DK * DV + state_offs, mask=mkv, other=0.0)
    for ci in range(0, n_chunks):
        start = ci * BLOCK_L
        tl.store(STATES + (bh * n_chunks + ci) * DK * DV + state_offs, state, mask=mkv)
        q, k, v, c, t, mt = _load_chunk(Q, K, V, G, bh, start, T, DK, DV, offs_l, offs_k, offs_v, mk, mv, False)
        beta = tl.load(BETA + bh * T + t, mask=mt, other=0.0)
        q = q * scale
        last = tl.sum(tl.where((offs_l == BLOCK_L - 1)[:, None], c, 0.0), axis=0)
        pair = _pairwise(c, offs_l, False)
        system, inverse = _delta_system(k, beta, pair, offs_l, BLOCK_L)
        read = tl.exp(c)
        w = tl.dot(inverse, v * beta[:, None], input_precision="ieee")
        u = tl.dot(inverse, k * read * beta[:, None], input_precision="ieee")
        values = w - tl.dot(u, state, input_precision="ieee")
        o = tl.dot(q * read, state, input_precision="ieee")
        o += tl.dot(_scores(q, k, pair, False), values, input_precision="ieee")
        tl.store(O + (bh * T + t[:, None]) * DV + offs_v[None, :], o, mask=mt[:, None] & mv[None, :])
        k_end = k * tl.exp(last[None, :] - c)
        state = tl.exp(last)[:, None] * state + tl.dot(tl.trans(k_end), values, input_precision="ieee")
    tl.store(SLAST + bh * DK * DV + state_offs, state, mask=mkv)


@triton.jit
def _delta_bwd(Q, K, V, G, BETA, STATES, DO, DSLAST, DQ_P, DK_P, DV, DG_P, DBETA_P, DS0, T, DK, DVAL, n_chunks, n_bh,
               scale, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):
    """`_bwd` with the new values n = w - u S in place of v: with n̄ = Aᵀ ō + k_end S̄,
        S̄_before = exp(c_end) S̄ + (q ⊙ exp(c))ᵀ ō - uᵀ n̄,  w̄ = n̄,  ū = -n̄ Sᵀ,
    then through the solve, with b_v = β ⊙ v and b_k = β ⊙ k ⊙ exp(c):
        T̄ = w̄ b_vᵀ + ū b_kᵀ,  b̄_v = Tinvᵀ w̄,  b̄_k = Tinvᵀ ū,  M̄ = -Tinvᵀ T̄ Tinvᵀ (strictly lower part),
    and the system M_ij = β_i (k_i · k_j) pair_ij gives β, k and the gates their shares."""
    bh, pid_v = tl.program_id(0), tl.program_id(1)
    offs_l = tl.arange(0, BLOCK_L)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mk, mv = offs_k < DK, offs_v < DVAL
    mkv = mk[:, None] & mv[None, :]
    state_offs = offs_k[:, None] * DVAL + offs_v[None, :]
    dstate = tl.load(DSLAST + bh * DK * DVAL + state_offs, mask=mkv, other=0.0)
    partial = pid_v * n_bh + bh
    causal = offs_l[:, None] >= offs_l[None, :]
    for i in range(0, n_chunks):
        ci = n_chunks - 1 - i
        start = ci * BLOCK_L
        state = tl.load(STATES + (bh * n_chunks + ci) * DK * DVAL + state_offs, mask=mkv, other=0.0)
        q, k, v, c, t, mt = _load_chunk(Q, K, V, G, bh, start, T, DK, DVAL, offs_l, offs_k, offs_v, mk, mv, False)
        beta = tl.load(BETA + bh * T + t, mask=mt, other=0.0)
        q = q * scale
        mlv = mt[:, None] & mv[None, :]
        do = tl.load(DO + (bh * T + t[:, None]) * DVAL + offs_v[None, :], mask=mlv, other=0.0)
        last = tl.sum(tl.where((offs_l == BLOCK_L - 1)[:, None], c, 0.0), axis=0)
        read = tl.exp(c)
        to_end = tl.exp(last[None, :] - c)
        pair = _pairwise(c, offs_l, False)
        system, inverse = _delta_system(k, beta, pair, offs_l, BLOCK_L)
        b_v = v * beta[:, None]
        b_k = k * read * beta[:, None]
        w = tl.dot(inverse, b_v, input_precision="ieee")
        u = tl.dot(inverse, b_k, input_precision="ieee")
        values = w - tl.dot(u, state, input_precision="ieee")
        scores = _scores(q, k, pair, False)
        k_end = k * to_end
        dvalues = tl.dot(tl.trans(scores), do, input_precision="ieee") + tl.dot(k_end, dstate, input_precision="ieee")
        dscores = tl.where(causal, tl.dot(do, tl.trans(values), input_precision="ieee"), 0.0)
        written = tl.dot(values, tl.trans(dstate), input_precision="ieee")  # (L, BLOCK_K) S̄ n_j
        du = -tl.dot(dvalues, tl.trans(state), input_precision="ieee")
        dq = tl.dot(dscores * pair, k, input_precision="ieee")
        dq += read * tl.dot(do, tl.trans(state), input_precision="ieee")
        dk = tl.dot(tl.trans(dscores * pair), q, input_precision="ieee") + to_end * written
        # through the solve
        dinv = tl.dot(dvalues, tl.trans(b_v), input_precision="ieee")
        dinv += tl.dot(du, tl.trans(b_k), input_precision="ieee")
        db_v = tl.dot(tl.trans(inverse), dvalues, input_precision="ieee")
        db_k = tl.dot(tl.trans(inverse), du, input_precision="ieee")
        dsystem = -tl.dot(tl.dot(tl.trans(inverse), dinv, input_precision="ieee"), tl.trans(inverse),
                          input_precision="ieee")
        dsystem = tl.where(offs_l[:, None] > offs_l[None, :], dsystem, 0.0)
        dkk = dsystem * pair  # gradient of β_i (k_i · k_j)
        kk = tl.dot(k, tl.trans(k), input_precision="ieee")
        dbeta = tl.sum(dkk * kk, axis=1) + tl.sum(v * db_v, axis=1) + tl.sum(k * read * db_k, axis=1)
        dk += beta[:, None] * tl.dot(dkk, k, input_precision="ieee")
        dk += tl.dot(tl.trans(dkk), k * beta[:, None], input_precision="ieee")
        dk += read * beta[:, None] * db_k
        dval = db_v * beta[:, None]
        tl.store(DV + (bh * T + t[:, None]) * DVAL + offs_v[None, :], dval, mask=mlv)
        # the gates, one per head: every column of c is the same, so sum the per-column shares
        r_scores = dscores * scores
        r_system = dsystem * system
        dc = tl.sum(r_scores, axis=1) - tl.sum(r_scores, axis=0) + tl.sum(r_system, axis=1) - tl.sum(r_system, axis=0)
        dc += tl.sum(q * read * tl.dot(do, tl.trans(state), input_precision="ieee"), axis=1)
        dc += tl.sum(b_k * db_k, axis=1)
        end_share = tl.sum(k_end * written, axis=1)
        dc -= end_share
        dlast = tl.sum(tl.exp(last) * tl.sum(state * dstate, axis=1), axis=0) + tl.sum(end_share, axis=0)
        dg = tl.sum(dc, axis=0) - tl.cumsum(dc, axis=0) + dc + dlast
        mlk = mt[:, None] & mk[None, :]
        qk_offs = (partial * T + t[:, None]) * DK + offs_k[None, :]
        tl.store(DQ_P + qk_offs, dq * scale, mask=mlk)
        tl.store(DK_P + qk_offs, dk, mask=mlk)
        tl.store(DG_P + partial * T + t, dg, mask=mt)
        tl.store(DBETA_P + partial * T + t, dbeta, mask=mt)
        dstate = (tl.exp(last)[:, None] * dstate + tl.dot(tl.trans(q * read), do, input_precision="ieee")
                  - tl.dot(tl.trans(u), dvalues, input_precision="ieee"))
    tl.store(DS0 + bh * DK * DVAL + state_offs, dstate, mask=mkv)


def _blocks(t: int, dk: int, dv: int, per_dim: bool, delta: bool) -> tuple[int, int, int, int, int]:
    if delta:
        block_l = DELTA_CHUNK
    elif per_dim:
        block_l = PER_DIM_CHUNK
    else:
        block_l = max(MIN_BLOCK, min(MAX_CHUNK, triton.next_power_of_2(max(t, 1))))
    block_k = max(MIN_BLOCK, triton.next_power_of_2(dk))
    block_v = max(MIN_BLOCK, min(64, triton.next_power_of_2(dv)))
    return block_l, block_k, block_v, triton.cdiv(t, block_l), triton.cdiv(dv, block_v)


class ChunkedGatedLinear(torch.autograd.Function):
    """(q, k, v, log_decay, beta, state) → (o (B, H, T, dv) float32, final state (B, H, dk, dv) float32)."""

    @staticmethod
    def forward(ctx, q, k, v, log_decay, beta, state, scale: float):
        dtypes = [x.dtype if x is not None else None for x in (q, k, v, log_decay, beta, state)]
        q, k, v, g = (x.float().contiguous() for x in (q, k, v, log_decay))
        beta = beta.float().contiguous() if beta is not None else None
        bsz, heads, t, dk = q.shape
        dv, per_dim = v.shape[-1], g.dim() == 4
        block_l, block_k, block_v, n_chunks, n_vblocks = _blocks(t, dk, dv, per_dim, beta is not None)
        o = buffers.empty(bsz, heads, t, dv, dtype=torch.float32, device=q.device)
        states = buffers.empty(bsz, heads, n_chunks, dk, dv, dtype=torch.float32, device=q.device)
        s_last = buffers.empty(bsz, heads, dk, dv, dtype=torch.float32, device=q.device)
        s0 = state.float().contiguous() if state is not None else s_last
        blocks = dict(BLOCK_L=block_l, BLOCK_K=block_k, BLOCK_V=block_v)
        grid = (bsz * heads, n_vblocks)
        if beta is None:
            _fwd[grid](q, k, v, g, s0, o, states, s_last, t, dk, dv, n_chunks, scale,
                       HAS_S0=state is not None, PER_DIM=per_dim, **blocks)
        else:
            _delta_fwd[grid](q, k, v, g, beta, s0, o, states, s_last, t, dk, dv, n_chunks, scale,
                             HAS_S0=state is not None, **blocks)
        ctx.save_for_backward(q, k, v, g, beta, states)
        ctx.scale, ctx.dtypes = scale, dtypes
        return o, s_last

    @staticmethod
    def backward(ctx, do, ds_last):
        q, k, v, g, beta, states = ctx.saved_tensors
        bsz, heads, t, dk = q.shape
        dv, per_dim = v.shape[-1], g.dim() == 4
        block_l, block_k, block_v, n_chunks, n_vblocks = _blocks(t, dk, dv, per_dim, beta is not None)
        do = (do if do is not None else torch.zeros(bsz, heads, t, dv, device=q.device)).float().contiguous()
        ds_last = (ds_last if ds_last is not None else q.new_zeros(bsz, heads, dk, dv)).float().contiguous()
        dq_p = buffers.empty(n_vblocks, bsz, heads, t, dk, dtype=torch.float32, device=q.device)
        dk_p = buffers.empty(n_vblocks, bsz, heads, t, dk, dtype=torch.float32, device=q.device)
        dg_p = buffers.empty(n_vblocks, *g.shape, dtype=torch.float32, device=q.device)
        dval = buffers.empty_like(v)
        ds0 = buffers.empty(bsz, heads, dk, dv, dtype=torch.float32, device=q.device)
        blocks = dict(BLOCK_L=block_l, BLOCK_K=block_k, BLOCK_V=block_v)
        grid = (bsz * heads, n_vblocks)
        dbeta = None
        if beta is None:
            _bwd[grid](q, k, v, g, states, do, ds_last, dq_p, dk_p, dval, dg_p, ds0,
                       t, dk, dv, n_chunks, bsz * heads, ctx.scale, PER_DIM=per_dim, **blocks)
        else:
            dbeta_p = buffers.empty(n_vblocks, *beta.shape, dtype=torch.float32, device=q.device)
            _delta_bwd[grid](q, k, v, g, beta, states, do, ds_last, dq_p, dk_p, dval, dg_p, dbeta_p, ds0,
                             t, dk, dv, n_chunks, bsz * heads, ctx.scale, **blocks)
            dbeta = dbeta_p.sum(0)
        grads = (dq_p.sum(0), dk_p.sum(0), dval, dg_p.sum(0), dbeta, ds0)
        return (*(x.to(dtype) if dtype is not None else None for x, dtype in zip(grads, ctx.dtypes)), None)


def gated_linear_chunked(q, k, v, log_decay, beta=None, state=None, scale=None, chunk=64):
    """Same contract as `reference.gated_linear_chunked`, computed in float32; `chunk` is the
    reference's and ignored (the kernel walks its own chunks: MAX_CHUNK, PER_DIM_CHUNK, DELTA_CHUNK).
    The delta rule takes one gate per head, as the reference's chunked form."""
    if beta is not None and log_decay.dim() == 4:
        from archlang.spec.errors import ArchError  # kernels import nothing from spec at module load

        raise ArchError("the chunked delta rule takes one decay per head, not one per key dimension")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, s = ChunkedGatedLinear.apply(q, k, v, log_decay, beta, state, float(scale))
    return o.to(v.dtype), s
