"""The layer library generated models import as `rt`: explicit-argument modules, no globals."""

from .attention import Attention, DifferentialAttention, LinearAttention, MLAttention
from .context import Cache, Context
from .depth_router import DepthRouter, depth_routing, set_depth_routing
from .ffn import glu, softcap
from .gated_linear import GLA, RWKV7, GatedDeltaNet, Retention
from .gau import GAU
from .heads import HeadTransform, MLMHead, pool_tokens
from .indexer import LightningIndexer
from .lightning import Lightning
from .linear_mixers import GatedDeltaNetLayer, GLALayer, RetentionLayer
from .lora import LoRA
from .mamba2 import Mamba2
from .model import ArchModel, layer_stack
from .moe import MoE
from .mtp import MTPModule, add_aux_losses, mtp_context
from .norm import LayerNorm, RMSNorm
from .position import (AlibiSlopes, LearnedPositions, RelativePositionBias, RopeTable, SinusoidalPositions, apply_rope,
                       rope_qk)
from .rglru import RGLRU
from .rwkv import RWKV4TimeMix, RWKV7ChannelMix, RWKV7TimeMix, RWKVChannelMix
from .s4 import S4D
from .short_conv import ShortConv
from .ssm import Mamba
from .xlstm import MLSTMLayer, SLSTMLayer

__all__ = [
    "AlibiSlopes", "ArchModel", "Attention", "Cache", "Context", "DepthRouter", "DifferentialAttention", "GAU", "GLA",
    "GLALayer", "GatedDeltaNet", "GatedDeltaNetLayer", "LayerNorm", "LearnedPositions", "LightningIndexer",
    "LinearAttention", "LoRA", "MLAttention", "MLMHead", "MLSTMLayer", "MTPModule", "Mamba", "Mamba2", "MoE", "RMSNorm",
    "RWKV7", "RelativePositionBias", "Retention", "RetentionLayer", "RopeTable", "S4D", "SLSTMLayer", "ShortConv",
    "SinusoidalPositions",
    "RWKV4TimeMix", "RWKV7ChannelMix", "RWKV7TimeMix", "RWKVChannelMix",
    "Lightning", "RGLRU",
    "add_aux_losses", "apply_rope", "depth_routing", "glu", "layer_stack", "mtp_context", "rope_qk",
    "set_depth_routing", "softcap",
]

from .gated_linear import KDA  # noqa: E402  (Kimi Delta Attention: its core, and the layer with its projections)
from .linear_mixers import KDALayer  # noqa: E402

__all__ += ["KDA", "KDALayer"]

from .electra import MLPClassifier, RTDHead, electra_loss  # noqa: E402  (ELECTRA's heads and pre-training objective)

__all__ += ["MLPClassifier", "RTDHead", "electra_loss"]
from .zamba2 import PerUseLinear, concat_stack_input, hand_off, take_hand_off  # noqa: E402  (Zamba2's hybrid wiring)

__all__ += ["PerUseLinear", "concat_stack_input", "hand_off", "take_hand_off"]
__all__ += ["HeadTransform", "pool_tokens"]  # ModernBERT's classifier transform and sequence pooling
from .disentangled import DisentangledAttention, RelativeEmbeddings  # noqa: E402  (DeBERTa)

__all__ += ["DisentangledAttention", "RelativeEmbeddings"]
from .blt import ByteLatentTransformer, StackSpec  # noqa: E402  (the Byte Latent Transformer and its stacks)
