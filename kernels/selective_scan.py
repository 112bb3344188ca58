"""Mamba's selective scan in Triton, forward and backward.

Each program owns a block of channels and the whole state dimension for one sequence and walks
the time axis, keeping the state in registers: h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t,
y_t = C_t · h_t + D u_t. The forward stores the states for the backward, which walks time in
reverse. Sums over channels (dB, dC) and over the batch (dA) are written as per-program
partials and reduced afterwards. Reference: `reference.selective_scan`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers


@triton.jit
def _step_inputs(U, DT, B, C, b, t, di, T, N, offs_d, offs_n, md, mn):
    """u_t, delta_t (over channels) and B_t, C_t (over the state) of one batch row."""
    u = tl.load(U + b * di * T + offs_d * T + t, mask=md, other=0.0)
    dt = tl.load(DT + b * di * T + offs_d * T + t, mask=md, other=0.0)
    bt = tl.load(B + b * T * N + t * N + offs_n, mask=mn, other=0.0)
    ct = tl.load(C + b * T * N + t * N + offs_n, mask=mn, other=0.0)
    return u, dt, bt, ct


@triton.jit
def _fwd(U, DT, A, B, C, D, H0, Y, HS, HLAST, di, T, N,
         HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    b, pid_d = tl.program_id(0), tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    md, mn = offs_d < di, offs_n < N
    mdn = md[:, None] & mn[None, :]
    a = tl.load(A + offs_d[:, None] * N + offs_n[None, :], mask=mdn, other=0.0)
    dskip = tl.load(D + offs_d, mask=md, other=0.0)
    h = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    if HAS_H0:
        h = tl.load(H0 + b * di * N + offs_d[:, None] * N + offs_n[None, :], mask=mdn, other=0.0)
    for t in range(0, T):
        u, dt, bt, ct = _step_inputs(U, DT, B, C, b, t, di, T, N, offs_d, offs_n, md, mn)
        h = tl.exp(dt[:, None] * a) * h + (dt * u)[:, None] * bt[None, :]
        tl.store(HS + ((b * di + offs_d[:, None]) * T + t) * N + offs_n[None, :], h, mask=mdn)
        y = tl.sum(h * ct[None, :], axis=1) + dskip * u
        tl.store(Y + b * di * T + offs_d * T + t, y, mask=md)
    tl.store(HLAST + b * di * N + offs_d[:, None] * N + offs_n[None, :], h, mask=mdn)


@triton.jit
def _bwd(U, DT, A, B, C, D, H0, HS, DY, DHLAST, DU, DDT, DA_P, DB_P, DC_P, DD_P, DH0, di, T, N, n_blocks,
         HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    b, pid_d = tl.program_id(0), tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    md, mn = offs_d < di, offs_n < N
    mdn = md[:, None] & mn[None, :]
    a = tl.load(A + offs_d[:, None] * N + offs_n[None, :], mask=mdn, other=0.0)
    dskip = tl.load(D + offs_d, mask=md, other=0.0)
    dh = tl.load(DHLAST + b * di * N + offs_d[:, None] * N + offs_n[None, :], mask=mdn, other=0.0)
    da = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    dd = tl.zeros((BLOCK_D,), tl.float32)
    partial = (b * n_blocks + pid_d) * T * N  # this program's rows of the dB/dC partials
    for i in range(0, T):
        t = T - 1 - i
        u, dt, bt, ct = _step_inputs(U, DT, B, C, b, t, di, T, N, offs_d, offs_n, md, mn)
        dy = tl.load(DY + b * di * T + offs_d * T + t, mask=md, other=0.0)
        h = tl.load(HS + ((b * di + offs_d[:, None]) * T + t) * N + offs_n[None, :], mask=mdn, other=0.0)
        if t > 0:
            h_prev = tl.load(HS + ((b * di + offs_d[:, None]) * T + t - 1) * N + offs_n[None, :], mask=mdn, other=0.0)
        else:
            if HAS_H0:
                h_prev = tl.load(H0 + b * di * N + offs_d[:, None] * N + offs_n[None, :], mask=mdn, other=0.0)
            else:
                h_prev = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
        dh += dy[:, None] * ct[None, :]
        tl.store(DC_P + partial + t * N + offs_n, tl.sum(dy[:, None] * h, axis=0), mask=mn)
        dd += dy * u
        decay = tl.exp(dt[:, None] * a)
        g = dh * h_prev * decay  # d/d(dt * a) of the decay term
        da += g * dt[:, None]
        ddt = tl.sum(g * a, axis=1) + tl.sum(dh * bt[None, :], axis=1) * u
        du = tl.sum(dh * bt[None, :], axis=1) * dt + dy * dskip
        tl.store(DB_P + partial + t * N + offs_n, tl.sum(dh * (dt * u)[:, None], axis=0), mask=mn)
        tl.store(DDT + b * di * T + offs_d * T + t, ddt, mask=md)
        tl.store(DU + b * di * T + offs_d * T + t, du, mask=md)
        dh = dh * decay
    tl.store(DA_P + b * di * N + offs_d[:, None] * N + offs_n[None, :], da, mask=mdn)
    tl.store(DD_P + b * di + offs_d, dd, mask=md)
    tl.store(DH0 + b * di * N + offs_d[:, None] * N + offs_n[None, :], dh, mask=mdn)


def _blocks(di: int, n: int) -> tuple[int, int, int]:
    block_n = triton.next_power_of_2(n)
    block_d = 16
    return block_d, block_n, triton.cdiv(di, block_d)


class SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, state):
        u, delta = u.float().contiguous(), delta.float().contiguous()
        A, B, C, D = A.float().contiguous(), B.float().contiguous(), C.float().contiguous(), D.float().contiguous()
        bsz, di, t = u.shape
        n = A.shape[1]
        block_d, block_n, n_blocks = _blocks(di, n)
        y = buffers.empty(bsz, di, t, dtype=torch.float32, device=u.device)
        hs = buffers.empty(bsz, di, t, n, dtype=torch.float32, device=u.device)
        h_last = buffers.empty(bsz, di, n, dtype=torch.float32, device=u.device)
        h0 = state.float().contiguous() if state is not None else h_last
        _fwd[(bsz, n_blocks)](u, delta, A, B, C, D, h0, y, hs, h_last, di, t, n,
                              HAS_H0=state is not None, BLOCK_D=block_d, BLOCK_N=block_n)
        ctx.save_for_backward(u, delta, A, B, C, D, h0, hs)
        ctx.has_state = state is not None
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, A, B, C, D, h0, hs = ctx.saved_tensors
        bsz, di, t = u.shape
        n = A.shape[1]
        block_d, block_n, n_blocks = _blocks(di, n)
        dy = (dy if dy is not None else torch.zeros_like(u)).float().contiguous()
        dh_last = (dh_last if dh_last is not None else torch.zeros(bsz, di, n, device=u.device)).float().contiguous()
        du, ddt = buffers.empty_like(u), buffers.empty_like(delta)
        da_p = buffers.empty(bsz, di, n, dtype=torch.float32, device=u.device)
        db_p = buffers.empty(bsz, n_blocks, t, n, dtype=torch.float32, device=u.device)
        dc_p = buffers.empty(bsz, n_blocks, t, n, dtype=torch.float32, device=u.device)
        dd_p = buffers.empty(bsz, di, dtype=torch.float32, device=u.device)
        dh0 = buffers.empty(bsz, di, n, dtype=torch.float32, device=u.device)
        _bwd[(bsz, n_blocks)](u, delta, A, B, C, D, h0, hs, dy, dh_last, du, ddt, da_p, db_p, dc_p, dd_p, dh0,
                              di, t, n, n_blocks, HAS_H0=ctx.has_state, BLOCK_D=block_d, BLOCK_N=block_n)
        return (du, ddt, da_p.sum(0), db_p.sum(1), dc_p.sum(1), dd_p.sum(0), dh0 if ctx.has_state else None)


def selective_scan(u, delta, A, B, C, D, state=None, chunk=None):
    """Same contract as `reference.selective_scan` (`chunk` is the reference's and ignored)."""
    return SelectiveScan.apply(u, delta, A, B, C, D, state)
