"""Rotary embedding applied in Triton: x (B, H, T, D) rotated by precomputed cos/sin tables
(T, rot), rotating the first `rot` channels as two halves (every scaling variant is already in
the tables). The backward is the same rotation by the opposite angle. Reference:
`reference.rope`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers


@triton.jit
def _rotate(X, COS, SIN, Y, T, D, ROT, sign, BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0)  # one (batch, head, position) row of D channels
    t = row % T
    half = ROT // 2
    i = tl.arange(0, BLOCK_HALF)
    m = i < half
    x1 = tl.load(X + row * D + i, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(X + row * D + half + i, mask=m, other=0.0).to(tl.float32)
    c = tl.load(COS + t * ROT + i, mask=m, other=0.0).to(tl.float32)
    s = tl.load(SIN + t * ROT + i, mask=m, other=0.0).to(tl.float32) * sign
    tl.store(Y + row * D + i, x1 * c - x2 * s, mask=m)
    tl.store(Y + row * D + half + i, x2 * c + x1 * s, mask=m)
    j = ROT + tl.arange(0, BLOCK_D)  # channels past the rotary part pass through
    mj = j < D
    tl.store(Y + row * D + j, tl.load(X + row * D + j, mask=mj, other=0.0), mask=mj)


def _launch(x, cos, sin, sign):
    x = x.contiguous()
    b, h, t, d = x.shape
    rot = cos.shape[-1]
    y = buffers.empty_like(x)
    _rotate[(b * h * t,)](x, cos.contiguous(), sin.contiguous(), y, t, d, rot, sign,
                          BLOCK_HALF=triton.next_power_of_2(max(rot // 2, 1)),
                          BLOCK_D=triton.next_power_of_2(max(d - rot, 1)))
    return y


class RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _launch(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _launch(dy, cos, sin, -1.0), None, None


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return RopeFunction.apply(x, cos.to(torch.float32), sin.to(torch.float32))
