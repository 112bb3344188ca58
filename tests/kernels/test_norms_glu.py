"""Triton RMSNorm/LayerNorm (with fused residual) and GLU against their PyTorch references:
outputs and gradients, ragged widths, poisoned output buffers."""

import pytest
import torch

from archlang.kernels import reference
from archlang.kernels.glu import glu
from archlang.kernels.layer_norm import layer_norm
from archlang.kernels.rms_norm import rms_norm

from .conftest import DEVICE, TOL

SHAPES = [(3, 5, 37), (2, 64), (1, 7, 129)]  # widths that are not multiples of the block


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]


def _compare(fn_kernel, fn_ref, inputs, dtype):
    a = _leaves(*inputs)
    b = _leaves(*inputs)
    out_k, out_r = fn_kernel(*a), fn_ref(*b)
    out_k = out_k if isinstance(out_k, tuple) else (out_k,)
    out_r = out_r if isinstance(out_r, tuple) else (out_r,)
    for x, y in zip(out_k, out_r):
        torch.testing.assert_close(x, y, **TOL[dtype])
    grads = [torch.randn_like(o) for o in out_r]
    torch.autograd.backward(out_k, grads)
    torch.autograd.backward(out_r, grads)
    for x, y in zip(a, b):
        if x is not None:
            torch.testing.assert_close(x.grad, y.grad, **TOL[dtype])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("unit_offset", [False, True])
def test_rms_norm(shape, residual, unit_offset):
    dtype = torch.float32
    x = torch.randn(shape, device=DEVICE, dtype=dtype)
    w = torch.randn(shape[-1], device=DEVICE, dtype=dtype)
    r = torch.randn(shape, device=DEVICE, dtype=dtype) if residual else None
    _compare(lambda x, w, r: rms_norm(x, w, 1e-6, unit_offset, r),
             lambda x, w, r: reference.rms_norm(x, w, 1e-6, unit_offset, r), (x, w, r), dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_layer_norm(shape, residual, bias):
    dtype = torch.float32
    x = torch.randn(shape, device=DEVICE, dtype=dtype)
    w = torch.randn(shape[-1], device=DEVICE, dtype=dtype)
    b = torch.randn(shape[-1], device=DEVICE, dtype=dtype) if bias else None
    r = torch.randn(shape, device=DEVICE, dtype=dtype) if residual else None
    _compare(lambda x, w, b, r: layer_norm(x, w, b, 1e-5, r),
             lambda x, w, b, r: reference.layer_norm(x, w, b, 1e-5, r), (x, w, b, r), dtype)


@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("shape", [(3, 5, 2 * 37), (2, 2 * 1100)])
def test_glu(act, shape):
    x = torch.randn(shape, device=DEVICE)
    _compare(lambda x: glu(x, act), lambda x: reference.glu(x, act), (x,), torch.float32)


def test_rms_norm_bf16():
    x = torch.randn(4, 67, device=DEVICE, dtype=torch.bfloat16)
    w = torch.randn(67, device=DEVICE, dtype=torch.bfloat16)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6), **TOL[torch.bfloat16])


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_glu_bf16(act):
    x = torch.randn(4, 2 * 67, device=DEVICE, dtype=torch.bfloat16)
    torch.testing.assert_close(glu(x, act).float(), reference.glu(x.float(), act), **TOL[torch.bfloat16])
