"""The seam between the runtime and the kernels: every fused op the generated code calls goes
through here. Today every op runs its PyTorch reference (kernels/reference.py), which is what
CPU machines use; a Triton kernel for an op plugs in here, chosen by tensor device.
"""

from __future__ import annotations

from . import reference

rms_norm = reference.rms_norm
layer_norm = reference.layer_norm
glu = reference.glu
attention = reference.attention
