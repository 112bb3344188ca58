"""Kernels: each fused op as a Triton kernel with its autograd Function (one op per module:
rms_norm, layer_norm, glu, rope, attention, selective_scan, grouped_matmul, cross_entropy), and
the PyTorch reference of every op in `reference.py`, which is what runs without a GPU and what
the kernels are tested against. `dispatch.py` picks one per call, by tensor device.

The references live in one module, apart from the kernels, so that CPU-only installs never
import Triton.
"""
