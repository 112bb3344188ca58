"""The layer library generated models import as `rt`: explicit-argument modules, no globals."""

from .attention import Attention, DifferentialAttention, LinearAttention, MLAttention
from .context import Cache, Context
from .ffn import glu, softcap
from .gated_linear import GLA, RWKV7, GatedDeltaNet, Retention
from .mamba2 import Mamba2
from .model import ArchModel, layer_stack
from .moe import MoE
from .mtp import MTPModule, add_aux_losses, mtp_context
from .norm import LayerNorm, RMSNorm
from .position import AlibiSlopes, RelativePositionBias, RopeTable, SinusoidalPositions, apply_rope, rope_qk
from .ssm import Mamba

__all__ = [
    "AlibiSlopes", "ArchModel", "Attention", "Cache", "Context", "DifferentialAttention", "GLA", "GatedDeltaNet",
    "LayerNorm", "LinearAttention", "MLAttention", "MTPModule", "Mamba", "Mamba2", "MoE", "RMSNorm", "RWKV7", "RelativePositionBias",
    "Retention", "RopeTable", "SinusoidalPositions", "add_aux_losses", "apply_rope", "glu", "layer_stack", "mtp_context", "rope_qk", "softcap",
]
