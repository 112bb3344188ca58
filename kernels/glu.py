"""The GLU activation fused: [gate | up] → act(gate) * up, for SwiGLU (silu) and GeGLU (gelu,
exact or tanh), forward and backward in Triton; the reference is `reference.glu`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers

_ACTS = {"silu": 0, "gelu": 1, "gelu_tanh": 2}


@triton.jit
def _act_and_grad(g, ACT: tl.constexpr):
    if ACT == 0:  # silu
        sig = 1.0 / (1.0 + tl.exp(-g))
        return g * sig, sig * (1.0 + g * (1.0 - sig))
    elif ACT == 1:  # exact gelu
        cdf = 0.5 * (1.0 + tl.erf(g * 0.7071067811865476))
        pdf = tl.exp(-0.5 * g * g) * 0.3989422804014327
        return g * cdf, cdf + g * pdf
    else:  # tanh approximation
        k = 0.7978845608028654
        inner = k * (g + 0.044715 * g * g * g)
        t = 2.0 / (1.0 + tl.exp(-2.0 * inner)) - 1.0
        dinner = k * (1.0 + 3.0 * 0.044715 * g * g)
        return 0.5 * g * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * dinner


@triton.jit
def _fwd(X, Y, n_hidden, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_hidden
    g = tl.load(X + row * 2 * n_hidden + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(X + row * 2 * n_hidden + n_hidden + cols, mask=mask, other=0.0).to(tl.float32)
    a, _ = _act_and_grad(g, ACT)
    tl.store(Y + row * n_hidden + cols, a * u, mask=mask)


@triton.jit
def _bwd(X, DY, DX, n_hidden, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_hidden
    g = tl.load(X + row * 2 * n_hidden + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(X + row * 2 * n_hidden + n_hidden + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * n_hidden + cols, mask=mask, other=0.0).to(tl.float32)
    a, da = _act_and_grad(g, ACT)
    tl.store(DX + row * 2 * n_hidden + cols, dy * u * da, mask=mask)
    tl.store(DX + row * 2 * n_hidden + n_hidden + cols, dy * a, mask=mask)


BLOCK = 1024


class GLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, act):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        rows, hidden = x2.shape[0], x2.shape[1] // 2
        y = buffers.empty(rows, hidden, dtype=x.dtype, device=x.device)
        block = min(BLOCK, triton.next_power_of_2(hidden))
        _fwd[(rows, triton.cdiv(hidden, block))](x2, y, hidden, ACT=_ACTS[act], BLOCK=block)
        ctx.save_for_backward(x2)
        ctx.act, ctx.shape = act, shape
        return y.view(*shape[:-1], hidden)

    @staticmethod
    def backward(ctx, dy):
        (x2,) = ctx.saved_tensors
        rows, hidden = x2.shape[0], x2.shape[1] // 2
        dx = buffers.empty_like(x2)
        block = min(BLOCK, triton.next_power_of_2(hidden))
        _bwd[(rows, triton.cdiv(hidden, block))](x2, dy.reshape(rows, hidden).contiguous(), dx, hidden,
                                                  ACT=_ACTS[ctx.act], BLOCK=block)
        return dx.view(ctx.shape), None


def glu(x, act: str):
    if act not in _ACTS:  # other activations stay on the reference
        from .reference import glu as reference_glu

        return reference_glu(x, act)
    return GLUFunction.apply(x, act)
