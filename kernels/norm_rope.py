"""Per-head RMSNorm followed by the rotary embedding, in one pass (QK-norm as Qwen3, Gemma 3 and
OLMo-style models apply it: each head's query or key normalised over head_dim, then rotated).

x (B, H, T, D) → rope(rmsnorm(x) * w): the row is read once for its RMS and once per half of the
rotated channels, and written once, instead of a full write and re-read between the two ops. The
backward kernel un-rotates the gradient (rotation by the opposite angle), then takes RMSNorm's
backward, accumulating the weight gradient per program as `rms_norm.py` does. Reference:
`reference.rms_norm` then `reference.rope`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers


@triton.jit
def _fwd(X, W, COS, SIN, Y, RSTD, T, D, ROT, eps, UNIT_OFFSET: tl.constexpr,
         BLOCK_D: tl.constexpr, BLOCK_HALF: tl.constexpr):
    row = tl.program_id(0)  # one (batch, head, position) row of D channels
    t = row % T
    cols = tl.arange(0, BLOCK_D)
    m = cols < D
    x = tl.load(X + row * D + cols, mask=m, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    if UNIT_OFFSET:
        w += 1.0
    # channels past the rotary part: normalised, not rotated
    tl.store(Y + row * D + cols, x * rstd * w, mask=m & (cols >= ROT))
    half = ROT // 2
    i = tl.arange(0, BLOCK_HALF)
    mh = i < half
    n1 = tl.load(X + row * D + i, mask=mh, other=0.0).to(tl.float32) * rstd
    n2 = tl.load(X + row * D + half + i, mask=mh, other=0.0).to(tl.float32) * rstd
    w1 = tl.load(W + i, mask=mh, other=0.0).to(tl.float32)
    w2 = tl.load(W + half + i, mask=mh, other=0.0).to(tl.float32)
    if UNIT_OFFSET:
        w1 += 1.0
        w2 += 1.0
    h1, h2 = n1 * w1, n2 * w2
    c = tl.load(COS + t * ROT + i, mask=mh, other=0.0).to(tl.float32)
    s = tl.load(SIN + t * ROT + i, mask=mh, other=0.0).to(tl.float32)
    tl.store(Y + row * D + i, h1 * c - h2 * s, mask=mh)
    tl.store(Y + row * D + half + i, h2 * c + h1 * s, mask=mh)
    tl.store(RSTD + row, rstd)


@triton.jit
def _bwd(DY, X, W, COS, SIN, RSTD, DX, DW_PARTIAL, n_rows, T, D, ROT, rows_per_program,
         UNIT_OFFSET: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    m = cols < D
    half = ROT // 2
    rotated = cols < ROT
    first = cols < half
    # each channel's rotation partner: i ↔ i + half within the rotary part
    partner = tl.where(first, cols + half, cols - half)
    trig = tl.where(first, cols, cols - half)  # index into the (T, ROT) tables' first half
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    if UNIT_OFFSET:
        w += 1.0
    dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for r in range(0, rows_per_program):
        row = pid * rows_per_program + r
        if row < n_rows:
            t = row % T
            dy = tl.load(DY + row * D + cols, mask=m, other=0.0).to(tl.float32)
            dy_partner = tl.load(DY + row * D + partner, mask=m & rotated, other=0.0).to(tl.float32)
            c = tl.load(COS + t * ROT + trig, mask=m & rotated, other=1.0).to(tl.float32)
            s = tl.load(SIN + t * ROT + trig, mask=m & rotated, other=0.0).to(tl.float32)
            # transpose of [[c, -s], [s, c]]: dh1 = dy1 c + dy2 s, dh2 = dy2 c - dy1 s
            dh = tl.where(rotated, dy * c + tl.where(first, s, -s) * dy_partner, dy)
            x = tl.load(X + row * D + cols, mask=m, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            n = x * rstd
            dw += dh * n
            dn = dh * w
            dx = rstd * (dn - n * (tl.sum(dn * n, axis=0) / D))
            tl.store(DX + row * D + cols, dx, mask=m)
    tl.store(DW_PARTIAL + pid * D + cols, dw, mask=m)


class NormRopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, cos, sin, eps, unit_offset):
        x = x.contiguous()
        b, h, t, d = x.shape
        rot = cos.shape[-1]
        y = buffers.empty_like(x)
        rstd = buffers.empty(b * h * t, dtype=torch.float32, device=x.device)
        _fwd[(b * h * t,)](x, weight, cos, sin, y, rstd, t, d, rot, eps, UNIT_OFFSET=unit_offset,
                           BLOCK_D=triton.next_power_of_2(d), BLOCK_HALF=triton.next_power_of_2(max(rot // 2, 1)))
        ctx.save_for_backward(x, weight, cos, sin, rstd)
        ctx.unit_offset = unit_offset
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, cos, sin, rstd = ctx.saved_tensors
        b, h, t, d = x.shape
        rows = b * h * t
        programs = min(rows, 64)
        per = triton.cdiv(rows, programs)
        dx = buffers.empty_like(x)
        dw_partial = buffers.empty(programs, d, dtype=torch.float32, device=x.device)
        _bwd[(programs,)](dy.contiguous(), x, weight, cos, sin, rstd, dx, dw_partial, rows, t, d, cos.shape[-1], per,
                          UNIT_OFFSET=ctx.unit_offset, BLOCK_D=triton.next_power_of_2(d))
        return dx, dw_partial.sum(0).to(weight.dtype), None, None, None, None


def norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
              unit_offset: bool = False) -> torch.Tensor:
    """rope(rms_norm(x, weight)) for x (B, H, T, D), weight (D,), cos/sin (T, rot)."""
    if cos.shape[-1] % 2 or cos.shape[-1] > x.shape[-1]:
        raise ValueError(f"cannot rotate {cos.shape[-1]} of {x.shape[-1]} channels as two halves")
    return NormRopeFunction.apply(x, weight, cos.to(torch.float32).contiguous(), sin.to(torch.float32).contiguous(),
                                  eps, unit_offset)
