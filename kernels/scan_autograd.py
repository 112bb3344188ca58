"""Mamba's selective scan with a hand-written backward, for training on the CPU.

Autograd through the reference's step loop records one multiply-add per time step and, in the
backward, materialises a zero-filled (B, L, N, d_inner) gradient for every step's slice of the
chunk: the backward then costs tens of times the forward. This Function runs the forward without
autograd (the in-place chunk loop), keeps only the state at each chunk boundary, and in the
backward recomputes one chunk's states at a time and runs the adjoint recurrence over it.

All tensors here are in the reference's internal layout, channels last: u, delta (B, T, di);
A (N, di); B, C (B, T, N); states (B, N, di). It computes in the dtype it is given (the reference
gives float32; the tests give float64).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def chunk_inputs(u, delta, A, B, start: int, chunk: int):
    """The discretised decays a_t = exp(delta_t A) and inputs b_t = delta_t u_t B_t of one chunk,
    each (B, L, N, di)."""
    dt = delta[:, start:start + chunk, None, :]  # (B, L, 1, di)
    decay = (dt * A).exp_()
    drive = (dt * u[:, start:start + chunk, None, :]) * B[:, start:start + chunk, :, None]
    return decay, drive


def run_chunk_in_place(decay, drive, h):
    """h_t = a_t h_{t-1} + b_t over the chunk, each state written over its input b_t (no autograd).
    Returns the chunk's states (the `drive` buffer) and the last one."""
    for i in range(drive.shape[1]):
        h = drive[:, i].addcmul_(decay[:, i], h)
    return drive, h


def readout(states, C, start: int, chunk: int):
    """y_t = C_t · h_t for the chunk: (B, di, L)."""
    return torch.einsum("blnd,bln->bdl", states, C[:, start:start + chunk])


class SelectiveScan(torch.autograd.Function):
    """(u, delta, A, B, C, h0) → (y (B, di, T) without the D skip, final state (B, N, di)).

    Forward: h_t = a_t ⊙ h_{t-1} + b_t with a_t = exp(delta_t A), b_t = delta_t u_t B_t, and
    y_t[d] = Σ_n C_t[n] h_t[n, d]; h_0 is the initial state (zeros when none is given).

    Backward, with ȳ_t the gradient of y_t and h̄ that of the final state h_T. The adjoint
    g_t = dL/dh_t (through every later step) satisfies the same recurrence run backwards:

        g_T = C_T ⊗ ȳ_T + h̄,    g_t = C_t ⊗ ȳ_t + a_{t+1} ⊙ g_{t+1},

    and since h_t depends on a_t, b_t and h_{t-1} only through the multiply-add,
    ā_t = g_t ⊙ h_{t-1}, b̄_t = g_t, and h̄_0 = a_1 ⊙ g_1. Through a_t = exp(delta_t A) and
    b_t = delta_t u_t B_t, with s_t = a_t ⊙ ā_t = g_t ⊙ h_{t-1} ⊙ a_t:

        deltā_t[d] = Σ_n s_t[n, d] A[n, d] + u_t[d] Σ_n g_t[n, d] B_t[n]
        ū_t[d]     = delta_t[d] Σ_n g_t[n, d] B_t[n]
        Ā[n, d]    = Σ_{batch, t} s_t[n, d] delta_t[d]
        B̄_t[n]     = Σ_d g_t[n, d] delta_t[d] u_t[d]
        C̄_t[n]     = Σ_d ȳ_t[d] h_t[n, d]

    The forward saves h at each chunk's start; the backward walks the chunks in reverse,
    recomputes a chunk's decays, inputs and states from its start state (the same operations as
    the forward, so the same values), runs the adjoint recurrence over the chunk in place, and
    passes a_start ⊙ g_start on to the chunk before it.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk: int):
        bsz, t, di = u.shape
        h = h0 if h0 is not None else u.new_zeros(bsz, A.shape[0], di)  # read, never written
        starts, ys = [], []
        for start in range(0, t, chunk):
            starts.append(h)
            states, h = run_chunk_in_place(*chunk_inputs(u, delta, A, B, start, chunk), h)
            ys.append(readout(states, C, start, chunk))
            h = h.clone()  # a view would keep the chunk's whole (B, L, N, di) buffer alive as a saved start
        y = torch.cat(ys, dim=2) if ys else u.new_zeros(bsz, di, 0)
        ctx.save_for_backward(u, delta, A, B, C, *starts)
        ctx.chunk, ctx.has_h0 = chunk, h0 is not None
        return y, h

    @staticmethod
    @once_differentiable  # the backward runs in place on its own buffers: no graph of it is kept
    def backward(ctx, dy, dh_last):
        u, delta, A, B, C, *starts = ctx.saved_tensors
        chunk, t = ctx.chunk, u.shape[1]
        dy = dy.transpose(1, 2)  # (B, T, di), as the inputs
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        carry = dh_last.clone()  # a_{t+1} ⊙ g_{t+1} from the chunk after, for the chunk's last step
        for index in reversed(range(len(starts))):
            start = index * chunk
            end = min(start + chunk, t)
            h_start = starts[index]
            decay, drive = chunk_inputs(u, delta, A, B, start, chunk)
            states, _ = run_chunk_in_place(decay, drive, h_start)
            dy_c, dt, u_c, B_c = dy[:, start:end], delta[:, start:end], u[:, start:end], B[:, start:end]
            # batched (N, di) products below run on the contiguous layout as they are (no copies)
            dC[:, start:end] = (states @ dy_c[..., None]).squeeze(-1)  # Σ_d ȳ_t h_t
            # g_t = C_t ⊗ ȳ_t + a_{t+1} ⊙ g_{t+1}, walked backwards in place
            g = C[:, start:end, :, None] * dy_c[:, :, None, :]  # (B, L, N, di)
            g[:, -1].add_(carry)
            for i in range(g.shape[1] - 2, -1, -1):
                g[:, i].addcmul_(decay[:, i + 1], g[:, i + 1])
            # s_t = g_t ⊙ a_t ⊙ h_{t-1}; before the last factor, its first step is what goes on to the chunk before
            # (written over the decays, and s ⊙ A over the states: neither is read again)
            s = decay.mul_(g)
            carry = s[:, 0].clone()
            s[:, 0].mul_(h_start)
            s[:, 1:].mul_(states[:, :-1])
            g_b = (B_c[:, :, None, :] @ g).squeeze(2)  # Σ_n g_t B_t, (B, L, di)
            ddelta[:, start:end] = torch.mul(s, A, out=states).sum(2).addcmul_(u_c, g_b)
            du[:, start:end] = dt * g_b
            dA += s.mul_(dt[:, :, None]).sum((0, 1))
            dB[:, start:end] = (g @ (dt * u_c)[..., None]).squeeze(-1)
        return du, ddelta, dA, dB, dC, carry if ctx.has_h0 else None, None
