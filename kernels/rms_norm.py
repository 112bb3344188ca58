"""RMSNorm with the residual add fused in: (x, residual) → (x + residual, rmsnorm(x + residual)).

Triton kernels for forward and backward (one program per block of rows, fp32 math), an
autograd Function, and `rms_norm`, which the runtime reaches through kernels/dispatch.py. The
PyTorch reference is `reference.rms_norm`; tests/kernels compares the two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers


@triton.jit
def _fwd(X, R, S, Y, W, RSTD, n_cols, eps, HAS_RESIDUAL: tl.constexpr, UNIT_OFFSET: tl.constexpr,
         BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(R + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(S + row * n_cols + cols, x, mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if UNIT_OFFSET:
        w += 1.0
    tl.store(Y + row * n_cols + cols, x * rstd * w, mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _bwd(DY, DS, S, W, RSTD, DX, DW_PARTIAL, n_rows, n_cols, rows_per_program,
         HAS_DS: tl.constexpr, UNIT_OFFSET: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if UNIT_OFFSET:
        w += 1.0
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, rows_per_program):
        row = pid * rows_per_program + i
        if row < n_rows:
            s = tl.load(S + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            n = s * rstd
            dw += dy * n
            dn = dy * w
            dx = rstd * (dn - n * (tl.sum(dn * n, axis=0) / n_cols))
            if HAS_DS:
                dx += tl.load(DS + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + row * n_cols + cols, dx, mask=mask)
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=mask)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, unit_offset, residual):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        rows, cols = x2.shape
        block = triton.next_power_of_2(cols)
        y = buffers.empty_like(x2)
        rstd = buffers.empty(rows, dtype=torch.float32, device=x.device)
        has_res = residual is not None
        s = buffers.empty_like(x2) if has_res else x2
        r = residual.reshape(-1, cols).contiguous() if has_res else x2
        _fwd[(rows,)](x2, r, s, y, weight, rstd, cols, eps, HAS_RESIDUAL=has_res, UNIT_OFFSET=unit_offset, BLOCK=block)
        ctx.save_for_backward(s, weight, rstd)
        ctx.unit_offset, ctx.has_res, ctx.shape = unit_offset, has_res, shape
        if has_res:
            return s.view(shape), y.view(shape)
        return y.view(shape)

    @staticmethod
    def backward(ctx, *grads):
        s, weight, rstd = ctx.saved_tensors
        rows, cols = s.shape
        if ctx.has_res:
            ds, dy = grads
        else:
            ds, (dy,) = None, grads
        dy = (dy if dy is not None else torch.zeros(ctx.shape, dtype=s.dtype, device=s.device)).reshape(rows, cols).contiguous()
        programs = min(rows, 64)
        per = triton.cdiv(rows, programs)
        dx = buffers.empty_like(s)
        dw_partial = buffers.empty(programs, cols, dtype=torch.float32, device=s.device)
        has_ds = ds is not None
        ds2 = ds.reshape(rows, cols).contiguous() if has_ds else dy
        _bwd[(programs,)](dy, ds2, s, weight, rstd, dx, dw_partial, rows, cols, per, HAS_DS=has_ds,
                          UNIT_OFFSET=ctx.unit_offset, BLOCK=triton.next_power_of_2(cols))
        dw = dw_partial.sum(0).to(weight.dtype)
        dx = dx.view(ctx.shape)
        return dx, dw, None, None, (dx if ctx.has_res else None)


def rms_norm(x, weight, eps, unit_offset=False, residual=None):
    return RMSNormFunction.apply(x, weight, eps, unit_offset, residual)
