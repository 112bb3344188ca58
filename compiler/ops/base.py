"""What an IR op definition declares, and the registry that holds them.

One class per op, in the spirit of MLIR's operation definitions: the attributes with their
types and defaults, how many inputs it takes, its weights' shapes as a function of its
attributes, its verifier, its facts (parameters by category, FLOPs, cache and state bytes), the
module the generated `__init__` builds and the expression `forward` evaluates, its colour in
pictures and, for token mixers, which spec kinds it implements and which combinations it
refuses. Lowering, validation, facts, code generation, pictures, the Hugging Face weight mapping
and the compatibility matrix all read these definitions; none of them branches on op names.

Rules a definition must give have no default here (`module`, `call`, `cost`, ...): a class
that leaves one out fails at import with a RegistryError, not later with a silent fallthrough.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

# Parameter categories of `archc stats`, in display order.
CATEGORIES = ("embedding", "attention", "ssm", "ffn", "moe_experts", "moe_shared", "moe_router", "norm", "head", "other")

# Groups a picture colours alike.
PICTURE_GROUPS = ("io", "embedding", "position", "norm", "attention", "ssm", "ffn", "moe", "head", "other")


class RegistryError(Exception):
    """An op definition is incomplete, or an op is used that no definition declares."""


_REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """One attribute of an op: its accepted Python types, default and meaning."""

    types: tuple[type, ...]
    default: Any = _REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def accepts(self, value: Any) -> bool:
        if value is None:
            return type(None) in self.types or (not self.required and self.default is None)
        if isinstance(value, bool):
            return bool in self.types
        if isinstance(value, int) and float in self.types:
            return True
        return isinstance(value, self.types)


def attr(*types: type, default: Any = _REQUIRED, doc: str = "") -> Attr:
    return Attr(tuple(types), default, doc)


@dataclass(frozen=True)
class Refusal:
    """Why a combination is not implemented exactly, and what to write instead."""

    reason: str
    instead: str


@dataclass
class Cost:
    """One op's facts per token: FLOPs, key/value cache bytes (per token while the sequence is
    shorter than any window, and in total at the context) and recurrent state bytes per sequence."""

    flops: float = 0.0
    kv_bytes_per_token: int = 0
    kv_bytes_at_context: int = 0
    state_bytes: int = 0


@dataclass(frozen=True)
class FactsContext:
    context: int  # the sequence length the facts are taken at
    nbytes: int  # bytes per element of the storage dtype


@dataclass(frozen=True)
class ActivationContext:
    """What an op's saved activations depend on beyond its node: the sequence length, the bytes
    of one activation element, and whether attention cores keep their probabilities for backward
    (eager attention, no recomputation) or recompute them (selective recomputation, which is
    what FlashAttention does)."""

    seq: int
    nbytes: int
    keep_probabilities: bool


@dataclass(frozen=True)
class Saved:
    """The tensors an op keeps from its forward for its backward, per token: which of its inputs
    and outputs (tensors other ops may keep too, so they are counted once), and the bytes of
    tensors only it holds (attention probabilities, dropout masks, expert intermediates)."""

    inputs: tuple[int, ...] | None = None  # None: every input
    outputs: tuple[int, ...] = ()
    private_bytes: float = 0.0


@dataclass
class Emit:
    """What code generation hands an op's rules: the expression of its layer index and cache key
    (inside a block class, or at model level), and the data of the nodes that feed it."""

    layer: str
    cache_key: str
    producers: list[dict] = field(default_factory=list)
    block: str = ""  # an MTP module's Transformer layer: the expression that builds it


class OpDef:
    """The definition of one IR op. Subclass it, fill in the rules, decorate with @register."""

    name: ClassVar[str]
    summary: ClassVar[str]
    attrs: ClassVar[dict[str, Attr]] = {}
    arity: ClassVar[tuple[int, int | None]]
    # "compute" ops run in forward; "input"/"output" are the model's arguments and results;
    # "table" ops are constants computed once per forward and handed to layers in ctx.tables.
    role: ClassVar[str] = "compute"
    picture: ClassVar[str]  # one of PICTURE_GROUPS
    # The projection after an op that computes whole heads or whole hidden units may split its
    # input across tensor-parallel ranks; the projections into it split their outputs.
    is_projection: ClassVar[bool] = False
    # The op that turns features into logits: features() stops before it, forward() goes on.
    starts_head: ClassVar[bool] = False
    # The op that runs the other ops of its layer on a subset of the tokens (Mixture-of-Depths):
    # code generation puts the layer's body in a method `routed` that the op's module calls.
    wraps_layer: ClassVar[bool] = False
    # Parameter names in Hugging Face's module of the same op (ours → theirs), where they are
    # fixed by the op rather than by the model family; None where each family names them.
    hf_params: ClassVar[dict[str, str] | None] = None
    # Token mixers: the spec kinds this op implements, and the combinations it refuses, keyed
    # by (kind, position) and (kind, attention option). Every combination a mixer does not
    # refuse is one it implements exactly (tests/runtime/test_matrix.py proves each).
    mixer_kinds: ClassVar[tuple[str, ...]] = ()
    refused_positions: ClassVar[dict[tuple[str, str], Refusal]] = {}
    refused_options: ClassVar[dict[tuple[str, str], Refusal]] = {}
    refused_in_encoders: ClassVar[dict[str, Refusal]] = {}
    cross_attention_kinds: ClassVar[tuple[str, ...]] = ()
    refused_cross_options: ClassVar[dict[str, Refusal]] = {}

    _RULES: ClassVar[tuple[str, ...]] = ("summary", "arity", "picture", "params", "module", "call", "cost", "category")

    # ------------------------------------------------------------------ shapes and checks
    def params(self, a: dict[str, Any], shape: tuple) -> dict[str, tuple[int, ...]]:
        """Weight name → shape, from the attributes (and the output shape)."""
        raise NotImplementedError

    def out_width(self, d: dict, out: int) -> int | str:
        """The last dimension of output `out`."""
        return d["shape"][-1]

    def verify(self, node: str, d: dict, widths: list, ctx: "VerifyContext") -> None:
        """Op-specific checks; report each problem with ctx.fail(node, message, hint)."""

    def memory_inputs(self, d: dict) -> slice | None:
        """Which inputs must come from the encoder (cross-attention keys and values)."""
        return None

    def splits_heads(self, d: dict) -> bool:
        """Whether this op computes whole heads / hidden units from projections it reads, so
        tensor parallelism may shard them (see codegen's tensor-parallel plan)."""
        return False

    # ------------------------------------------------------------------ facts
    def category(self, d: dict) -> str:
        """The parameter category (CATEGORIES) of this op's weights."""
        raise NotImplementedError

    def param_split(self, d: dict) -> tuple[dict[str, int], dict[str, int]]:
        """(total, active per token) parameters by category. Dense ops use all their weights."""
        n = 0
        for shape in d["params"].values():
            size = 1
            for s in shape:
                size *= s
            n += size
        cat = self.category(d)
        return {cat: n}, {cat: n}

    def cost(self, d: dict, ctx: FactsContext) -> Cost:
        raise NotImplementedError

    def saved(self, d: dict, ctx: ActivationContext) -> Saved:
        """What backward needs from this op's forward (training memory). By default its inputs,
        as a matmul keeps its input and an activation or norm its argument."""
        return Saved()

    # ------------------------------------------------------------------ code generation
    def module(self, d: dict, emit: Emit) -> str | None:
        """The expression `__init__` assigns to `self.<name>`, or None where the op owns no module."""
        raise NotImplementedError

    def call(self, d: dict, args: list[str], emit: Emit) -> str:
        """The expression `forward` evaluates, given its inputs' variable names."""
        raise NotImplementedError

    def attention_keyword(self, d: dict) -> str:
        """For ops that feed an attention core beside q/k/v: the keyword it is passed as."""
        raise RegistryError(f"op {self.name!r} cannot feed an attention core")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        missing = [rule for rule in cls._RULES if not hasattr(cls, rule) or getattr(cls, rule) is getattr(OpDef, rule, None)]
        if missing:
            raise RegistryError(f"op definition {cls.__name__} lacks {', '.join(missing)}")


class WeightlessOp(OpDef):
    """An op with no weights, no counted FLOPs and no module of its own (its call is an
    expression, or it is a model input or output)."""

    abstract = True

    def params(self, a, shape):
        return {}

    def category(self, d):
        return "other"

    def cost(self, d, ctx):
        return Cost()  # element-wise or bookkeeping work is not counted in FLOPs

    def module(self, d, emit):
        return None


class HeadOp(OpDef):
    """A task head: one input, weights counted as "head", its module called on the input. Its
    work runs once per sequence (a pooled token) unless it overrides `cost`."""

    abstract = True
    arity = (1, 1)
    picture = "head"

    def category(self, d):
        return "head"

    def cost(self, d, ctx):
        return Cost()  # once per sequence, not per token

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]})"


@dataclass
class VerifyContext:
    """What an op's verifier may look at beyond its own node."""

    g: Any  # the IR graph
    context: int | None  # the model's context length
    fail: Callable[..., None]


REGISTRY: dict[str, OpDef] = {}


def register(cls: type[OpDef]) -> type[OpDef]:
    if cls.name in REGISTRY:
        raise RegistryError(f"op {cls.name!r} is defined twice")
    for name, a in cls.attrs.items():
        if not isinstance(a, Attr):
            raise RegistryError(f"op {cls.name!r}: attribute {name!r} is not declared with attr()")
    REGISTRY[cls.name] = cls()
    return cls


def op_def(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise RegistryError(f"unknown IR op {name!r}: no definition in compiler/ops") from None


def complete_attrs(op: OpDef, attrs: dict[str, Any]) -> dict[str, Any]:
    """The attributes with defaults filled in; unknown, missing or mistyped ones are a RegistryError."""
    unknown = set(attrs) - set(op.attrs)
    if unknown:
        raise RegistryError(f"op {op.name!r} has no attribute {', '.join(sorted(unknown))}")
    out = {}
    for name, a in op.attrs.items():
        if name in attrs:
            value = attrs[name]
        elif a.required:
            raise RegistryError(f"op {op.name!r} needs attribute {name!r}")
        else:
            value = a.default
        if not a.accepts(value):
            raise RegistryError(f"op {op.name!r}: attribute {name}={value!r} is not {'/'.join(t.__name__ for t in a.types)}")
        out[name] = value
    return out


def attr_problems(op: OpDef, attrs: dict[str, Any]) -> list[str]:
    """What is wrong with a node's attributes, for validation after passes."""
    problems = [f"unknown attribute {name!r}" for name in attrs if name not in op.attrs]
    for name, a in op.attrs.items():
        if name not in attrs:
            problems.append(f"missing attribute {name!r}")
        elif not a.accepts(attrs[name]):
            problems.append(f"attribute {name}={attrs[name]!r} is not {'/'.join(t.__name__ for t in a.types)}")
    return problems
