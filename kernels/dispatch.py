"""The seam between the runtime and the kernels: every fused op the generated code calls goes
through here, and here alone is it decided which implementation runs: the Triton kernel for
CUDA tensors when Triton is installed, the PyTorch reference (kernels/reference.py) otherwise.

`ARCHLANG_KERNELS=reference` forces the references everywhere; `ARCHLANG_KERNELS=triton` forces
the kernels (on CPU tensors too, under `TRITON_INTERPRET=1`); tests use `force()`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
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
    if mode == "reference" or torch.compiler.is_compiling():
        return False
    if mode == "triton":
        return triton_available()
    return x.is_cuda and triton_available()


@contextlib.contextmanager
def force(mode: str):
    """Run a block with every op on "triton" or on "reference"."""
    global _forced
    previous, _forced = _forced, mode
    try:
        yield
    finally:
        _forced = previous


def _kernel(module: str, name: str):
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def rms_norm(x, weight, eps, unit_offset=False, residual=None):
    if use_triton(x):
        return _kernel("rms_norm", "rms_norm")(x, weight, eps, unit_offset, residual)
    return reference.rms_norm(x, weight, eps, unit_offset, residual)


def layer_norm(x, weight, bias, eps, residual=None):
    if use_triton(x):
        return _kernel("layer_norm", "layer_norm")(x, weight, bias, eps, residual)
    return reference.layer_norm(x, weight, bias, eps, residual)


def glu(x, act: str):
    if use_triton(x):
        return _kernel("glu", "glu")(x, act)
    return reference.glu(x, act)


def rope(x, cos, sin):
    if use_triton(x):
        return _kernel("rope", "rope")(x, cos, sin)
    return reference.rope(x, cos, sin)


def norm_rope(x, weight, eps, cos, sin, unit_offset=False):
    """RoPE of a per-head RMSNorm (QK-norm), fused on the kernels."""
    if use_triton(x):
        return _kernel("norm_rope", "norm_rope")(x, weight, eps, cos, sin, unit_offset)
    return reference.rope(reference.rms_norm(x, weight, eps, unit_offset), cos, sin)


def attention(q, k, v, q_pos, k_pos, **kw):
    # dropout on the probabilities needs them whole: only the reference draws it
    # (nor does the kernel build a sparse selection `allow`, a dilated window or global tokens)
    masks = kw.get("allow") is not None or (kw.get("dilation") or 1) > 1 or bool(kw.get("global_tokens"))
    if use_triton(q) and not kw.get("dropout") and not masks:
        for name in ("dropout", "allow", "dilation", "global_tokens"):
            kw.pop(name, None)
        return _kernel("attention", "attention")(q, k, v, q_pos, k_pos, **kw)
    return reference.attention(q, k, v, q_pos, k_pos, **kw)


def linear_cross_entropy(hidden, weight, target, *, ignore_index=-100, softcap=None):
    if use_triton(hidden):
        return _kernel("cross_entropy", "linear_cross_entropy")(hidden, weight, target, ignore_index=ignore_index,
                                                                softcap=softcap)
    return reference.linear_cross_entropy(hidden, weight, target, ignore_index=ignore_index, softcap=softcap)


def selective_scan(u, delta, A, B, C, D, state=None):
    if use_triton(u):
        return _kernel("selective_scan", "selective_scan")(u, delta, A, B, C, D, state)
    return reference.selective_scan(u, delta, A, B, C, D, state)


def ssd_chunked(x, dt, A, B, C, chunk, initial_state=None):
    if use_triton(x):
        return _kernel("ssd", "ssd_chunked")(x, dt, A, B, C, chunk, initial_state)
    return reference.ssd_chunked(x, dt, A, B, C, chunk, initial_state)


def gated_linear_chunked(q, k, v, log_decay, beta=None, state=None, scale=None, chunk=64):
    # the kernel computes in float32: the reference keeps float64 in float64
    if use_triton(q) and v.dtype != torch.float64:
        return _kernel("gated_linear", "gated_linear_chunked")(q, k, v, log_decay, beta, state, scale, chunk)
    return reference.gated_linear_chunked(q, k, v, log_decay, beta, state, scale, chunk)


def route(logits, top_k, *, sigmoid, normalize, scale, correction_bias=None, n_group=1, topk_group=1,
          group_score="top2_sum", normalize_min=0.0):
    kw = dict(sigmoid=sigmoid, normalize=normalize, scale=scale, correction_bias=correction_bias, n_group=n_group,
              topk_group=topk_group, group_score=group_score, normalize_min=normalize_min)
    if use_triton(logits):
        return _kernel("router", "route")(logits, top_k, **kw)
    return reference.route(logits, top_k, **kw)


def grouped_matmul(x, weight, counts, expert_of):
    if use_triton(x):
        return _kernel("grouped_matmul", "grouped_matmul")(x, weight, counts, expert_of)
    return reference.grouped_matmul(x, weight, counts, expert_of)
