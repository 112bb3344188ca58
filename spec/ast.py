"""The validated AST: immutable pydantic models, one per construct of the language.

This is the single source of truth about a model after `import`, `extends` and constants are
resolved: every value is concrete (no expressions) and every default that depends on the model
(an attention's `head_dim`, Mamba's `dt_rank`) has been filled in by `resolve.py`.
Cross-field rules live in validators next to the fields they check and raise `FieldError`,
which names the field so the error can point at the value in the source.
"""

from __future__ import annotations

import keyword
import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .value_types import BlockName

# Bounds that keep hostile specs from allocating absurd amounts of memory downstream.
MAX_DIM = 1 << 24  # widths, vocabularies, context lengths
MAX_LAYERS = 4096
MAX_EXPERTS = 4096

Dim = Annotated[int, Field(gt=0, le=MAX_DIM)]
Count = Annotated[int, Field(ge=0, le=MAX_DIM)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
Activation = Literal["relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "relu2"]  # relu2: relu(x)² (Primer)
Dtype = Literal["float32", "bfloat16", "float16"]
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16", "half": "float16"}


class FieldError(ValueError):
    """A validation failure attributed to one field (so the error points at its value)."""

    def __init__(self, field: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.field, self.message, self.hint = field, message, hint


def check_identifier(name: str, what: str) -> str:
    """Names reach generated Python code, so they must be plain, safe identifiers."""
    if not name.isidentifier() or not name.isascii():
        raise ValueError(f"{what} name {name!r} is not a valid identifier")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ValueError(f"{what} name `{name}` is a Python keyword")
    if name.startswith("__"):
        raise ValueError(f"{what} name `{name}` may not start with `__`")
    return name


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


# ----------------------------------------------------------------------------- norms


class Norm(Node):
    """`rmsnorm(eps = 1e-5, placement = pre)`; `layernorm(eps = 1e-12, bias = true)`."""

    kind: Literal["layernorm", "rmsnorm"]
    eps: PositiveFloat = 1e-5
    bias: bool | None = None  # layernorm default true; rmsnorm has none
    unit_offset: bool = False  # weight stored as w - 1 and applied as (1 + w), as in Gemma
    # pre: norm → sublayer → add; post: sublayer → add → norm; sandwich: norm → sublayer → norm → add;
    # output: sublayer → norm → add (OLMo 2: the norm on the branch's output only);
    # normed_residual: norm → sublayer → add to the normalised input (MiniMax: the residual stream
    # carries each sublayer's normalised input)
    placement: Literal["pre", "post", "sandwich", "output", "normed_residual"] = "pre"

    @model_validator(mode="after")
    def _bias(self) -> "Norm":
        if self.kind == "rmsnorm" and self.bias:
            raise FieldError("bias", "rmsnorm has no bias", "use layernorm(bias = true) for a norm with a bias")
        if self.bias is None:
            object.__setattr__(self, "bias", self.kind == "layernorm")
        return self


# ----------------------------------------------------------------------------- positions


class LinearScaling(Node):
    """Position interpolation: positions are divided by `factor`."""

    kind: Literal["linear"]
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)]


class NTKScaling(Node):
    """NTK-aware scaling: the base is stretched to theta * factor ** (d / (d - 2))."""

    kind: Literal["ntk"]
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)]


class YarnScaling(Node):
    """YaRN (Peng et al. 2023): per-frequency interpolation with a ramp, plus attention temperature."""

    kind: Literal["yarn"]
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)]
    original_context: Dim
    beta_fast: PositiveFloat = 32.0
    beta_slow: PositiveFloat = 1.0
    mscale: NonNegFloat = 1.0
    mscale_all_dim: NonNegFloat = 0.0
    # the ramp's bounds rounded outwards to whole dimensions (the paper, DeepSeek); gpt-oss keeps them exact
    truncate: bool = True


class Llama3Scaling(Node):
    """Llama 3.1's frequency-dependent scaling between a low and a high wavelength bound."""

    kind: Literal["llama3"]
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)]
    low_freq_factor: PositiveFloat = 1.0
    high_freq_factor: PositiveFloat = 4.0
    original_context: Dim = 8192

    @model_validator(mode="after")
    def _order(self) -> "Llama3Scaling":
        # equal factors leave no band between the two wavelengths: a step (Llama 4 Scout), as in transformers
        if self.high_freq_factor < self.low_freq_factor:
            raise FieldError("high_freq_factor", "high_freq_factor must not be below low_freq_factor")
        return self


# Written as numbers, never coerced from true/false.
FactorList = Annotated[tuple[Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)], ...], Field(min_length=1)]


class LongRopeScaling(Node):
    """LongRoPE (Phi-3): one factor per rotated frequency, `short_factor` within the original
    context and `long_factor` beyond it, and an attention factor on cos/sin (default
    sqrt(1 + ln(factor) / ln(original_context)), factor = context / original_context)."""

    kind: Literal["longrope"]
    short_factor: FactorList
    long_factor: FactorList
    original_context: Dim
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = None
    attention_factor: PositiveFloat | None = None

    @model_validator(mode="after")
    def _lengths(self) -> "LongRopeScaling":
        if len(self.short_factor) != len(self.long_factor):
            raise FieldError("long_factor", f"long_factor has {len(self.long_factor)} values and short_factor "
                             f"{len(self.short_factor)}", "give one factor per rotated frequency (rotated dim / 2) in each")
        return self


class DynamicScaling(Node):
    """Dynamic NTK: past `original_context` tokens the base is stretched by the current length,
    theta * (factor * len / original_context - (factor - 1)) ** (d / (d - 2))."""

    kind: Literal["dynamic"]
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)]
    original_context: Dim


RopeScaling = Annotated[Union[LinearScaling, NTKScaling, YarnScaling, Llama3Scaling, LongRopeScaling, DynamicScaling],
                        Field(discriminator="kind")]


class Rope(Node):
    """Rotary embeddings; `dim` rotates only the first `dim` channels of each head (partial RoPE)."""

    kind: Literal["rope"]
    theta: PositiveFloat = 10000.0
    dim: Dim | None = None
    scaling: RopeScaling | None = None

    @field_validator("dim")
    @classmethod
    def _even(cls, v: int | None) -> int | None:
        if v is not None and v % 2:
            raise ValueError(f"rope dim must be even, got {v}")
        return v


class Sinusoidal(Node):
    """The fixed sin/cos table of Vaswani et al., added to the embeddings."""

    kind: Literal["sinusoidal"]


class Learned(Node):
    """A learned absolute position table of `context` rows, added to the embeddings (GPT-2, BERT)."""

    kind: Literal["learned"]


class Alibi(Node):
    """Linear biases on attention scores (Press et al. 2021); no parameters."""

    kind: Literal["alibi"]


class Relative(Node):
    """T5's bucketed relative position bias, learned per head and shared across layers of a stack."""

    kind: Literal["relative"]
    buckets: Dim = 32
    max_distance: Dim = 128


Position = Annotated[Union[Rope, Sinusoidal, Learned, Alibi, Relative], Field(discriminator="kind")]


# ----------------------------------------------------------------------------- attention


class QKNorm(Node):
    """`qk_norm = rmsnorm(eps = 1e-6)`: q and k normalised before RoPE, per head (Qwen3, Gemma 3)
    or, with `scope = projection`, over the whole q / k projection (OLMo 2); `l2()` is Llama 4's
    weightless norm, applied after RoPE. layernorm has a bias; `unit_offset` stores w - 1 (Gemma).
    `after_rope = true` normalises each head after RoPE instead (Hunyuan)."""

    kind: Literal["rmsnorm", "layernorm", "l2"]
    eps: PositiveFloat = 1e-6
    unit_offset: bool = False
    scope: Literal["head", "projection"] = "head"
    after_rope: bool = False

    @model_validator(mode="after")
    def _variants(self) -> "QKNorm":
        if self.unit_offset and self.kind != "rmsnorm":
            raise FieldError("unit_offset", f"unit_offset is for rmsnorm, not {self.kind}")
        if self.kind == "l2" and self.scope != "head":
            raise FieldError("scope", "l2() normalises each head (Llama 4)", "remove scope")
        if self.after_rope and self.kind == "l2":
            raise FieldError("after_rope", "l2() always runs after RoPE", "remove after_rope")
        if self.after_rope and self.scope != "head":
            raise FieldError("after_rope", "after_rope normalises each rotated head: it needs scope = head",
                             "remove scope, or after_rope")
        return self


class _AttentionCommon(Node):
    heads: Dim
    head_dim: Dim  # filled from d_model / heads when not written
    bias: bool = False  # on the q, k, v projections
    out_bias: bool = False
    window: Dim | None = None  # sliding window: each token sees the last `window` tokens
    softcap: PositiveFloat | None = None  # tanh soft-capping of the scores (Gemma 2)
    scale: PositiveFloat | None = None  # score scale; default 1 / sqrt(head_dim)
    qk_norm: QKNorm | None = None
    sinks: bool = False  # a learned logit per head in every softmax denominator (gpt-oss)
    chunk: Dim | None = None  # attention within chunks of `chunk` positions (Llama 4)
    sink_tokens: Count = 0  # with a window: the first tokens stay visible (StreamingLLM)
    # Longformer's masks beside the window: every dilation-th of the last window * dilation
    # positions, and global tokens (the first positions see and are seen by every position)
    dilation: Dim | None = None
    global_tokens: Count = 0
    # Llama 4's NoPE layers: q scaled by 1 + attn_scale * log1p(floor((pos + 1) / floor_scale))
    temperature_tuning: bool = False
    floor_scale: PositiveFloat | None = None  # default 8192
    attn_scale: PositiveFloat | None = None  # default 0.1
    # Qwen3-Next: each head's output times sigmoid of its own projection of the input, before o_proj
    output_gate: bool = False

    @model_validator(mode="after")
    def _modern_options(self):
        if self.chunk is not None and self.window is not None:
            raise FieldError("chunk", "chunk and window are two different ways to bound attention",
                             "chunked attention (Llama 4) replaces the window: keep one of them")
        if self.sink_tokens and self.window is None:
            raise FieldError("sink_tokens", "sink_tokens keeps the first tokens beside a sliding window",
                             "add window = ..., or remove sink_tokens")
        if self.dilation is not None and self.window is None:
            raise FieldError("dilation", "dilation spreads a sliding window over every dilation-th position",
                             "add window = ..., or remove dilation")
        if self.global_tokens and self.window is None:
            raise FieldError("global_tokens", "global tokens are seen beside a sliding window; without one every "
                             "position already sees every other", "add window = ..., or remove global_tokens")
        if self.global_tokens and self.sink_tokens:
            raise FieldError("global_tokens", "global tokens are already visible to every position, as sink_tokens "
                             "would make them", "keep global_tokens, or sink_tokens (which does not widen what "
                             "the first tokens see)")
        for name in ("floor_scale", "attn_scale"):
            if getattr(self, name) is not None and not self.temperature_tuning:
                raise FieldError(name, f"{name} tunes temperature_tuning", "add temperature_tuning = true")
        return self


class MHA(_AttentionCommon):
    """Multi-head attention: every query head has its own key and value head."""

    kind: Literal["mha"]
    # Falcon-H1: the keys times this factor after their projection (folded into the score scale)
    key_multiplier: PositiveFloat | None = None

    @property
    def kv_heads(self) -> int:
        return self.heads


class MQA(_AttentionCommon):
    """Multi-query attention: one key/value head shared by all query heads."""

    kind: Literal["mqa"]
    # Falcon-H1: the keys times this factor after their projection (folded into the score scale)
    key_multiplier: PositiveFloat | None = None

    @property
    def kv_heads(self) -> int:
        return 1


class GQA(_AttentionCommon):
    """Grouped-query attention: `heads / kv_heads` query heads share each key/value head."""

    kind: Literal["gqa"]
    kv_heads: Dim
    # Falcon-H1: the keys times this factor after their projection (folded into the score scale)
    key_multiplier: PositiveFloat | None = None

    @model_validator(mode="after")
    def _groups(self) -> "GQA":
        if self.kv_heads > self.heads:
            raise FieldError("kv_heads", f"kv_heads ({self.kv_heads}) cannot exceed heads ({self.heads})")
        if self.heads % self.kv_heads:
            divisors = ", ".join(str(d) for d in range(1, self.heads + 1) if self.heads % d == 0)
            raise FieldError(
                "kv_heads",
                f"heads ({self.heads}) must be divisible by kv_heads ({self.kv_heads})",
                f"pick kv_heads from the divisors of {self.heads}: {divisors}",
            )
        return self


class Indexer(Node):
    """DeepSeek-V3.2's lightning indexer (DeepSeek Sparse Attention): `heads` small ReLU heads of
    `head_dim` channels score every visible key for each query, from the query latent and the
    hidden state; the latent attention then attends only to the `top_k` best-scored keys."""

    kind: Literal["indexer"]
    heads: Dim = 64
    head_dim: Dim = 128
    top_k: Dim = 2048


class MLA(_AttentionCommon):
    """Multi-head latent attention (DeepSeek-V2): K and V are rebuilt from a cached latent of
    `kv_lora_rank` channels; a `rope_head_dim`-wide rotary key is shared by all heads."""

    kind: Literal["mla"]
    kv_lora_rank: Dim
    q_lora_rank: Dim | None = None  # None: queries are projected directly from the hidden state
    rope_head_dim: Dim = 64
    nope_head_dim: Dim = 128
    v_head_dim: Dim = 128
    head_dim: Dim | None = None  # derived: nope_head_dim + rope_head_dim
    indexer: Indexer | None = None  # DeepSeek-V3.2: attend to the indexer's top_k keys only

    @model_validator(mode="after")
    def _dims(self) -> "MLA":
        if self.rope_head_dim % 2:
            raise FieldError("rope_head_dim", f"rope_head_dim must be even, got {self.rope_head_dim}")
        self._check_indexer()
        derived = self.nope_head_dim + self.rope_head_dim
        if self.head_dim is not None and self.head_dim != derived:
            raise FieldError(
                "head_dim",
                f"mla's head_dim is nope_head_dim + rope_head_dim ({self.nope_head_dim} + {self.rope_head_dim} = {derived}), "
                f"not {self.head_dim}",
                "leave head_dim out and set nope_head_dim and rope_head_dim",
            )
        object.__setattr__(self, "head_dim", derived)
        return self

    def _check_indexer(self) -> None:
        ix = self.indexer
        if ix is None:
            return
        if self.q_lora_rank is None:
            raise FieldError("indexer", "the lightning indexer reads the query latent, and this mla has none",
                             "add q_lora_rank = ... (DeepSeek-V3.2 uses 1536)")
        if self.window is not None:
            raise FieldError("indexer", "the lightning indexer chooses among all past keys; a sliding window "
                             "over them is not defined", "remove window")
        if ix.head_dim < self.rope_head_dim:
            raise FieldError("indexer", f"the indexer's head_dim ({ix.head_dim}) is narrower than the "
                             f"{self.rope_head_dim} channels its RoPE rotates",
                             f"use an indexer head_dim of at least rope_head_dim ({self.rope_head_dim})")

    @property
    def kv_heads(self) -> int:
        return self.heads


class Differential(_AttentionCommon):
    """Differential attention (Ye et al. 2024): the difference of two softmax maps, weighted by a
    learned lambda, cancels attention noise. Each head splits its q/k into two halves."""

    kind: Literal["differential"]
    kv_heads: Dim | None = None
    lambda_init: Annotated[float, Field(ge=0, le=1)] | None = None  # default depends on depth

    @model_validator(mode="after")
    def _groups(self) -> "Differential":
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.heads % self.kv_heads:
            raise FieldError("kv_heads", f"heads ({self.heads}) must be divisible by kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise FieldError("head_dim", f"differential attention needs an even head_dim, got {self.head_dim}")
        return self


class LinearAttention(_AttentionCommon):
    """Linear attention (Katharopoulos et al. 2020): O(T) time, a (head_dim x head_dim) state per
    key/value head instead of a KV cache. The feature map φ is elu + 1 (the paper's), relu or the
    identity; each query head reads the state of its group's key/value head, as in gqa."""

    kind: Literal["linear"]
    kv_heads: Dim | None = None  # default: heads
    feature_map: Literal["elu_plus_one", "relu", "identity"] = "elu_plus_one"

    @model_validator(mode="after")
    def _groups(self) -> "LinearAttention":
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.heads % self.kv_heads:
            raise FieldError("kv_heads", f"heads ({self.heads}) must be divisible by kv_heads ({self.kv_heads})",
                             "each key/value head serves heads / kv_heads query heads")
        return self


class Disentangled(_AttentionCommon):
    """DeBERTa's disentangled attention (He et al. 2021; DeBERTaV3, He et al. 2023): the scores of
    content to content, plus content to position (`c2p`: each query against the keys of the
    relative positions) and position to content (`p2c`: each key against the queries of the
    relative positions), all divided by sqrt(head_dim · (1 + the number of terms)). A distance
    i - j is kept as is up to buckets / 2 and log-bucketed beyond, up to max_relative (without
    buckets: clipped at ±max_relative); it indexes one table of 2 · span relative embeddings
    (span = buckets, else max_relative) that every layer of the stack shares, normalised by
    `rel_norm` where one is written. `share_keys` projects the table with the layer's own q and k
    projections (DeBERTaV3) instead of its own pos_q / pos_k projections."""

    kind: Literal["disentangled"]
    terms: Annotated[tuple[Literal["c2p", "p2c"], ...], Field(min_length=1, max_length=2)] = ("c2p", "p2c")
    buckets: Annotated[int, Field(ge=2, le=MAX_DIM)] | None = None
    max_relative: Dim | None = None  # default: the model's context
    share_keys: bool = False
    rel_norm: Norm | None = None  # a norm of the relative embedding table (norm_rel_ebd = layer_norm)

    @model_validator(mode="after")
    def _relative(self) -> "Disentangled":
        if len(set(self.terms)) != len(self.terms):
            raise FieldError("terms", f"terms {list(self.terms)} names a term twice", "write each of c2p, p2c once")
        if self.buckets is not None and self.max_relative is not None and self.max_relative - 1 <= self.buckets // 2:
            raise FieldError("max_relative", f"log buckets beyond buckets / 2 = {self.buckets // 2} need max_relative "
                             f"> {self.buckets // 2 + 1}, got {self.max_relative}",
                             "raise max_relative (DeBERTaV3: buckets = 256, max_relative = 512)")
        if self.rel_norm is not None and self.rel_norm.placement != "pre":
            raise FieldError(("rel_norm", "placement"), "the relative embeddings' norm has no placement",
                             "remove placement")
        return self

    @property
    def kv_heads(self) -> int:
        return self.heads


Attention = Annotated[Union[MHA, MQA, GQA, MLA, Differential, LinearAttention, Disentangled], Field(discriminator="kind")]


# ----------------------------------------------------------------------------- feed-forward


class MLP(Node):
    """`mlp(hidden = 3072, act = gelu_tanh, bias = true)`: down(act(up(x)))."""

    kind: Literal["mlp"]
    hidden: Dim
    act: Activation = "gelu"
    bias: bool = True


class GLU(Node):
    """The GLU family: down(act(gate(x)) * up(x)). swiglu uses silu, geglu gelu."""

    kind: Literal["swiglu", "geglu"]
    hidden: Dim
    act: Activation | None = None
    bias: bool = False
    # Falcon-H1's µP multipliers: the gate projection's output times gate_multiplier before the
    # activation, the down projection's output times down_multiplier
    gate_multiplier: PositiveFloat | None = None
    down_multiplier: PositiveFloat | None = None

    @model_validator(mode="after")
    def _act(self) -> "GLU":
        if self.act is None:
            object.__setattr__(self, "act", "silu" if self.kind == "swiglu" else "gelu")
        elif self.kind == "swiglu" and self.act != "silu":
            raise FieldError("act", f"swiglu always uses silu, got {self.act}", "use geglu(act = ...) for another activation")
        return self


class ClampedSwiGLU(Node):
    """gpt-oss's expert: down((clamp(up) + 1) * g * sigmoid(alpha * g)) with g = min(gate, limit)
    and up clamped to [-limit, limit]; no clamp when `limit` is none. Routed experts only."""

    kind: Literal["clamped_swiglu"]
    hidden: Dim
    limit: PositiveFloat | None = None
    alpha: PositiveFloat = 1.702
    bias: bool = False


ExpertFFN = Annotated[Union[MLP, GLU, ClampedSwiGLU], Field(discriminator="kind")]


class MoE(Node):
    """A mixture of experts replacing the FFN: a router picks `top_k` of `experts` per token;
    `shared_experts` always run (DeepSeek), optionally behind a sigmoid gate (Qwen2-MoE).

    Two routers choose differently: `hash` sends each token id to one fixed expert (Hash Layers,
    Roller et al. 2021; no router weights, weight 1); `expert_choice` lets each expert take its
    top ceil(T · top_k / experts) tokens of each sequence by softmax score (Zhou et al. 2022), so
    a token sees as many experts as top_k on average; it reads the whole sequence, so it is
    refused where attention is causal."""

    kind: Literal["moe"]
    experts: Annotated[int, Field(gt=0, le=MAX_EXPERTS)]
    top_k: Annotated[int, Field(gt=0, le=MAX_EXPERTS)]
    expert: ExpertFFN
    shared_experts: Annotated[int, Field(ge=0, le=MAX_EXPERTS)] = 0
    shared: ExpertFFN | None = None  # the shared experts as one FFN; default: expert widened
    shared_gate: bool = False
    router: Literal["softmax", "sigmoid", "hash", "expert_choice"] = "softmax"
    normalize_top_k: bool = True  # renormalise the chosen k weights to sum to 1
    normalize_min: NonNegFloat = 0.0  # divide by max(sum, normalize_min) (ERNIE 4.5's moe_norm_min); 0: off
    routed_scale: PositiveFloat = 1.0
    aux_loss: NonNegFloat = 0.0  # load-balancing loss coefficient (Switch Transformer)
    z_loss: NonNegFloat = 0.0  # router z-loss coefficient (ST-MoE)
    capacity_factor: PositiveFloat | None = None  # tokens beyond capacity are dropped in training
    router_bias: bool = False  # a learned bias on the router logits (gpt-oss)
    # DeepSeek-V3 auxiliary-loss-free balancing: a per-expert bias added to the scores for choosing
    # experts only, moved by `bias_update_speed` per training step against each expert's load
    correction_bias: bool = False
    bias_update_speed: NonNegFloat = 0.0
    seq_aux_loss: NonNegFloat = 0.0  # DeepSeek-V3's sequence-wise balance loss coefficient
    # group-limited routing (DeepSeek-V2/V3): top_k is taken within the best `topk_groups` of `groups`
    groups: Annotated[int, Field(gt=0, le=MAX_EXPERTS)] = 1
    topk_groups: Annotated[int, Field(gt=0, le=MAX_EXPERTS)] | None = None
    group_score: Literal["top2_sum", "max"] | None = None  # default top2_sum when groups > 1
    scale_input: bool = False  # the routing weight scales the expert's input, not its output (Llama 4)

    @model_validator(mode="after")
    def _routing(self) -> "MoE":
        if self.top_k > self.experts:
            raise FieldError("top_k", f"top_k ({self.top_k}) cannot exceed experts ({self.experts})")
        self._check_router_kind()
        self._check_balancing()
        self._check_groups()
        if self.normalize_min and not self.normalize_top_k:
            raise FieldError("normalize_min", "normalize_min bounds the renormalisation, which is off",
                             "add normalize_top_k = true, or remove normalize_min")
        if isinstance(self.shared, ClampedSwiGLU) or (self.shared is None and self.shared_experts
                                                      and isinstance(self.expert, ClampedSwiGLU)):
            field = "shared" if self.shared is not None else "shared_experts"
            raise FieldError(field, "clamped_swiglu is implemented for the routed experts only",
                             "give the shared experts explicitly: shared = swiglu(hidden = ...)")
        for field in ("expert", "shared"):
            ffn = getattr(self, field)
            for name in ("gate_multiplier", "down_multiplier"):
                if getattr(ffn, name, None) is not None:
                    raise FieldError((field, name), f"{name} is implemented on a dense swiglu/geglu FFN, not on "
                                     "the experts of a moe", f"remove {name}")
        if self.shared is not None and self.shared_experts == 0:
            object.__setattr__(self, "shared_experts", 1)
        if self.shared is None and self.shared_experts:
            widened = self.expert.model_copy(update={"hidden": self.expert.hidden * self.shared_experts})
            object.__setattr__(self, "shared", widened)
        if self.shared_gate and self.shared is None:
            raise FieldError("shared_gate", "shared_gate needs shared experts", "add shared_experts = 1")
        return self

    # What each router that is not a learned top-k takes: the options of token-choice routing
    # (its logits, its renormalisation, its balancing and capacity) mean nothing to it.
    _TOKEN_CHOICE_ONLY = ("normalize_min", "capacity_factor", "router_bias", "correction_bias", "bias_update_speed",
                          "seq_aux_loss", "groups", "topk_groups", "group_score", "scale_input", "aux_loss")

    def _check_router_kind(self) -> None:
        if self.router not in ("hash", "expert_choice"):
            return
        written = self.model_fields_set
        refused = list(self._TOKEN_CHOICE_ONLY) + ["normalize_top_k"] + (["z_loss"] if self.router == "hash" else [])
        for field in refused:
            if field in written:
                raise FieldError(field, f"{field} is an option of token-choice routing (softmax or sigmoid), "
                                 f"and router = {self.router}",
                                 "remove it" + (": hash routing has no router logits" if self.router == "hash"
                                                else ": each expert takes its top tokens, no renormalising"))
        if self.router == "hash" and self.top_k != 1:
            raise FieldError("top_k", f"hash routing sends each token to one expert, got top_k = {self.top_k}",
                             "use top_k = 1")

    def _check_balancing(self) -> None:
        if self.bias_update_speed and not self.correction_bias:
            raise FieldError("bias_update_speed", "bias_update_speed moves the correction bias, which is off",
                             "add correction_bias = true")

    def _check_groups(self) -> None:
        g = self.groups
        if g == 1:
            if self.topk_groups not in (None, 1):
                raise FieldError("topk_groups", f"topk_groups ({self.topk_groups}) needs expert groups",
                                 "set groups = n, which must divide experts")
            if self.group_score is not None:
                raise FieldError("group_score", "group_score needs expert groups", "set groups = n")
            object.__setattr__(self, "topk_groups", 1)
            return
        if self.experts % g:
            raise FieldError("groups", f"groups ({g}) must divide experts ({self.experts})")
        if self.topk_groups is None:
            raise FieldError("groups", f"groups = {g} needs topk_groups, the number of groups routed to",
                             f"add topk_groups = k with 1 <= k <= {g}")
        if self.topk_groups > g:
            raise FieldError("topk_groups", f"topk_groups ({self.topk_groups}) exceeds groups ({g})")
        per_group = self.experts // g
        if self.top_k > self.topk_groups * per_group:
            raise FieldError("top_k", f"top_k ({self.top_k}) exceeds the {self.topk_groups * per_group} experts "
                                      f"in the topk_groups = {self.topk_groups} groups kept")
        written = self.group_score is not None
        if not written:
            object.__setattr__(self, "group_score", "top2_sum")
        if self.group_score == "top2_sum" and per_group < 2:
            raise FieldError("group_score" if written else "groups", f"group_score = top2_sum needs at least 2 experts per group, "
                                            f"and {self.experts} experts in {g} groups have {per_group}",
                             "use group_score = max, or fewer groups")


class RWKVChannelMix(Node):
    """RWKV's channel mixing (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era";
    Hugging Face's RwkvFeedForward) in place of an FFN: with the token shift x' (the previous token's
    input, zero before the first), k = lerp(x', x, μ_k), r = lerp(x', x, μ_r);
    sigmoid(receptance(r)) ⊙ value(relu(key(k))²). `hidden` is the key projection's width."""

    kind: Literal["rwkv_channel_mix"]
    hidden: Dim


class RWKV7ChannelMix(Node):
    """RWKV-7's channel mixing (flash-linear-attention's RWKV7FeedForward): with the token shift x',
    k = x + (x' - x) ⊙ μ_k; value(relu(key(k))²), no receptance gate. `hidden` is key's width."""

    kind: Literal["rwkv7_channel_mix"]
    hidden: Dim


FFN = Annotated[Union[MLP, GLU, MoE, RWKVChannelMix, RWKV7ChannelMix], Field(discriminator="kind")]


# ----------------------------------------------------------------------------- state space


class Mamba(Node):
    """Mamba's selective state space layer (Gu & Dao 2023)."""

    kind: Literal["mamba"]
    d_state: Dim = 16
    d_conv: Annotated[int, Field(gt=0, le=64)] = 4
    expand: Annotated[int, Field(gt=0, le=64)] = 2
    dt_rank: Dim  # filled from ceil(d_model / 16) when not written
    conv_bias: bool = True
    bias: bool = False  # on the in/out projections
    # RMSNorm on dt, B and C: true with a weight each (Jamba), weightless without (Falcon-Mamba)
    inner_norms: bool | Literal["weightless"] = False
    norm_eps: PositiveFloat = 1e-6


class Mamba2(Node):
    """Mamba-2's multi-head state space layer (Dao & Gu 2024), laid out as Hugging Face's
    Mamba2Mixer. d_inner = expand · d_model = heads · head_dim: write `heads` or `head_dim` (or
    neither: head_dim = 64), the resolver fills in the other. Writing both `heads` and `head_dim`
    (and no `expand`) fixes d_inner = heads · head_dim on its own, as Nemotron-H's mixer does
    (expand is then none). B and C come in `groups` groups, each read by heads / groups heads.
    `dt_limit = [lo, hi]` clamps the step after its softplus (none: unclamped, Hugging Face's
    (0, inf)); `[lo, none]` bounds it below only."""

    kind: Literal["mamba2"]
    d_state: Dim = 128
    d_conv: Annotated[int, Field(gt=0, le=64)] = 4
    # d_inner / d_model; none where heads and head_dim are both written and fix d_inner alone
    expand: Annotated[int, Field(gt=0, le=64)] | None = 2
    heads: Dim  # filled from expand · d_model / head_dim when not written
    head_dim: Dim  # filled from expand · d_model / heads (64 when neither is written)
    groups: Dim = 1
    chunk: Dim = 256  # the SSD algorithm's chunk length in prefill: the same function at any value
    conv_bias: bool = True
    bias: bool = False  # on the in/out projections
    gated_norm: bool = True  # a grouped RMSNorm (with a weight) on the gated output; else y · silu(z)
    norm_before_gate: bool = False  # norm(y) · silu(z) rather than norm(y · silu(z))
    norm_eps: PositiveFloat = 1e-5
    d_skip: bool = True  # the per-head skip D · x
    dt_limit: tuple[Annotated[float, Field(ge=0, allow_inf_nan=False)], PositiveFloat | None] | None = None
    # Falcon-H1's µP multipliers of the in-projection's five parts [z, x, B, C, dt], applied to
    # its output (after its bias); none: all 1
    in_proj_multipliers: tuple[PositiveFloat, PositiveFloat, PositiveFloat, PositiveFloat, PositiveFloat] | None = None

    @model_validator(mode="after")
    def _shapes(self) -> "Mamba2":
        if self.heads % self.groups:
            raise FieldError("groups", f"groups ({self.groups}) must divide heads ({self.heads})",
                             "each group of B and C is read by heads / groups heads")
        if self.dt_limit is not None and self.dt_limit[1] is not None and self.dt_limit[0] >= self.dt_limit[1]:
            raise FieldError("dt_limit", f"dt_limit = [{self.dt_limit[0]}, {self.dt_limit[1]}] is empty",
                             "write [lo, hi] with lo < hi, or remove it (no clamp)")
        if self.norm_before_gate and not self.gated_norm:
            raise FieldError("norm_before_gate", "norm_before_gate places the gated norm, which is off",
                             "remove norm_before_gate, or set gated_norm = true")
        return self


class GatedDeltaNet(Node):
    """Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2 with
    Delta Rule"; Qwen3-Next's linear attention): per value head a (key_dim x value_dim) state
    S_t = α_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T read by q_t, after a short causal conv of
    q, k and v, L2-normalised q and k (each key head serves value_heads / key_heads value heads) and
    a gated RMSNorm per head. No positions: it orders tokens by its recurrence. key_dim defaults to
    d_model / key_heads, value_heads to key_heads, value_dim to key_dim."""

    kind: Literal["gated_deltanet"]
    key_heads: Dim
    value_heads: Dim | None = None  # default: key_heads
    key_dim: Dim  # filled from d_model / key_heads when not written
    value_dim: Dim | None = None  # default: key_dim
    conv_size: Annotated[int, Field(gt=0, le=64)] = 4  # taps of the causal depthwise conv on q, k, v
    chunk: Dim = 64  # the chunked form's length in prefill: the same function at any value
    norm_eps: PositiveFloat = 1e-6  # the gated output RMSNorm's epsilon

    @model_validator(mode="after")
    def _heads(self) -> "GatedDeltaNet":
        if self.value_heads is None:
            object.__setattr__(self, "value_heads", self.key_heads)
        if self.value_dim is None:
            object.__setattr__(self, "value_dim", self.key_dim)
        if self.value_heads % self.key_heads:
            raise FieldError("value_heads", f"value_heads ({self.value_heads}) must be a multiple of key_heads "
                             f"({self.key_heads})", "each key head serves value_heads / key_heads value heads")
        return self


class KDA(Node):
    """Kimi Delta Attention (Kimi Team 2025, "Kimi Linear: An Expressive, Efficient Attention
    Architecture"; Kimi Linear's linear attention): Gated DeltaNet with a decay per key channel,
    per head a (head_dim x head_dim) state S_t = (I - β_t k_t k_t^T) Diag(α_t) S_{t-1} + β_t k_t v_t^T
    read by q_t, after a short causal conv of q, k and v, L2-normalised q and k; the decay
    α_t = exp(-exp(A_log) · softplus(f_t + dt_bias)) comes from a low-rank projection (rank head_dim)
    and the output's gated RMSNorm per head takes sigmoid of another. No positions: it orders tokens
    by its recurrence. head_dim defaults to d_model / heads."""

    kind: Literal["kda"]
    heads: Dim
    head_dim: Dim  # filled from d_model / heads when not written
    conv_size: Annotated[int, Field(gt=0, le=64)] = 4  # taps of the causal depthwise conv on q, k, v
    chunk: Dim = 64  # the chunked form's length in prefill: the same function at any value
    norm_eps: PositiveFloat = 1e-6  # the gated output RMSNorm's epsilon


class _LinearHeads(Node):
    """The head shape of gla and retention: `heads` heads with a (key_dim x value_dim) state each;
    key_dim defaults to d_model / heads, value_dim to key_dim."""

    heads: Dim
    key_dim: Dim  # filled from d_model / heads when not written
    value_dim: Dim | None = None  # default: key_dim
    chunk: Dim = 64  # the chunked form's length in prefill: the same function at any value

    @model_validator(mode="after")
    def _value_dim(self):
        if self.value_dim is None:
            object.__setattr__(self, "value_dim", self.key_dim)
        return self


class GLA(_LinearHeads):
    """Gated linear attention (Yang, Wang, Shen, Panda & Kim 2024, "Gated Linear Attention
    Transformers with Hardware-Efficient Training"), laid out as flash-linear-attention's layer: a
    decay per key channel from a low-rank gate projection, α = sigmoid(gk)^(1/gate_logit_normalizer);
    q scaled by key_dim^-0.5; each head's output RMS-normalised (a weight) and gated by swish of its
    own projection."""

    kind: Literal["gla"]
    gate_rank: Dim = 16  # the low-rank decay projection's inner width
    gate_logit_normalizer: PositiveFloat = 16.0
    norm_eps: PositiveFloat = 1e-5


class Retention(_LinearHeads):
    """RetNet's multi-scale retention (Sun et al. 2023, "Retentive Network: A Successor to Transformer
    for Large Language Models") without xPos: a fixed decay γ_h = 1 - 2^(-5-h) per head, q scaled by
    key_dim^-0.5; with `output_gate` (RetNet's) each head is RMS-normalised (no weight) and gated
    by swish of its own projection."""

    kind: Literal["retention"]
    output_gate: bool = True
    norm_eps: PositiveFloat = 1e-6


class Lightning(_LinearHeads):
    """MiniMax-01's lightning attention (MiniMax 2025; Qin et al. 2024, "Lightning Attention-2"),
    laid out as Hugging Face's MiniMaxLightningAttention: q, k and v through `act` (no score scale),
    S_t = exp(-s_h) S_{t-1} + k_t v_t^T read by q_t, a fixed decay rate per head that weakens with
    depth, s_h = 2^(-8(h+1)/heads) · (1 - layer / (layers - 1 + 1e-5) + 1e-5) (`layer` the block's
    index in its stack of `layers`); the heads' outputs RMS-normalised together (a weight), gated by
    sigmoid of their own projection of the input."""

    kind: Literal["lightning"]
    act: Activation = "silu"
    norm_eps: PositiveFloat = 1e-6


class ShortConv(Node):
    """LFM2's gated short convolution (Liquid AI 2025; the short causal convolutions of H3 and
    Hyena): in_proj d → 3d gives B, C and x; y = C ⊙ conv(B ⊙ x), a causal depthwise conv of
    `kernel` taps; out_proj. It reads no positions: the conv orders the tokens. `bias` is on the
    in/out projections, `conv_bias` on the conv (LFM2's one conv_bias flag sets both)."""

    kind: Literal["short_conv"]
    kernel: Annotated[int, Field(gt=0, le=64)] = 3
    bias: bool = False
    conv_bias: bool = False


class MLSTM(Node):
    """xLSTM's matrix-memory mLSTM layer (Beck et al. 2024; xLSTM-7B, Hugging Face's xLSTMLayer):
    q, k (heads · key_dim), v and an output gate (heads · value_dim); per head an exponential
    input gate and a sigmoid forget gate, each pre-activation soft-capped by gate_softcap ·
    tanh(x / gate_softcap) (none: uncapped); the stabilised matrix memory C_t = f_t C_{t-1} +
    i_t k_t v_t^T with its normaliser n and max-state m, read as C^T q / (max(|n·q|, exp(-m)) +
    denominator_eps); a LayerNorm per head (norm_eps, one weight over all heads); × sigmoid(output
    gate); out_proj. No positions: it orders tokens by its recurrence. key_dim defaults to
    d_model / (2 · heads) and value_dim to d_model / heads (xLSTM-7B's qk_dim_factor 0.5 and
    v_dim_factor 1)."""

    kind: Literal["mlstm"]
    heads: Dim
    key_dim: Dim  # filled from d_model / (2 · heads) when not written
    value_dim: Dim | None = None  # filled from d_model / heads when not written
    gate_softcap: PositiveFloat | None = 15.0
    norm_eps: PositiveFloat = 1e-6
    denominator_eps: PositiveFloat = 1e-6
    chunk: Dim = 64  # the chunked form's length in prefill: the same function at any value


class SLSTM(Node):
    """xLSTM's scalar-memory sLSTM layer (Beck et al. 2024), as the xlstm package's sLSTMLayer: a
    causal conv of `conv_size` taps (0: none) and swish feed the input and forget gates; per
    channel c_t = f_t c_{t-1} + i_t tanh(z_t), n_t = f_t n_{t-1} + i_t, h_t = σ(o_t) c_t / n_t with
    exponential input gates, sigmoid forget gates, the max-state stabiliser, and every gate reading
    h_{t-1} through recurrent weights that are block-diagonal per head; a LayerNorm per head. It
    has no parallel form: the recurrence is the form, in prefill as in decoding."""

    kind: Literal["slstm"]
    heads: Dim
    conv_size: Annotated[int, Field(ge=0, le=64)] = 4
    norm_eps: PositiveFloat = 1e-6


class S4D(Node):
    """S4D, the diagonal state space layer (Gu, Gupta, Goel & Ré 2022): per channel `state / 2`
    complex modes, A = -exp(log_A_real) + i·A_imag, B, C, a step dt, zero-order hold; y = 2·Re(C x)
    + D u, GELU, then a GLU output projection. The convolution form in prefill, the recurrence in
    decoding: the same linear map."""

    kind: Literal["s4d"]
    state: Dim = 64

    @model_validator(mode="after")
    def _even(self) -> "S4D":
        if self.state % 2:
            raise FieldError("state", f"state ({self.state}) must be even",
                             "S4D keeps state / 2 complex modes and their conjugates")
        return self


class RWKV4(Node):
    """RWKV-4's time mixing (Peng et al. 2023; Hugging Face's RwkvSelfAttention): with the token
    shift x' (the previous token's input, zero before the first), k, v, r are projections of
    lerp(x', x, μ) with their own μ each; per channel the WKV recurrence with decay w = -exp(time_decay)
    and the current token's bonus u = time_first,
    wkv_t = (Σ_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u + k_t} v_t) / (Σ_{i<t} e^{(t-1-i)w + k_i} + e^{u + k_t}),
    then output(sigmoid(r) ⊙ wkv). `dim` is the width of k, v and r (default d_model)."""

    kind: Literal["rwkv4"]
    dim: Dim | None = None  # default: d_model


class RWKV7(Node):
    """RWKV-7 "Goose" time mixing (Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State
    Evolution"), laid out as flash-linear-attention's RWKV7Attention: six token-shift lerps
    x + (x' - x) ⊙ μ feed r, k, v projections and low-rank adapters for the decay (tanh), the
    in-context learning rate and the output gate (sigmoid); per head a (head_dim x head_dim) state
    evolves by the generalised delta rule, read by r, group-normalised, plus the bonus, times the
    gate, then o_proj. `heads` divide d_model. The LoRA ranks default to the ones
    flash-linear-attention derives from d_model and head_dim. `value_residual`: mix this layer's v
    towards the first layer's (a sigmoid LoRA picks how far per channel); the first layer of the
    stack must be rwkv7 without it (its v is the one mixed in)."""

    kind: Literal["rwkv7"]
    heads: Dim
    decay_rank: Dim | None = None
    a_rank: Dim | None = None
    value_rank: Dim | None = None
    gate_rank: Dim | None = None
    value_residual: bool = False
    norm_eps: PositiveFloat = 1e-5  # per channel: the group norm's eps is head_dim · norm_eps
    chunk: Dim = 64  # the chunked form's length in prefill: the same function at any value

    @model_validator(mode="after")
    def _value_rank(self) -> "RWKV7":
        if self.value_rank is not None and not self.value_residual:
            raise FieldError("value_rank", "value_rank sizes the value-residual adapter, and value_residual is off",
                             "remove value_rank, or set value_residual = true")
        return self


class RGLRU(Node):
    """Griffin's recurrent block (De et al. 2024, "Griffin: Mixing Gated Linear Recurrences with
    Local Attention for Efficient Language Models"; RecurrentGemma), laid out as Hugging Face's
    RecurrentGemmaRecurrentBlock: u = conv(linear_x(x)), a causal depthwise conv of `conv_size`
    taps; the Real-Gated Linear Recurrent Unit over u, its input gate i_t and recurrence gate r_t
    block-diagonal over `heads` blocks, a_t = σ(Λ)^(8·r_t), h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙
    (i_t ⊙ u_t) (the first token of a sequence enters as i_0 ⊙ u_0); out = linear_out(h ⊙
    act(linear_y(x))). Every projection and the conv have a bias. It reads no positions: the
    recurrence orders the tokens. `width` (Hugging Face's lru_width) defaults to d_model."""

    kind: Literal["rglru"]
    heads: Dim
    width: Dim | None = None  # default: d_model
    conv_size: Annotated[int, Field(gt=0, le=64)] = 4
    act: Activation = "gelu_tanh"  # of the gate branch y


SSM = Annotated[Union[Mamba, Mamba2, GatedDeltaNet, GLA, Retention, ShortConv, MLSTM, SLSTM, S4D, RWKV4, RWKV7,
                      RGLRU, Lightning, KDA],
                Field(discriminator="kind")]


class GAU(Node):
    """`gau = gau(...)`: the Gated Attention Unit (Hua, Dai, Liu & Le 2022, "Transformer Quality in
    Linear Time"), one unit in place of a block's attention and FFN: u, v, z = silu(x W) (widths
    hidden = expansion · d_model, hidden, key_dim), q and k a per-dimension scale and offset of z
    (rotated by RoPE where the block has it), o = (u ⊙ A v) W_o with A = relu(q kᵀ / L)² (L: the
    sequence length bidirectionally, the keys a row sees causally, or a fixed `length`) or
    `scores = softmax`.
    `chunk = C`: FLASH's mixed-chunk form, relu² attention within chunks of C tokens plus linear
    attention across them (runtime/gau.py states each form exactly)."""

    kind: Literal["gau"]
    expansion: Annotated[int, Field(gt=0, le=64)] = 2  # e / d_model (the paper's 2)
    key_dim: Dim = 128  # s, the shared width of z, q and k (the paper's 128)
    scores: Literal["relu2", "softmax"] = "relu2"
    chunk: Dim | None = None  # FLASH's group size (the paper's 256); none: the quadratic form
    bias: bool = True  # on the two dense layers, as the paper's
    # The quadratic relu2 form's normaliser L as a fixed length (a training length); none: n
    # bidirectionally, the row's key count causally
    length: Dim | None = None

    @model_validator(mode="after")
    def _chunked_scores(self) -> "GAU":
        if self.chunk is not None and self.scores != "relu2":
            raise FieldError("chunk", "the mixed-chunk form (FLASH) is defined with relu2 scores: its linear term "
                             "has no softmax", "remove chunk, or use scores = relu2")
        if self.length is not None and (self.chunk is not None or self.scores != "relu2"):
            raise FieldError("length", "length normalises the quadratic relu2 form's scores; "
                             + ("the mixed-chunk form divides by its chunk" if self.chunk is not None
                                else "softmax scores divide by √key_dim"),
                             "remove length" + (", or chunk" if self.chunk is not None else ", or use scores = relu2"))
        return self


# ----------------------------------------------------------------------------- multi-token prediction


class MTP(Node):
    """`mtp(depth = 1, block = moe, loss_weight = 0.3)`: DeepSeek-V3's multi-token prediction
    (§2.2). Module k of `depth` combines the previous depth's hidden state (depth 0: the last
    layer's output, before the final norm) with the embedding of the token k ahead,
    eh_proj([norm(Emb(t_{i+k})); norm(h_i)]), runs one layer of `block` (its own weights per
    depth) and predicts token i+k+1 through its own final norm and the shared output head.
    Training adds loss_weight / depth times the sum of the modules' cross-entropies."""

    kind: Literal["mtp"]
    depth: Annotated[int, Field(ge=1, le=16)] = 1
    block: BlockName
    loss_weight: NonNegFloat = 0.3


class ByteLatent(Node):
    """`byte_latent(global_d_model = 2048, ...)`: the Byte Latent Transformer (Pagnoni et al. 2024).
    Bytes embed as a byte table plus hashed n-gram tables (each `ngrams` length, `hash_functions`
    hashes, `hash_vocab` rows each); `encoder_layers` run over the bytes (d_model wide, attending
    within `window`), their states are max-pooled into patches, `cross_k` queries per patch attend
    to the patch's bytes (after the last encoder layer, or each: `encoder_cross = all`);
    `global_layers` (global_d_model wide) run over the patches; `decoder_layers` read, by
    cross-attention before the first layer (or each: `decoder_cross = all`), the patch that ends
    before each byte, then predict the next byte. `patching = entropy`: a new patch starts where the
    next-byte entropy of `entropy_layers` (entropy_d_model wide, attending within
    `entropy_window`) exceeds `threshold`; `patching = bytes`: every byte is a patch. Long patches
    are split at `max_patch`. `mean_patch` (bytes per patch) is an assumption for facts only. RoPE
    in every stack rotates interleaved pairs, as the reference code does."""

    kind: Literal["byte_latent"]
    global_d_model: Dim
    cross_k: Dim = 2
    window: Dim | None = None
    encoder_cross: Literal["last", "all"] = "last"
    decoder_cross: Literal["first", "all"] = "all"
    ngrams: tuple[Dim, ...] = (3, 4, 5, 6, 7, 8)
    hash_vocab: Dim = 500002
    hash_functions: Annotated[int, Field(ge=1, le=64)] = 1
    patching: Literal["entropy", "bytes"] = "entropy"
    threshold: float | None = None
    entropy_d_model: Dim | None = None
    entropy_window: Dim | None = None
    max_patch: Dim | None = None
    mean_patch: PositiveFloat | None = None

    @model_validator(mode="after")
    def _patching(self) -> "ByteLatent":
        if self.patching == "entropy":
            for name in ("threshold", "entropy_d_model"):
                if getattr(self, name) is None:
                    raise FieldError(name, f"entropy patching needs `{name}`",
                                     "or write patching = bytes (every byte a patch)")
        else:
            for name in ("threshold", "entropy_d_model", "entropy_window"):
                if getattr(self, name) is not None:
                    raise FieldError(name, f"`{name}` belongs to entropy patching, and patching = bytes",
                                     f"remove {name}")
            if self.mean_patch not in (None, 1.0):
                raise FieldError("mean_patch", "with patching = bytes every byte is a patch: mean_patch is 1",
                                 "remove mean_patch")
        if not self.ngrams:
            raise FieldError("ngrams", "the hashed n-gram tables need at least one n", "for example [3, 4, 5]")
        return self

    @property
    def patch_length(self) -> float:
        """Bytes per patch the facts assume: stated, or 4.5 for entropy patching (the paper's
        operating point), or exactly 1 when every byte is a patch."""
        return 1.0 if self.patching == "bytes" else (self.mean_patch or 4.5)


# ----------------------------------------------------------------------------- per-block add-ons


class DepthRouter(Node):
    """Mixture-of-Depths (Raposo et al. 2024): a router scores each token, r = w . x; the top
    ceil(capacity * T) tokens of each sequence run the block, the others skip it, and a chosen
    token's change is scaled by r. Top-k over a sequence is not causal, so a predictor (a small
    MLP on the detached block input, trained with BCE on top-k membership) decides in causal
    routing (generation); with `predictor = false` the router's sign decides, and the BCE trains
    the router's logits instead (the paper's two alternatives)."""

    kind: Literal["depth_router"]
    capacity: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.125
    predictor: bool = True
    predictor_hidden: Dim | None = None  # default: d_model / 8 (at least 1)
    aux_loss: NonNegFloat = 0.01  # weight of the BCE that teaches the causal decision top-k membership

    @model_validator(mode="after")
    def _hidden(self) -> "DepthRouter":
        if self.predictor_hidden is not None and not self.predictor:
            raise FieldError("predictor_hidden", "predictor_hidden sizes the predictor, which is off",
                             "add predictor = true, or remove predictor_hidden")
        return self


# The projections a LoRA adapter may attach to, and the spec's word for each (Zamba2 adapts q, k,
# v and the fused gate/up projection of its shared block).
LORA_TARGETS = ("q", "k", "v", "o", "gate_up", "down")


class LoRA(Node):
    """Per-use low-rank adapters on a shared block's projections (Zamba2): every use of the block
    adds its own B A x (A: rank x in, B: out x rank) to each target projection's output."""

    kind: Literal["lora"]
    rank: Dim
    targets: Annotated[tuple[Literal["q", "k", "v", "o", "gate_up", "down"], ...], Field(min_length=1)]

    @field_validator("targets")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({t for t in v if v.count(t) > 1})
        if repeated:
            raise ValueError(f"lora target {', '.join(repeated)} is listed twice")
        return v


class Zamba2Hybrid(Node):
    """`hybrid = zamba2()` (Zamba2, Glorioso et al. 2024): the block runs beside the residual
    stream and hands its output to the next layer. It reads concat(x, x0), x0 the stack's input
    (the token embeddings), at width 2·d_model: its norm is over 2·d_model and its attention's
    q/k/v read 2·d_model (head_dim defaults to 2·d_model / heads); o_proj writes d_model. Then
    t = P_u ffn(norm2(attn(norm(concat(x, x0))))), with no residual add and P_u a d_model →
    d_model projection of its own per use. x passes on unchanged and the next layer computes
    x + mixer(norm(x + t))."""

    kind: Literal["zamba2"]


# ----------------------------------------------------------------------------- blocks and model


class ParallelMixers(Node):
    """`mixers = parallel(...)`: the block's attention and ssm both read the block's one normed
    input and their outputs are added into the residual together (Falcon-H1):
    x + attention_out · attn(attention_in · h) + ssm_out · ssm(ssm_in · h), h = norm(x).
    Each multiplier is off (1) unless written."""

    kind: Literal["parallel"]
    attention_in: PositiveFloat | None = None
    attention_out: PositiveFloat | None = None
    ssm_in: PositiveFloat | None = None
    ssm_out: PositiveFloat | None = None


class Block(Node):
    """One layer kind: a token mixer (attention or ssm), an optional FFN, and their norms."""

    name: str
    norm: Norm
    attention: Attention | None = None
    ssm: SSM | None = None
    cross_attention: Attention | None = None
    ffn: FFN | None = None
    # This block's attention position, where it differs from the model's: its own RoPE theta
    # and scaling (Gemma 3's local and global layers), or `none` (NoPE layers: Llama 4, SmolLM3).
    position: Position | Literal["inherit"] | None = "inherit"
    # Every use of this block in a stack is the same layer, with one set of weights (ALBERT;
    # Zamba's shared attention block). Each use keeps its own inference cache.
    shared: bool = False
    # Mixture-of-Depths: only the tokens the router picks run this block.
    route: DepthRouter | None = None
    # Zamba2: low-rank adapters of each use of a shared block.
    lora: LoRA | None = None
    # Attention and FFN side by side on the same input, each behind its own norm:
    # x + attn(norm1(x)) + ffn(norm2(x)) (GPT-J, GPT-NeoX, PaLM, Falcon).
    parallel: bool = False
    # [skip, branch]: the mixer's (the FFN's) residual add weighs its two terms, skip · residual +
    # branch · sublayer (MiniMax's layernorm alpha and beta factors)
    mixer_residual: tuple[PositiveFloat, PositiveFloat] | None = None
    ffn_residual: tuple[PositiveFloat, PositiveFloat] | None = None
    # Attention and ssm side by side on the same normed input (Falcon-H1): `mixers = parallel(...)`.
    mixers: ParallelMixers | None = None
    # Zamba2's shared transformer: `hybrid = zamba2()` (see Zamba2Hybrid).
    hybrid: Zamba2Hybrid | None = None
    # The Gated Attention Unit in place of attention and FFN (FLASH).
    gau: GAU | None = None
    # false: the mixer reads the residual stream without a norm (ModernBERT's first layer, whose
    # input is the normed embeddings); the FFN keeps its pre-norm
    mixer_norm: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_identifier(v, "block")

    @model_validator(mode="after")
    def _mixer_norm(self) -> "Block":
        if self.mixer_norm:
            return self
        if self.attention is None and self.ssm is None:
            raise FieldError("mixer_norm", f"block `{self.name}` has no mixer whose norm mixer_norm could remove",
                             "remove mixer_norm")
        if self.norm.placement != "pre" or self.parallel or self.mixers is not None:
            raise FieldError("mixer_norm", "mixer_norm = false removes the pre-norm of a sequential block's mixer; "
                             "it is not implemented with "
                             + (f"placement = {self.norm.placement}" if self.norm.placement != "pre" else
                                "parallel branches"), "use placement = pre in a sequential block, or remove mixer_norm")
        return self

    @model_validator(mode="after")
    def _add_ons(self) -> "Block":
        if self.route is not None:
            if self.shared:
                raise FieldError("route", "a depth-routed block cannot be shared",
                                 "remove `shared = true` or `route`: each use would need its own router and caches")
            if self.cross_attention is not None:
                raise FieldError("route", "depth routing of a block with cross_attention is not implemented",
                                 "route the decoder's self-attention blocks only, or remove `route`")
            if self.ssm is not None:
                raise FieldError("route", "depth routing is implemented for attention and FFN blocks, not ssm",
                                 "remove `route` from this block")
            if isinstance(self.ffn, (RWKVChannelMix, RWKV7ChannelMix)):
                raise FieldError("route", f"depth routing of a block with {self.ffn.kind} is not implemented: its "
                                 "token shift reads the previous token, which routing may skip",
                                 "remove `route` from this block")
            if isinstance(self.ffn, MoE):
                raise FieldError("route", "depth routing of a block with a moe FFN is not implemented "
                                 "(its balancing losses would be taken per sequence)",
                                 "use a dense FFN in the routed block, or remove `route`")
        if self.hybrid is not None:
            self._check_hybrid()
        if self.lora is not None:
            if not self.shared:
                raise FieldError("lora", "lora adapters are per use of a shared block",
                                 "add `shared = true`, or remove `lora`")
            self._check_lora_targets()
        return self

    def _check_hybrid(self) -> None:
        """What the Zamba2 wiring is implemented for: one pre-norm attention and a dense FFN,
        both without residual adds of their own."""
        if self.attention is None or self.attention.kind not in ("mha", "mqa", "gqa"):
            have = f"{self.attention.kind} attention" if self.attention is not None else "no attention"
            raise FieldError("hybrid", f"hybrid = zamba2() runs an mha/mqa/gqa attention, and block `{self.name}` "
                             f"has {have}", "give it attention = mha(...), or remove `hybrid`")
        if not isinstance(self.ffn, (MLP, GLU)):
            raise FieldError("hybrid", "hybrid = zamba2() is implemented with a dense FFN (mlp, swiglu, geglu)",
                             "give the block ffn = geglu(...), or remove `hybrid`")
        for field in ("ssm", "cross_attention", "route", "mixers", "mixer_residual", "ffn_residual"):
            if getattr(self, field) is not None:
                raise FieldError(field, f"`{field}` is not implemented on a hybrid = zamba2() block",
                                 f"remove `{field}` or `hybrid`")
        if self.parallel:
            raise FieldError("parallel", "parallel = true is not implemented on a hybrid = zamba2() block",
                             "remove `parallel` or `hybrid`")
        if self.norm.placement != "pre":
            raise FieldError(("norm", "placement"), f"a hybrid = zamba2() block normalises its inputs: placement = "
                             f"{self.norm.placement} is not implemented", "use placement = pre")
        if self.position not in ("inherit", None) and not isinstance(self.position, Rope):
            raise FieldError("position", f"position {self.position.kind}() is not implemented on a hybrid = zamba2() "
                             "block", "use rope(...), none, or the model's")

    def _check_lora_targets(self) -> None:
        if "gate_up" in self.lora.targets and (getattr(self.ffn, "gate_multiplier", None) is not None):
            raise FieldError(("ffn", "gate_multiplier"), "gate_multiplier with a lora adapter on gate_up is not "
                             "implemented", "remove gate_multiplier, or gate_up from the lora targets")
        for target in self.lora.targets:
            if target in ("q", "k", "v", "o"):
                if self.attention is None or self.attention.kind not in ("mha", "mqa", "gqa"):
                    have = f"{self.attention.kind} attention" if self.attention is not None else "no attention"
                    raise FieldError(("lora", "targets"), f"lora target `{target}` adapts an mha/mqa/gqa projection, "
                                     f"and block `{self.name}` has {have}", "remove it from targets")
            elif target == "gate_up":
                if not isinstance(self.ffn, GLU):
                    raise FieldError(("lora", "targets"), "lora target `gate_up` adapts the gate and up projections "
                                     "of a swiglu/geglu FFN", "remove it from targets, or use `down`")
            elif target == "down" and not isinstance(self.ffn, (MLP, GLU)):
                raise FieldError(("lora", "targets"), "lora target `down` adapts a dense FFN's down projection",
                                 "remove it from targets")

    @model_validator(mode="after")
    def _mixer(self) -> "Block":
        if self.gau is not None:
            self._check_gau()
        if self.mixers is not None:
            self._check_parallel_mixers()
        elif self.attention is not None and self.ssm is not None:
            raise FieldError("ssm", "a block has one token mixer: attention or ssm, not both",
                             "put the ssm in a block of its own and interleave the blocks in `layers`, "
                             "or run both side by side with `mixers = parallel()`")
        if self.attention is None and self.ssm is None and self.ffn is None and self.gau is None:
            raise FieldError("name", f"block `{self.name}` is empty", "give it an attention, ssm, ffn or gau")
        if self.parallel:
            self._check_parallel()
        for field, part in (("mixer_residual", self.mixer), ("ffn_residual", self.ffn)):
            if getattr(self, field) is not None and part is None:
                raise FieldError(field, f"{field} weighs a residual add that block `{self.name}` does not have",
                                 f"remove {field}")
        return self

    def _check_gau(self) -> None:
        for field in ("attention", "ssm", "ffn", "cross_attention", "mixers", "route", "lora", "ffn_residual"):
            if getattr(self, field) is not None:
                raise FieldError(field, f"block `{self.name}` has a gau, which takes the place of attention and ffn: "
                                 f"`{field}` is not implemented beside it", f"remove `{field}`, or put it in a block "
                                 "of its own")
        if self.parallel:
            raise FieldError("parallel", "a gau block has one branch: `parallel = true` has nothing to run beside it",
                             "remove `parallel`")

    def _check_parallel_mixers(self) -> None:
        if self.attention is None or self.ssm is None:
            raise FieldError("mixers", f"mixers = parallel() runs an attention and an ssm side by side, and block "
                             f"`{self.name}` lacks {'an attention' if self.attention is None else 'an ssm'}",
                             "give it both, or remove `mixers`")
        if self.norm.placement != "pre":
            raise FieldError(("norm", "placement"), f"parallel mixers read one pre-normed input: placement = "
                             f"{self.norm.placement} is not implemented with `mixers = parallel()`",
                             "use placement = pre, or remove `mixers`")
        if self.parallel:
            raise FieldError("parallel", "`parallel = true` (attention beside the ffn) with `mixers = parallel()` "
                             "is not implemented", "remove one of them")
        for field in ("cross_attention", "route", "lora"):
            if getattr(self, field) is not None:
                raise FieldError(field, f"`{field}` is not implemented on a block with parallel mixers",
                                 f"remove `mixers` or `{field}`")

    def _check_parallel(self) -> None:
        if self.attention is None or self.ffn is None:
            raise FieldError("parallel", f"a parallel block runs attention and ffn side by side, and block "
                             f"`{self.name}` lacks {'an attention' if self.attention is None else 'an ffn'}",
                             "give it both, or remove `parallel`")
        if self.norm.placement != "pre":
            raise FieldError(("norm", "placement"), f"a parallel block normalises the input of each branch: "
                             f"placement = {self.norm.placement} is not implemented with `parallel`",
                             "use placement = pre, or remove `parallel`")
        if self.cross_attention is not None:
            raise FieldError("cross_attention", "a parallel block has no cross_attention: its order relative to "
                             "the two parallel branches is not defined", "remove `parallel` or `cross_attention`")
        for field in ("route", "lora", "mixer_residual", "ffn_residual"):
            if getattr(self, field) is not None:
                raise FieldError(field, f"`{field}` is not implemented on a parallel block",
                                 f"remove `parallel` or `{field}`")

    @property
    def mixer(self):
        if self.attention is not None:
            return self.attention
        return self.ssm if self.ssm is not None else self.gau


# ----------------------------------------------------------------------------- encoder heads


class MLMHead(Node):
    """`head = mlm(act = gelu, norm = layernorm(eps = 1e-12))`: BERT's masked-LM head. Each token's
    final state goes through dense(d → d), the activation and the norm, then onto the vocabulary
    (the embedding table when `tie_embeddings`, else its own) plus a bias per token id."""

    kind: Literal["mlm"]
    act: Activation = "gelu"
    norm: Norm = Norm(kind="layernorm", eps=1e-12)
    bias: bool = True  # the output bias per token id
    dense_bias: bool = True  # the dense layer's bias (ModernBERT's classifier_bias)

    @model_validator(mode="after")
    def _placement(self) -> "MLMHead":
        if self.norm.placement != "pre":
            raise FieldError(("norm", "placement"), "the head's norm follows its dense layer; it has no placement",
                             "remove placement")
        return self


class ClassifierHead(Node):
    """`head = classifier(labels = 2, dropout = 0.1)`: sequence classification on the pooled first
    token (BERT's): dropout, then a linear layer to `labels` scores. `labels = 1` is regression.

    `pooling = cls` (the first token's final state) or `mean` (the mean over the tokens that the
    attention mask keeps) reads the final states itself instead of the model's pooler; `act` and
    `norm` put ModernBERT's transform, norm(act(dense(pooled))), before the dropout."""

    kind: Literal["classifier"]
    labels: Annotated[int, Field(gt=0, le=MAX_DIM)]
    dropout: Probability = 0.0
    # ELECTRA's form: on the first token itself (no pooler), dropout, dense(d → d), this
    # activation, dropout again, then the linear layer to `labels` scores
    dense: Activation | None = None
    pooling: Literal["pooler", "cls", "mean"] = "pooler"
    act: Activation | None = None
    norm: Norm | None = None
    dense_bias: bool = True  # the transform's dense bias (ModernBERT's classifier_bias)

    @model_validator(mode="after")
    def _transform(self) -> "ClassifierHead":
        if (self.act is None) != (self.norm is None):
            raise FieldError("act" if self.act is None else "norm", "the classifier's transform is dense, "
                             "activation and norm together", "give both act and norm, or neither")
        if self.norm is not None and self.norm.placement != "pre":
            raise FieldError(("norm", "placement"), "the head's norm follows its dense layer; it has no placement",
                             "remove placement")
        if self.dense is not None:
            for field, off in (("pooling", self.pooling == "pooler"), ("act", self.act is None),
                               ("norm", self.norm is None), ("dense_bias", self.dense_bias)):
                if not off:
                    raise FieldError(field, f"{field} belongs to the pooled transform (ModernBERT's), and dense to "
                                     "ELECTRA's classifier on the first token", f"give either dense or {field}")
        if not self.dense_bias and self.act is None:
            raise FieldError("dense_bias", "dense_bias switches the transform's bias, and the classifier has no "
                             "transform", "add act and norm, or remove dense_bias")
        return self


class RTDHead(Node):
    """`head = rtd(act = gelu)`: ELECTRA's replaced-token detection head (the discriminator's).
    Each token's final state goes through dense(d → d), the activation and dense(d → 1): one
    logit per token, "this token was replaced" (Clark et al. 2020)."""

    kind: Literal["rtd"]
    act: Activation = "gelu"


EncoderHead = Annotated[Union[MLMHead, ClassifierHead, RTDHead], Field(discriminator="kind")]


class Model(Node):
    name: str
    family: Literal["decoder", "encoder", "encoder_decoder", "byte_latent"] = "decoder"
    vocab: Dim
    d_model: Dim
    context: Dim
    dtype: Dtype = "bfloat16"
    tie_embeddings: bool = False
    position: Position | None = None
    final_norm: Norm | None = None
    embedding_norm: Norm | None = None  # a norm right after the embeddings (BERT)
    embedding_scale: PositiveFloat | None = None  # multiply embeddings, e.g. sqrt(d_model) (Gemma)
    # Round embedding_scale to the model's dtype before multiplying, as Gemma does (in bf16,
    # sqrt(3072) becomes 55.5); otherwise the product is taken at float32 precision (Granite).
    embedding_scale_in_dtype: bool = False
    type_vocab: Count = 0  # token-type (segment) embeddings (BERT)
    # ALBERT's factorised embeddings: tables of this width, projected to d_model after their norm
    embedding_dim: Dim | None = None
    logit_softcap: PositiveFloat | None = None
    logit_scale: PositiveFloat | None = None  # multiply the final hidden state before the head (T5)
    residual_scale: PositiveFloat | None = None  # multiply each residual branch before the add (Granite)
    pooler: bool = False  # tanh pooler over the first token (BERT)
    pooler_act: Activation | None = None  # the pooler's activation; default tanh (DeBERTa's: gelu)
    head: EncoderHead | None = None  # an encoder's task head: mlm(...), classifier(...) or rtd(...)
    # Dropout probabilities, active in training only: on the embeddings, on the attention
    # probabilities, and on each residual branch before it is added back.
    embedding_dropout: Probability = 0.0
    attention_dropout: Probability = 0.0
    residual_dropout: Probability = 0.0
    blocks: dict[str, Block]
    layers: tuple[str, ...] = ()
    encoder_layers: tuple[str, ...] = ()
    decoder_layers: tuple[str, ...] = ()
    mtp: MTP | None = None  # multi-token prediction modules, trained beside the next-token head
    # family = byte_latent: the patching, hashing and cross-attention of the Byte Latent Transformer,
    # and its two further stacks (encoder_layers and decoder_layers are its local byte stacks)
    byte_latent: ByteLatent | None = None
    entropy_layers: tuple[str, ...] = ()
    global_layers: tuple[str, ...] = ()
    # Pipeline stage marks written in `layers` (`dense * 2 | moe * 4`): the index of the first layer
    # of every stage after the first. Set from the marks by the resolver, never written as a field.
    stage_marks: tuple[int, ...] = ()
    # Where each value was written: ("blocks", "layer", "attention", "heads") → Span. Set by
    # the resolver so that checks after the AST (IR validation) can point at the source.
    _spans: dict = PrivateAttr(default_factory=dict)

    def span_of(self, *path):
        """The span of the value at `path`, or of its nearest enclosing value that has one."""
        while path:
            if path in self._spans:
                return self._spans[path]
            path = path[:-1]
        return self._spans.get(("name",))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_identifier(v, "model")

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v):
        return DTYPE_ALIASES.get(v, v) if isinstance(v, str) else v

    @field_validator("layers", "encoder_layers", "decoder_layers", "entropy_layers", "global_layers")
    @classmethod
    def _depth(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) > MAX_LAYERS:
            raise ValueError(f"{len(v)} layers is more than the limit of {MAX_LAYERS}")
        return v

    @model_validator(mode="after")
    def _stacks(self) -> "Model":
        if self.family == "byte_latent" or self.byte_latent or self.entropy_layers or self.global_layers:
            from .byte_latent import check_byte_latent

            return check_byte_latent(self)
        if self.family == "encoder_decoder":
            if self.layers:
                raise FieldError("layers", "an encoder_decoder model has encoder_layers and decoder_layers, not layers")
            for field in ("encoder_layers", "decoder_layers"):
                if not getattr(self, field):
                    raise FieldError("family", f"an encoder_decoder model needs `{field}`")
        else:
            if not self.layers:
                raise FieldError("family", f"a {self.family} model needs `layers`", "for example `layers = layer * 12`")
            for field in ("encoder_layers", "decoder_layers"):
                if getattr(self, field):
                    raise FieldError(field, f"`{field}` is only for family = encoder_decoder")
        for field in ("layers", "encoder_layers", "decoder_layers"):
            for name in getattr(self, field):
                block = self.blocks[name]
                wants_cross = field == "decoder_layers"
                if block.cross_attention is not None and not wants_cross:
                    raise FieldError(field, f"block `{name}` has cross_attention, which only decoder_layers of an encoder_decoder model can use")
                if wants_cross and block.attention is not None and block.cross_attention is None:
                    raise FieldError(field, f"decoder block `{name}` needs cross_attention to read the encoder")
        if self.pooler and self.family != "encoder":
            raise FieldError("pooler", "pooler is for encoder models")
        if self.pooler_act is not None and not self.pooler:
            raise FieldError("pooler_act", "pooler_act is the pooler's activation, and the model has no pooler",
                             "add pooler = true, or remove pooler_act")
        if self.embedding_dim is not None and self.family != "encoder":
            raise FieldError("embedding_dim", "factorised embeddings are implemented for encoders (ALBERT)",
                             "remove embedding_dim")
        if self.head is not None and self.family != "encoder":
            raise FieldError("head", f"head = {self.head.kind}(...) is an encoder's task head, and this model is a "
                             f"{self.family}", "remove head: a decoder's head is its LM head")
        if isinstance(self.head, ClassifierHead) and self.head.dense is None and self.head.pooling == "pooler" \
                and not self.pooler:
            raise FieldError(("head", "kind"), "classifier reads the pooled first token, and the model has no pooler",
                             "add pooler = true, pool in the head (pooling = cls or mean), or give the classifier "
                             "its own dense layer (dense = gelu)")
        if isinstance(self.head, ClassifierHead) and self.head.dense is not None and self.pooler:
            raise FieldError(("head", "dense"), "a classifier with its own dense layer reads the first token itself, "
                             "and the pooler's output would go unused", "remove pooler, or dense")
        if isinstance(self.head, ClassifierHead) and self.head.pooling != "pooler" and self.pooler:
            raise FieldError(("head", "pooling"), f"pooling = {self.head.pooling} reads the final states itself, "
                             "and the model's pooler would be unused", "remove pooler = true")
        if self.type_vocab and self.family == "decoder":
            raise FieldError("type_vocab", "token-type embeddings are for encoder models")
        stacks = self.stacks()
        for name in dict.fromkeys(n for layers in stacks.values() for n in layers):
            block = self.blocks[name]
            in_encoder = self.family == "encoder" or name in stacks.get("encoder", ())
            if isinstance(block.ffn, MoE) and block.ffn.router == "expert_choice" and not in_encoder:
                raise FieldError(("blocks", name, "ffn", "router"), f"expert_choice routing ranks the tokens of the "
                                 f"whole sequence, and block `{name}` is causal: a token's output would depend on "
                                 "later tokens, and generation could not decide it", "use expert_choice in encoder "
                                 "blocks, or router = softmax here")
            if block.route is not None and self.family != "decoder":
                raise FieldError(("blocks", name, "route"), f"depth routing is implemented for decoder models, "
                                 f"not {self.family}", "remove `route`")
            if block.lora is not None and self.family == "encoder_decoder":
                raise FieldError(("blocks", name, "lora"), "lora adapters are implemented for one-stack models "
                                 "(decoder or encoder)", "remove `lora`")
        return self

    @model_validator(mode="after")
    def _embedding_scale(self) -> "Model":
        if self.embedding_scale_in_dtype and self.embedding_scale is None:
            raise FieldError("embedding_scale_in_dtype", "embedding_scale_in_dtype rounds embedding_scale, "
                             "and the model has none", "set embedding_scale, or remove embedding_scale_in_dtype")
        return self

    @model_validator(mode="after")
    def _block_positions(self) -> "Model":
        used = {name for layers in self.stacks().values() for name in layers}
        for name, block in self.blocks.items():
            if block.position == "inherit" or name not in used:
                continue
            where = ("blocks", name, "position")
            if block.attention is None and block.gau is None:  # a gau rotates its q and k as attention does
                raise FieldError(where, f"block `{name}` sets a position but has no attention to apply it to",
                                 "remove `position` from the block")
            if isinstance(block.position, (Learned, Sinusoidal, Relative)):
                raise FieldError(where, f"position {block.position.kind}() cannot be set per block: it is "
                                 + ("added to the embeddings once for the whole model"
                                    if not isinstance(block.position, Relative) else "one bias table shared by a stack"),
                                 f"set `position = {block.position.kind}(...)` on the model")
            if isinstance(self.position, (Learned, Sinusoidal, Relative)):
                raise FieldError(where, f"block `{name}` overrides the model's position {self.position.kind}(), "
                                 "which a block cannot replace",
                                 "give the model no position or rope()/alibi(), and the blocks their own")
        return self

    @model_validator(mode="after")
    def _rwkv7_value_residual(self) -> "Model":
        """RWKV-7's value residual reads the v of its stack's first layer, in the same forward."""
        for stack, layers in self.stacks().items():
            for i, name in enumerate(layers):
                block, where = self.blocks[name], ("blocks", name, "ssm")
                if not isinstance(block.ssm, RWKV7):
                    continue
                if block.shared:
                    raise FieldError(where, f"rwkv7 in shared block `{name}` is not implemented: each use would "
                                     "publish or read the first layer's value as if it were its own",
                                     "give each layer its own block")
                if self.mtp is not None and self.mtp.block == name:
                    raise FieldError(("mtp", "block"), "mtp with an rwkv7 block is not implemented: its module would "
                                     "read the stack's first-layer value of other tokens", "give mtp another block")
                mixes = any(isinstance(self.blocks[n].ssm, RWKV7) and self.blocks[n].ssm.value_residual for n in layers)
                if i > 0 and mixes and not block.ssm.value_residual:
                    raise FieldError((*where, "value_residual"), f"block `{name}` (layer {i}) would publish its own "
                                     "value in place of the first layer's, which the stack's value_residual layers read",
                                     "set value_residual = true on every rwkv7 layer after the first")
                if not block.ssm.value_residual:
                    continue
                first = self.blocks[layers[0]].ssm
                if i == 0:
                    raise FieldError((*where, "value_residual"), f"block `{name}` is the first layer, which has no "
                                     "earlier layer's value to mix in", "give the first layer a block with "
                                     "value_residual = false")
                if not isinstance(first, RWKV7) or first.value_residual:
                    raise FieldError((*where, "value_residual"), f"value_residual mixes in the first layer's rwkv7 "
                                     f"value, and the first layer (`{layers[0]}`) is not rwkv7 without value_residual",
                                     "start the stack with an rwkv7 block whose value_residual is false")
        return self

    @model_validator(mode="after")
    def _attention_dropout(self) -> "Model":
        if not self.attention_dropout:
            return self
        used = {name for layers in self.stacks().values() for name in layers}
        for name in sorted(used):
            for slot in ("attention", "cross_attention"):
                att = getattr(self.blocks[name], slot)
                if att is not None and att.kind not in ("mha", "mqa", "gqa", "disentangled"):
                    raise FieldError(("blocks", name, slot), f"attention_dropout is not implemented for {att.kind} "
                                     f"attention (block `{name}`)", "use mha/mqa/gqa/disentangled, or remove attention_dropout")
        return self

    @model_validator(mode="after")
    def _mtp(self) -> "Model":
        """Multi-token prediction is implemented for decoders whose head the modules can share."""
        mtp = self.mtp
        if mtp is None:
            return self
        if self.family != "decoder":
            raise FieldError("mtp", f"mtp predicts further tokens of a decoder's sequence; a {self.family} model "
                             "has no causal next-token head to extend", "remove mtp, or use family = decoder")
        if mtp.block not in self.blocks:
            raise FieldError(("mtp", "block"), f"unknown block `{mtp.block}` in mtp",
                             "name one of the model's blocks: " + ", ".join(f"`{b}`" for b in self.blocks))
        if mtp.block not in self.layers:
            raise FieldError(("mtp", "block"), f"mtp's block `{mtp.block}` is not used in `layers`; an mtp module is "
                             "a layer of the model's own stack (DeepSeek-V3's has the layout of its MoE layers)",
                             "give mtp one of the blocks in `layers`")
        block = self.blocks[mtp.block]
        if block.mixer is None:
            raise FieldError(("mtp", "block"), f"mtp's block `{mtp.block}` has no token mixer (attention or ssm), "
                             "so its modules could not read earlier positions", "give mtp a block with attention")
        if isinstance(block.ffn, MoE) and block.ffn.router == "hash":
            raise FieldError(("mtp", "block"), f"block `{mtp.block}` routes by token id, and an mtp module's input "
                             "mixes two tokens (its position's and the one k ahead)", "give mtp a block without "
                             "router = hash")
        if block.shared:
            raise FieldError(("mtp", "block"), f"block `{mtp.block}` is shared (one set of weights for all its uses), "
                             "and each mtp depth has its own weights", "give mtp a block that is not shared")
        if self.final_norm is None:
            raise FieldError("mtp", "mtp normalises with the model's final norm (its enorm, hnorm and each module's "
                             "head norm), and this model has no final_norm", "set final_norm = rmsnorm(...)")
        if self.logit_scale is not None:
            raise FieldError("mtp", "mtp with logit_scale is not implemented: the modules' head applies no scale",
                             "remove logit_scale or mtp")
        if isinstance(self.position, (Learned, Sinusoidal, Relative)):
            raise FieldError("mtp", f"mtp with position {self.position.kind}() is not implemented: the modules read "
                             "bare token embeddings and apply no position table or bias of their own",
                             "use rope() or alibi(), which the modules' attention applies")
        if self.embedding_norm is not None:
            raise FieldError("mtp", "mtp with embedding_norm is not implemented: the modules read the token "
                             "embeddings before any norm", "remove embedding_norm or mtp")
        if mtp.depth >= self.context:
            raise FieldError(("mtp", "depth"), f"mtp depth {mtp.depth} leaves no position with a target in a context "
                             f"of {self.context}")
        return self

    def position_of(self, block: str) -> Position | None:
        """The position scheme a block's attention applies: its own, or else the model's."""
        own = self.blocks[block].position
        return self.position if own == "inherit" else own

    @model_validator(mode="after")
    def _attention_in_context(self) -> "Model":
        """The attention options that depend on where the block sits: its stack and position."""
        stacks = self.stacks()
        for name in dict.fromkeys(n for layers in stacks.values() for n in layers):
            att = self.blocks[name].attention
            if att is None:
                continue
            where = ("blocks", name, "attention")
            in_encoder = self.family == "encoder" or name in stacks.get("encoder", ())
            if att.chunk is not None and in_encoder:
                raise FieldError(where + ("chunk",), f"chunk bounds causal attention, and block `{name}` is in an "
                                 "encoder, which attends both ways", "remove chunk")
            position = self.position_of(name)
            scaling = position.scaling if isinstance(position, Rope) else None
            if isinstance(scaling, LongRopeScaling) and not isinstance(att, MLA):
                rotated = position.dim or (att.head_dim // 2 if isinstance(att, Differential) else att.head_dim)
                if len(scaling.short_factor) != rotated // 2:
                    own = self.blocks[name].position != "inherit"
                    raise FieldError(("blocks", name, "position") if own else ("position",),
                                     f"longrope has {len(scaling.short_factor)} factors, and block `{name}` rotates "
                                     f"{rotated} channels per head: it needs {rotated // 2}",
                                     "give one factor per rotated frequency (rotated channels / 2)")
            if att.temperature_tuning and position is not None:
                raise FieldError(where + ("temperature_tuning",),
                                 f"temperature_tuning is for NoPE layers (Llama 4), and block `{name}` applies "
                                 f"{position.kind}()", f"give block `{name}` position = none, or remove temperature_tuning")
        return self

    @model_validator(mode="after")
    def _hybrid_handoff(self) -> "Model":
        """A hybrid = zamba2() block hands its output to the next layer's pre-normed mixer."""
        hybrids = [name for name, block in self.blocks.items() if block.hybrid is not None]
        if not hybrids:
            return self
        for field, value in (("residual_scale", self.residual_scale), ("residual_dropout", self.residual_dropout)):
            if value:
                raise FieldError(field, f"{field} with a hybrid = zamba2() block is not implemented",
                                 f"remove {field}")
        if self.family == "encoder_decoder":
            raise FieldError(("blocks", hybrids[0], "hybrid"), "hybrid = zamba2() is implemented for one-stack "
                             "models (decoder or encoder)", "remove `hybrid`")
        if self.mtp is not None and self.mtp.block in hybrids:
            raise FieldError(("mtp", "block"), f"block `{self.mtp.block}` is a hybrid = zamba2() block, whose "
                             "output goes to a next layer that an mtp module lacks", "give mtp another block")
        for layers in self.stacks().values():
            for i, name in enumerate(layers):
                if self.blocks[name].hybrid is None:
                    continue
                where = ("blocks", name, "hybrid")
                if i + 1 == len(layers):
                    raise FieldError(where, f"block `{name}` is the last layer, and hybrid = zamba2() hands its "
                                     "output to the next layer", "follow it with a layer (a mamba2 block in Zamba2)")
                nxt = self.blocks[layers[i + 1]]
                if (nxt.hybrid is not None or nxt.parallel or nxt.mixers is not None or nxt.route is not None
                        or (nxt.attention is None and nxt.ssm is None) or nxt.norm.placement != "pre"):
                    raise FieldError(where, f"block `{name}` (layer {i}) is hybrid = zamba2(): it hands its output "
                                     f"to the pre-normed mixer of the next layer, and block `{nxt.name}` has none",
                                     "follow it with a block with one attention or ssm, placement = pre, no "
                                     "parallel, mixers, route or hybrid")
        return self

    @model_validator(mode="after")
    def _combinations(self) -> "Model":
        from .compat import check_model  # compat reads this module's unions

        check_model(self)
        return self

    @model_validator(mode="after")
    def _stage_marks(self) -> "Model":
        if not self.stage_marks:
            return self
        if self.family != "decoder":
            raise FieldError("stage_marks", "stage marks cut a decoder's `layers` into pipeline stages; this model's "
                             f"family is {self.family}", "remove the `|`")
        bounds = (0, *self.stage_marks, len(self.layers))
        if any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise FieldError("stage_marks", f"stage marks at layers {list(self.stage_marks)} do not cut the "
                             f"{len(self.layers)} layers into non-empty stages in order")
        # What no pipeline of these stages could train exactly (pipeline_parallel.check_pipeline
        # refuses it too): known from the spec alone, so refused where the marks are written.
        first_stage: dict[str, int] = {}
        for stage, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            for name in self.layers[lo:hi]:
                if self.blocks[name].shared and first_stage.setdefault(name, stage) != stage:
                    raise FieldError(("stage_marks", stage - 1), f"block `{name}` is shared (one set of weights) "
                                     f"and used on pipeline stages {first_stage[name]} and {stage}, which would "
                                     "each train their own copy",
                                     "mark the stages so that every use of a shared block is on one stage")
        return self

    def stacks(self) -> dict[str, tuple[str, ...]]:
        """Layer stacks by name: {"layers": ...} or {"encoder": ..., "decoder": ...}."""
        if self.family == "encoder_decoder":
            return {"encoder": self.encoder_layers, "decoder": self.decoder_layers}
        if self.family == "byte_latent":
            return {"entropy": self.entropy_layers, "encoder": self.encoder_layers, "global": self.global_layers,
                    "decoder": self.decoder_layers}
        return {"layers": self.layers}

    @property
    def causal(self) -> bool:
        return self.family != "encoder"


def default_head_dim(d_model: int, heads: int) -> int | None:
    return d_model // heads if heads and d_model % heads == 0 else None


# Mamba-2's head width when a spec writes neither heads nor head_dim (Hugging Face's and mamba_ssm's default).
MAMBA2_HEAD_DIM = 64


def default_dt_rank(d_model: int) -> int:
    return math.ceil(d_model / 16)


# What each slot of the language accepts, by the call name written there: derived from the
# unions above so the resolver can say "unknown attention kind `gqaa`; did you mean `gqa`?".
# A kind word may exist in two slots (`linear` attention, `linear` RoPE scaling), so every
# lookup goes through the slot.
def _kind_classes(*classes) -> dict[str, type[Node]]:
    return {kind: cls for cls in classes for kind in cls.model_fields["kind"].annotation.__args__}


SLOT_CLASSES: dict[str, dict[str, type[Node]]] = {
    "norm": _kind_classes(Norm),
    "position": _kind_classes(Rope, Sinusoidal, Learned, Alibi, Relative),
    "scaling": _kind_classes(LinearScaling, NTKScaling, YarnScaling, Llama3Scaling, LongRopeScaling, DynamicScaling),
    "qk_norm": _kind_classes(QKNorm),
    "indexer": _kind_classes(Indexer),
    "attention": _kind_classes(MHA, MQA, GQA, MLA, Differential, LinearAttention, Disentangled),
    "ffn": _kind_classes(MLP, GLU, MoE, RWKVChannelMix, RWKV7ChannelMix),
    "expert": _kind_classes(MLP, GLU, ClampedSwiGLU),
    "ssm": _kind_classes(Mamba, Mamba2, GatedDeltaNet, GLA, Retention, ShortConv, MLSTM, SLSTM, S4D,
                         RWKV4, RWKV7, RGLRU, Lightning, KDA),
    "mtp": _kind_classes(MTP),
    "route": _kind_classes(DepthRouter),
    "lora": _kind_classes(LoRA),
    "head": _kind_classes(MLMHead, ClassifierHead, RTDHead),
    "mixers": _kind_classes(ParallelMixers),
    "hybrid": _kind_classes(Zamba2Hybrid),
    "gau": _kind_classes(GAU),
    "byte_latent": _kind_classes(ByteLatent),
}
SLOT_KINDS: dict[str, tuple[str, ...]] = {slot: tuple(kinds) for slot, kinds in SLOT_CLASSES.items()}

# Which slot a field of a call or block belongs to.
FIELD_SLOT = {
    "norm": "norm", "final_norm": "norm", "embedding_norm": "norm",
    "position": "position", "scaling": "scaling", "qk_norm": "qk_norm",
    "indexer": "indexer",
    "attention": "attention", "cross_attention": "attention",
    "ffn": "ffn", "expert": "expert", "shared": "expert", "ssm": "ssm", "mtp": "mtp",
    "route": "route", "lora": "lora", "head": "head",
    "mixers": "mixers", "gau": "gau",
    "hybrid": "hybrid",
    "rel_norm": "norm",
    "byte_latent": "byte_latent",
}

MODEL_FIELDS = tuple(f for f in Model.model_fields if f not in ("name", "blocks", "stage_marks"))
BLOCK_FIELDS = tuple(f for f in Block.model_fields if f != "name")
