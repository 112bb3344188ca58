"""Which token mixers accept which position schemes and which attention options: one table,
read by the AST validator (located refusals), the tests (every accepted cell is proven) and the
docs (the rendered matrix).

Mixers, positions and options are read off the AST's unions, so a kind added to the language
is in the matrix at once. The refusals come from the op definition that implements each mixer
(compiler/ops): a combination is accepted unless that definition refuses it, and an accepted
combination must then pass the property tests that run over every cell.
"""

from __future__ import annotations

from archlang.compiler.ops import Refusal, mixer_ops

from . import ast as A

# The token mixers: every attention kind, then every state-space kind, in the language's order;
# each is implemented by the IR op whose definition (compiler/ops) lists it in `mixer_kinds`, and
# that definition says which positions and options it refuses.
ATTENTION_KINDS: tuple[str, ...] = A.SLOT_KINDS["attention"]
MIXERS: tuple[str, ...] = ATTENTION_KINDS + A.SLOT_KINDS["ssm"] + A.SLOT_KINDS["gau"]
MIXER_OPS = mixer_ops()
_unimplemented = set(MIXERS) ^ set(MIXER_OPS)
if _unimplemented:  # a kind in the language with no op, or an op for a kind the language lacks
    raise ImportError(f"mixer kinds without exactly one op definition: {sorted(_unimplemented)}")
POSITIONS: tuple[str, ...] = ("none",) + A.SLOT_KINDS["position"]
# The attention options: the optional fields every attention kind shares (bias, window, ...).
OPTIONS: tuple[str, ...] = tuple(
    name for name, info in A._AttentionCommon.model_fields.items() if not info.is_required()
)
# Positions applied inside the attention (the others are added to the embeddings).
ATTENTION_POSITIONS = ("rope", "alibi", "relative")
# The kinds that may read an encoder's output as cross-attention.
CROSS_ATTENTION_KINDS = tuple(k for k in ATTENTION_KINDS if k in MIXER_OPS[k].cross_attention_kinds)

_REFUSED_POSITIONS: dict[tuple[str, str], Refusal] = {
    key: r for kind in MIXERS for key, r in MIXER_OPS[kind].refused_positions.items() if key[0] == kind}
_REFUSED_OPTIONS: dict[tuple[str, str], Refusal] = {
    key: r for kind in MIXERS for key, r in MIXER_OPS[kind].refused_options.items() if key[0] == kind}
# Mixers that only read the past: they cannot be the bidirectional layers of an encoder.
_REFUSED_IN_ENCODERS: dict[str, Refusal] = {
    kind: MIXER_OPS[kind].refused_in_encoders[kind] for kind in MIXERS if kind in MIXER_OPS[kind].refused_in_encoders}
_REFUSED_CROSS_OPTIONS: dict[str, Refusal] = {
    option: r for kind in CROSS_ATTENTION_KINDS for option, r in MIXER_OPS[kind].refused_cross_options.items()}


def position_refusal(mixer: str, position: str) -> Refusal | None:
    """None where `mixer` implements `position` exactly; otherwise why not."""
    return _REFUSED_POSITIONS.get((mixer, position))


def option_refusal(mixer: str, option: str) -> Refusal | None:
    """None where `mixer` implements the attention option exactly (or, for non-attention
    mixers, where the option does not exist); otherwise why not."""
    return _REFUSED_OPTIONS.get((mixer, option))


def option_is_set(component, option: str) -> bool:
    """Whether an option differs from its default (False / None), i.e. asks for something."""
    return bool(getattr(component, option, None))


def _position_text(position) -> str:
    return f"{position.kind}()" if position is not None else "none"


def check_model(model: A.Model) -> None:
    """Raise a FieldError at the first combination of this model the table refuses."""
    stacks = model.stacks()
    used = [name for layers in stacks.values() for name in dict.fromkeys(layers)]
    model_position = model.position.kind if model.position is not None else "none"
    if model_position == "relative":  # one bias table per stack, with a column per head
        for layers in stacks.values():
            heads = {}
            for name in layers:
                att = model.blocks[name].attention
                if att is not None and heads.setdefault("first", (name, att.heads))[1] != att.heads:
                    first, n = heads["first"]
                    raise A.FieldError(("blocks", name, "attention", "heads"),
                                       f"position relative() shares one bias table across a stack, but block `{name}` "
                                       f"has {att.heads} heads and block `{first}` {n}",
                                       "give every attention layer of the stack the same number of heads")
    _check_disentangled(model, stacks)
    for name in dict.fromkeys(used):
        block = model.blocks[name]
        for slot in ("attention", "cross_attention"):
            att = getattr(block, slot)
            if att is None:
                continue
            if slot == "cross_attention" and att.kind not in CROSS_ATTENTION_KINDS:
                raise A.FieldError(("blocks", name, slot),
                                   f"{att.kind} attention cannot be cross-attention (block `{name}`)",
                                   f"use {' / '.join(CROSS_ATTENTION_KINDS)} for cross_attention")
            for option in OPTIONS:
                refusal = option_refusal(att.kind, option)
                if slot == "cross_attention":
                    refusal = refusal or _REFUSED_CROSS_OPTIONS.get(option)
                if refusal is not None and option_is_set(att, option):
                    raise A.FieldError(("blocks", name, slot, option),
                                       f"{att.kind} {'cross-' if slot == 'cross_attention' else ''}attention with {option} "
                                       f"is not supported: {refusal.reason}",
                                       refusal.instead)
        mixer = block.mixer
        in_encoder = model.family == "encoder" or name in stacks.get("encoder", ())
        causal_mixer = block.ssm if block.mixers is not None else mixer  # parallel mixers: the ssm beside attention
        if causal_mixer is not None and in_encoder and causal_mixer.kind in _REFUSED_IN_ENCODERS:
            refusal = _REFUSED_IN_ENCODERS[causal_mixer.kind]
            raise A.FieldError(("blocks", name, "ssm"), f"{causal_mixer.kind} in an encoder (block `{name}`) is not supported: "
                               f"{refusal.reason}", refusal.instead)
        if mixer is not None:
            position = model.position_of(name)
            position = position.kind if position is not None else "none"
            refusal = position_refusal(mixer.kind, position)
            attention_elsewhere = any(
                model.blocks[other].attention is not None
                for layers in stacks.values() if name in layers for other in layers
            )
            # a gau applies the block's position itself, as attention does
            applies = block.attention is not None or block.gau is not None
            if refusal is not None and (applies or not attention_elsewhere):
                own = block.position != "inherit"
                slot = "attention" if block.attention is not None else "gau" if block.gau is not None else "ssm"
                path = ("blocks", name, "position") if own else ("blocks", name, slot)
                raise A.FieldError(path,
                                   f"position {_position_text(model.position_of(name))} with {mixer.kind} "
                                   f"(block `{name}`) is not supported: {refusal.reason}",
                                   refusal.instead)


def _check_disentangled(model: A.Model, stacks: dict) -> None:
    """DeBERTa's layers share one relative embedding table per stack, so they must agree on it."""
    for layers in stacks.values():
        first = None
        for name in dict.fromkeys(layers):
            att = model.blocks[name].attention
            if not isinstance(att, A.Disentangled):
                continue
            reach = att.max_relative or model.context
            if att.buckets is not None and reach - 1 <= att.buckets // 2:
                raise A.FieldError(("blocks", name, "attention", "buckets"),
                                   f"log buckets beyond buckets / 2 = {att.buckets // 2} need max_relative (default: "
                                   f"the context) above {att.buckets // 2 + 1}, and it is {reach}",
                                   "fewer buckets, or a larger max_relative")
            table = (att.buckets, att.max_relative, att.rel_norm)
            if first is None:
                first = (name, table)
            elif table != first[1]:
                raise A.FieldError(("blocks", name, "attention"),
                                   f"disentangled attention shares one relative embedding table across a stack, but "
                                   f"block `{name}` sets buckets, max_relative or rel_norm unlike block `{first[0]}`",
                                   "give every disentangled attention of the stack the same buckets, max_relative "
                                   "and rel_norm")


def matrix_markdown() -> str:
    """The compatibility matrix as markdown tables (positions, then options), for the docs."""
    lines = ["| mixer | " + " | ".join(f"`{p}`" for p in POSITIONS) + " |",
             "|---|" + "---|" * len(POSITIONS)]
    for mixer in MIXERS:
        cells = ["no" if position_refusal(mixer, p) else "yes" for p in POSITIONS]
        lines.append(f"| `{mixer}` | " + " | ".join(cells) + " |")
    lines += ["", "| mixer | " + " | ".join(f"`{o}`" for o in OPTIONS) + " | cross-attention |",
              "|---|" + "---|" * (len(OPTIONS) + 1)]
    for mixer in MIXERS:
        if mixer in ATTENTION_KINDS:
            cells = ["no" if option_refusal(mixer, o) else "yes" for o in OPTIONS]
            cells.append("yes" if mixer in CROSS_ATTENTION_KINDS else "no")
        else:
            cells = ["—"] * (len(OPTIONS) + 1)
        lines.append(f"| `{mixer}` | " + " | ".join(cells) + " |")
    lines += ["", "Refused combinations, and what to use instead:", ""]
    for (mixer, position), r in _REFUSED_POSITIONS.items():
        lines.append(f"- `{mixer}` × `{position}`: {r.reason}; {r.instead}.")
    for (mixer, option), r in _REFUSED_OPTIONS.items():
        lines.append(f"- `{mixer}` with `{option}`: {r.reason}; {r.instead}.")
    for kind, r in _REFUSED_IN_ENCODERS.items():
        lines.append(f"- `{kind}` in an encoder: {r.reason}; {r.instead}.")
    for option, r in _REFUSED_CROSS_OPTIONS.items():
        lines.append(f"- cross-attention with `{option}`: {r.reason}; {r.instead}.")
    ssm_kinds = ", ".join(f"`{k}`" for k in A.SLOT_KINDS["ssm"])
    lines += ["", f"Parallel mixers (`mixers = parallel(...)`): every attention kind beside every state-space kind "
              f"({ssm_kinds}), each with what its row accepts; the attention takes the block's position and the "
              "state-space mixer none; not in an encoder (the state-space mixer is causal)."]
    return "\n".join(lines) + "\n"
