"""The layer library generated models import as `rt`: explicit-argument modules, no globals."""

from .attention import Attention, DifferentialAttention, LinearAttention, MLAttention
from .context import Cache, Context
from .depth_router import DepthRouter, depth_routing, set_depth_routing
from .ffn import glu, softcap
from .gated_linear import GLA, RWKV7, GatedDeltaNet, Retention
from .indexer import LightningIndexer
from .linear_mixers import GatedDeltaNetLayer, GLALayer, RetentionLayer
from .lora import LoRA
from .mamba2 import Mamba2
from .model import ArchModel, layer_stack
from .moe import MoE
from .mtp import MTPModule, add_aux_losses, mtp_context
from .norm import LayerNorm, RMSNorm
from .position import AlibiSlopes, RelativePositionBias, RopeTable, SinusoidalPositions, apply_rope, rope_qk
from .short_conv import ShortConv
from .ssm import Mamba

__all__ = [
    "AlibiSlopes", "ArchModel", "Attention", "Cache", "Context", "DepthRouter", "DifferentialAttention", "GLA",
    "GLALayer", "GatedDeltaNet", "GatedDeltaNetLayer", "LayerNorm", "LightningIndexer", "LinearAttention", "LoRA",
    "MLAttention", "MTPModule", "Mamba", "Mamba2", "MoE", "RMSNorm", "RWKV7", "RelativePositionBias", "Retention",
    "RetentionLayer", "RopeTable", "ShortConv", "SinusoidalPositions",
    "add_aux_losses", "apply_rope", "depth_routing", "glu", "layer_stack", "mtp_context", "rope_qk",
    "set_depth_routing", "softcap",
]

from .gated_linear import KDA  # noqa: E402  (Kimi Delta Attention: its core, and the layer with its projections)
from .linear_mixers import KDALayer  # noqa: E402

__all__ += ["KDA", "KDALayer"]
