"""The layer library generated models import as `rt`: explicit-argument modules, no globals."""

from .attention import Attention, DifferentialAttention, LinearAttention, MLAttention
from .context import Cache, Context
from .ffn import glu, softcap
from .gated_linear import GLA, RWKV7, GatedDeltaNet, Retention
from .indexer import LightningIndexer
from .mamba2 import Mamba2
from .model import ArchModel, layer_stack
from .moe import MoE
from .norm import LayerNorm, RMSNorm
from .position import AlibiSlopes, RelativePositionBias, RopeTable, SinusoidalPositions, apply_rope, rope_qk
from .ssm import Mamba

__all__ = [
    "AlibiSlopes", "ArchModel", "Attention", "Cache", "Context", "DifferentialAttention", "GLA", "GatedDeltaNet",
    "LayerNorm", "LightningIndexer", "LinearAttention", "MLAttention", "Mamba", "Mamba2", "MoE", "RMSNorm", "RWKV7", "RelativePositionBias",
    "Retention", "RopeTable", "SinusoidalPositions", "apply_rope", "glu", "layer_stack", "rope_qk", "softcap",
]
