"""The checks of a `family = byte_latent` model: its stacks, and the one transformer layer each
stack repeats (what the Byte Latent Transformer's runtime computes exactly). Anything else is
refused at the value that asks for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ast import GLU, GQA, MHA, FieldError, Rope

if TYPE_CHECKING:
    from .ast import Model

_STACKS = ("entropy_layers", "encoder_layers", "global_layers", "decoder_layers")
_MODEL_OFF = ("embedding_norm", "embedding_scale", "embedding_dim", "logit_softcap", "logit_scale",
              "residual_scale", "head", "mtp")


def _unset_options(node, allowed: set[str]):
    """The fields written on `node` (beyond `allowed`) whose value is not the default."""
    for name in sorted(node.model_fields_set - allowed):
        if getattr(node, name) != type(node).model_fields[name].default:
            yield name


def check_byte_latent(m: "Model") -> "Model":
    if m.family != "byte_latent":
        field = next(f for f in ("byte_latent", "entropy_layers", "global_layers") if getattr(m, f))
        raise FieldError(field, f"`{field}` is only for family = byte_latent")
    bl = m.byte_latent
    if bl is None:
        raise FieldError("family", "a byte_latent model needs `byte_latent = byte_latent(global_d_model = ...)`")
    if m.layers:
        raise FieldError("layers", "a byte_latent model has entropy_layers, encoder_layers, global_layers and "
                         "decoder_layers, not layers")
    for field in _STACKS:
        wanted = field != "entropy_layers" or bl.patching == "entropy"
        if wanted and not getattr(m, field):
            raise FieldError("family", f"a byte_latent model needs `{field}`")
        if not wanted and getattr(m, field):
            raise FieldError(field, "entropy_layers place entropy patches, and patching = bytes", "remove them")
    for field in _MODEL_OFF:
        if getattr(m, field) is not None:
            raise FieldError(field, f"`{field}` is not part of the Byte Latent Transformer", f"remove {field}")
    for field in ("tie_embeddings", "pooler", "type_vocab", "embedding_dropout", "attention_dropout",
                  "residual_dropout"):
        if getattr(m, field):
            raise FieldError(field, f"`{field}` is not implemented for byte_latent models", f"remove {field}")
    if m.final_norm is None or m.final_norm.kind != "rmsnorm" or m.final_norm.unit_offset:
        raise FieldError("final_norm", "the local decoder ends in an RMSNorm", "write final_norm = rmsnorm(eps = ...)")
    widths = {"entropy_layers": bl.entropy_d_model, "encoder_layers": m.d_model, "global_layers": bl.global_d_model,
              "decoder_layers": m.d_model}
    for field in _STACKS:
        names = set(getattr(m, field))
        if len(names) > 1:
            raise FieldError(field, f"each stack of a byte_latent model repeats one block, `{field}` has "
                             f"{len(names)}", "use one block per stack")
        for name in names:
            _check_block(m, name, widths[field])
    return m


def _check_block(m: "Model", name: str, width: int) -> None:
    block = m.blocks[name]
    where = ("blocks", name)
    for field in ("ssm", "cross_attention", "route", "lora", "mixers"):
        if getattr(block, field) is not None:
            raise FieldError(where + (field,), f"a byte_latent stack's layer is attention and SwiGLU; `{field}` "
                             "is not implemented there", f"remove {field}")
    if block.shared:
        raise FieldError(where + ("shared",), "shared blocks are not implemented for byte_latent models",
                         "remove shared")
    norm = block.norm
    if norm.kind != "rmsnorm" or norm.placement != "pre" or norm.unit_offset:
        raise FieldError(where + ("norm",), "a byte_latent layer is pre-norm with RMSNorm",
                         "write norm = rmsnorm(eps = ...)")
    att = block.attention
    if not isinstance(att, (MHA, GQA)):
        raise FieldError(where + ("attention",), "a byte_latent layer attends with mha(...) or gqa(...)",
                         "write attention = gqa(heads = ..., kv_heads = ...)")
    for option in _unset_options(att, {"kind", "heads", "head_dim", "kv_heads"}):
        raise FieldError(where + ("attention", option), f"attention option `{option}` is not implemented for "
                         "byte_latent layers", "the local window is byte_latent(window = ...)")
    if att.heads * att.head_dim != width:
        raise FieldError(where + ("attention", "heads"), f"heads * head_dim ({att.heads} * {att.head_dim}) must be "
                         f"the stack's width, {width}", f"write head_dim = {width // att.heads}"
                         if width % att.heads == 0 else "pick heads dividing the stack's width")
    ffn = block.ffn
    if not isinstance(ffn, GLU) or ffn.kind != "swiglu" or ffn.act not in (None, "silu"):
        raise FieldError(where + ("ffn",), "a byte_latent layer's FFN is swiglu(hidden = ...)",
                         "write ffn = swiglu(hidden = ...)")
    for option in _unset_options(ffn, {"kind", "hidden", "act"}):
        raise FieldError(where + ("ffn", option), f"swiglu option `{option}` is not implemented for byte_latent "
                         "layers", f"remove {option}")
    pos = m.position_of(name)
    if not isinstance(pos, Rope) or pos.dim is not None or pos.scaling is not None:
        raise FieldError(where + ("position",) if block.position != "inherit" else ("position",),
                         "byte_latent layers rotate whole heads with plain rope(theta = ...)",
                         "write position = rope(theta = ...)")
