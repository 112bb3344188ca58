"""LayerNorm with the residual add fused in: (x, residual) → (x + residual, layernorm(x + residual)).

Triton forward and backward kernels, an autograd Function and `layer_norm`; the reference is
`reference.layer_norm`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers


@triton.jit
def _fwd(X, R, S, Y, W, B, MEAN, RSTD, n_cols, eps, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
         BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(R + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(S + row * n_cols + cols, x, mask=mask)
    mean = tl.sum(x, axis=0) / n_cols
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / n_cols + eps)
    y = xc * rstd * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * n_cols + cols, y, mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _bwd(DY, DS, S, W, MEAN, RSTD, DX, DW_PARTIAL, DB_PARTIAL, n_rows, n_cols, rows_per_program,
         HAS_DS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, rows_per_program):
        row = pid * rows_per_program + i
        if row < n_rows:
            s = tl.load(S + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(MEAN + row)
            rstd = tl.load(RSTD + row)
            n = tl.where(mask, (s - mean) * rstd, 0.0)
            dw += dy * n
            db += dy
            dn = dy * w
            dx = rstd * (dn - (tl.sum(dn, axis=0) + n * tl.sum(dn * n, axis=0)) / n_cols)
            if HAS_DS:
                dx += tl.load(DS + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + row * n_cols + cols, dx, mask=mask)
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=mask)
    tl.store(DB_PARTIAL + pid * n_cols + cols, db, mask=mask)


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, residual):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        rows, cols = x2.shape
        y = buffers.empty_like(x2)
        mean = buffers.empty(rows, dtype=torch.float32, device=x.device)
        rstd = buffers.empty(rows, dtype=torch.float32, device=x.device)
        has_res = residual is not None
        s = buffers.empty_like(x2) if has_res else x2
        r = residual.reshape(-1, cols).contiguous() if has_res else x2
        _fwd[(rows,)](x2, r, s, y, weight, bias if bias is not None else weight, mean, rstd, cols, eps,
                      HAS_RESIDUAL=has_res, HAS_BIAS=bias is not None, BLOCK=triton.next_power_of_2(cols))
        ctx.save_for_backward(s, weight, mean, rstd)
        ctx.has_res, ctx.has_bias, ctx.shape = has_res, bias is not None, shape
        return (s.view(shape), y.view(shape)) if has_res else y.view(shape)

    @staticmethod
    def backward(ctx, *grads):
        s, weight, mean, rstd = ctx.saved_tensors
        rows, cols = s.shape
        ds, dy = grads if ctx.has_res else (None, grads[0])
        dy = (dy if dy is not None else torch.zeros(ctx.shape, dtype=s.dtype, device=s.device)).reshape(rows, cols).contiguous()
        programs = min(rows, 64)
        per = triton.cdiv(rows, programs)
        dx = buffers.empty_like(s)
        dw = buffers.empty(programs, cols, dtype=torch.float32, device=s.device)
        db = buffers.empty(programs, cols, dtype=torch.float32, device=s.device)
        has_ds = ds is not None
        _bwd[(programs,)](dy, ds.reshape(rows, cols).contiguous() if has_ds else dy, s, weight, mean, rstd, dx, dw, db,
                          rows, cols, per, HAS_DS=has_ds, BLOCK=triton.next_power_of_2(cols))
        dx = dx.view(ctx.shape)
        return (dx, dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype) if ctx.has_bias else None, None,
                dx if ctx.has_res else None)


def layer_norm(x, weight, bias, eps, residual=None):
    return LayerNormFunction.apply(x, weight, bias, eps, residual)
