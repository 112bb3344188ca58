"""One place that decides, per call, whether an op runs as a Triton kernel or as its PyTorch
reference: Triton on CUDA tensors when Triton is importable, the reference everywhere else.

`ARCHLANG_KERNELS=reference` forces the references; tests use `force()` to run both paths on the
same inputs.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from . import reference

_forced: str | None = None


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def use_triton(x: torch.Tensor) -> bool:
    mode = _forced or os.environ.get("ARCHLANG_KERNELS", "auto")
    if mode == "reference":
        return False
    if mode == "triton":
        return triton_available()
    return x.is_cuda and triton_available()


@contextlib.contextmanager
def force(mode: str):
    """Run a block with kernels forced to "triton" or "reference" (tests, benchmarks)."""
    global _forced
    previous, _forced = _forced, mode
    try:
        yield
    finally:
        _forced = previous


def rms_norm(x, weight, eps, unit_offset=False, residual=None):
    if use_triton(x):
        from .rms_norm import rms_norm as triton_rms_norm

        return triton_rms_norm(x, weight, eps, unit_offset, residual)
    return reference.rms_norm(x, weight, eps, unit_offset, residual)


def layer_norm(x, weight, bias, eps, residual=None):
    if use_triton(x):
        from .layer_norm import layer_norm as triton_layer_norm

        return triton_layer_norm(x, weight, bias, eps, residual)
    return reference.layer_norm(x, weight, bias, eps, residual)


def glu(x, act: str):
    if use_triton(x):
        from .glu import glu as triton_glu

        return triton_glu(x, act)
    return reference.glu(x, act)


def attention(q, k, v, q_pos, k_pos, **kw):
    if use_triton(q):
        from .attention import attention as triton_attention

        return triton_attention(q, k, v, q_pos, k_pos, **kw)
    return reference.attention(q, k, v, q_pos, k_pos, **kw)
