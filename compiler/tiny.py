"""A small stand-in of a model: the same blocks, layer pattern, kinds and options, with widths,
vocabulary and context cut down so that a forward pass runs in a moment on a CPU.

Used by `archc check --run` to look for NaN/Inf on random input before anyone spends GPU hours.
Every ratio the spec relies on is kept (heads : kv_heads, experts : top_k, window < context).
"""

from __future__ import annotations

import math

from archlang.spec import ast as A

HEAD_DIM = 8
MAX_HEADS = 8
HIDDEN = 32
VOCAB = 128
CONTEXT = 64
MAX_BUCKETS = 32
MAX_TYPE_VOCAB = 4


def _heads(heads: int, kv_heads: int) -> tuple[int, int]:
    """Fewer heads with the same grouping: kv_heads divides heads as before."""
    group = heads // kv_heads
    kv = max(1, min(kv_heads, MAX_HEADS // max(1, min(group, MAX_HEADS))))
    return kv * min(group, MAX_HEADS), kv


def _attention(att, d_model: int):
    if isinstance(att, A.MLA):
        return att.model_copy(update={"heads": min(att.heads, 4), "kv_lora_rank": 16, "q_lora_rank": 12 if att.q_lora_rank else None,
                                      "rope_head_dim": 8, "nope_head_dim": 8, "v_head_dim": 8, "head_dim": 16,
                                      "window": min(att.window, CONTEXT // 2) if att.window else None})
    kv = getattr(att, "kv_heads", att.heads)
    heads, kv = _heads(att.heads, kv if kv else att.heads)
    update = {"heads": heads, "head_dim": HEAD_DIM, "window": min(att.window, CONTEXT // 2) if att.window else None}
    if isinstance(att, (A.GQA, A.Differential)):
        update["kv_heads"] = kv
    if isinstance(att, A.GQA) and kv == heads:
        update["kv_heads"] = kv
    return att.model_copy(update=update)


def _ffn(ffn):
    if ffn is None:
        return None
    if isinstance(ffn, A.MoE):
        expert = ffn.expert.model_copy(update={"hidden": 16})
        shared = ffn.shared.model_copy(update={"hidden": 16 * max(1, ffn.shared_experts)}) if ffn.shared else None
        experts = min(ffn.experts, 8)
        # groups of 2 experts keep group-limited routing (and its top-2 group score) meaningful
        groups = math.gcd(ffn.groups, experts // 2) if ffn.groups > 1 else 1
        topk_groups = max(1, ffn.topk_groups * groups // ffn.groups)  # the same share of groups kept
        top_k = min(ffn.top_k, topk_groups * experts // groups)
        return ffn.model_copy(update={"experts": experts, "top_k": top_k, "expert": expert, "shared": shared,
                                      "groups": groups, "topk_groups": topk_groups})
    return ffn.model_copy(update={"hidden": HIDDEN})


def _mamba2(ssm: A.Mamba2, d_model: int) -> A.Mamba2:
    """Heads of HEAD_DIM channels filling expand · d_model, as many groups as still divide them,
    and chunks short enough that a prefill of the context crosses several."""
    heads = (ssm.expand or 2) * d_model // HEAD_DIM  # expand none: heads and head_dim are written, both replaced
    return ssm.model_copy(update={"d_state": min(ssm.d_state, 8), "heads": heads, "head_dim": HEAD_DIM,
                                  "groups": math.gcd(ssm.groups, heads), "chunk": min(ssm.chunk, CONTEXT // 4)})


def _linear_mixer(ssm):
    """Gated DeltaNet, GLA, retention and mlstm with 16-wide keys and values, two key heads (keeping up to
    two value heads per key head), and chunks short enough that a prefill crosses several."""
    update = {"key_dim": 16, "value_dim": 16, "chunk": min(ssm.chunk, CONTEXT // 4)}
    if isinstance(ssm, A.GatedDeltaNet):
        update.update(key_heads=2, value_heads=2 * min(ssm.value_heads // ssm.key_heads, 2))
    else:
        update["heads"] = min(ssm.heads, 4)
    if isinstance(ssm, A.GLA):
        update["gate_rank"] = min(ssm.gate_rank, 8)
    return ssm.model_copy(update=update)


def shrink(model: A.Model) -> A.Model:
    if model.family == "byte_latent":  # four stacks of their own widths (compiler/ops/blt.py)
        from .ops.blt import shrink_byte_latent

        return shrink_byte_latent(model, heads_of=_heads, hidden=HIDDEN, vocab=VOCAB, context=CONTEXT)
    d_model = 64
    blocks = {}
    for name, block in model.blocks.items():
        update = {"ffn": _ffn(block.ffn)}
        if block.attention is not None:
            update["attention"] = _attention(block.attention, d_model)
        if block.cross_attention is not None:
            update["cross_attention"] = _attention(block.cross_attention, d_model)
        if isinstance(block.ssm, A.Mamba2):
            update["ssm"] = _mamba2(block.ssm, d_model)
        elif isinstance(block.ssm, (A.GatedDeltaNet, A.GLA, A.Retention, A.MLSTM, A.Lightning)):
            update["ssm"] = _linear_mixer(block.ssm)
        elif isinstance(block.ssm, A.RGLRU):  # as wide as the tiny d_model, in as many gate blocks as divide it
            update["ssm"] = block.ssm.model_copy(update={"width": None, "heads": math.gcd(block.ssm.heads, d_model)})
        elif isinstance(block.ssm, A.KDA):
            update["ssm"] = block.ssm.model_copy(update={"heads": 2, "head_dim": 16,
                                                         "chunk": min(block.ssm.chunk, CONTEXT // 4)})
        elif isinstance(block.ssm, A.Mamba):
            update["ssm"] = block.ssm.model_copy(update={"d_state": min(block.ssm.d_state, 8), "dt_rank": 4})
        elif isinstance(block.ssm, A.SLSTM):  # heads that still divide the narrower d_model
            update["ssm"] = block.ssm.model_copy(update={"heads": math.gcd(block.ssm.heads, d_model)})
        if block.gau is not None:  # narrow keys, and chunks short enough that a prefill crosses several
            chunk = min(block.gau.chunk, CONTEXT // 4) if block.gau.chunk else None
            update["gau"] = block.gau.model_copy(update={"key_dim": 16, "chunk": chunk})
        blocks[name] = block.model_copy(update=update)
    position = model.position
    if isinstance(position, A.Rope):
        position = position.model_copy(update={"dim": None})
        if position.scaling is not None and hasattr(position.scaling, "original_context"):
            position = position.model_copy(update={"scaling": position.scaling.model_copy(
                update={"original_context": CONTEXT // 4})})
    if isinstance(position, A.Relative):  # a learned (buckets x heads) table: cut it like the vocabulary
        position = position.model_copy(update={"buckets": min(position.buckets, MAX_BUCKETS),
                                               "max_distance": min(position.max_distance, CONTEXT)})
    data = model.model_dump()
    data.update(vocab=min(model.vocab, VOCAB), type_vocab=min(model.type_vocab, MAX_TYPE_VOCAB), d_model=d_model,
                context=min(model.context, CONTEXT), dtype="float32",
                blocks={k: v.model_dump() for k, v in blocks.items()},
                position=position.model_dump() if position is not None else None)
    small = A.Model.model_validate(data)  # the validators check the small model as they did the large one
    small._spans = model._spans
    return small


def distinct_layers(layers: tuple[str, ...], kind_of=lambda block: block, joined=lambda block: False
                    ) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """One layer per kind (`kind_of(block name)`), in the order the stack first uses each, and
    the index in the stack of each layer kept. A `joined` block (a hybrid = zamba2() layer, which
    hands its output to the next layer) travels with the layer after it: the pair is one kind."""
    first: dict = {}
    i = 0
    while i < len(layers):
        n = 2 if joined(layers[i]) and i + 1 < len(layers) else 1
        unit = tuple(range(i, i + n))
        first.setdefault(tuple(kind_of(layers[j]) for j in unit), unit)
        i += n
    kept = [j for unit in first.values() for j in unit]
    return tuple(layers[j] for j in kept), tuple(kept)


def stand_in(model: A.Model) -> tuple[A.Model, dict[str, tuple[int, ...]]]:
    """The shrunk model with one layer per distinct shrunk block in each stack (encoder and
    decoder kept apart; blocks that differ only in widths the stand-in cuts down compute alike),
    so that building and running it costs the same at any depth; and, per stack, the original
    index of each stand-in layer, to name a layer as the spec numbers it."""
    small = shrink(model)
    kinds = {name: repr(block.model_dump(exclude={"name"})) for name, block in small.blocks.items()}
    update, origin = {}, {}
    for stack, field in (("layers", "layers"), ("encoder", "encoder_layers"), ("decoder", "decoder_layers"),
                         ("entropy", "entropy_layers"), ("global", "global_layers")):
        layers = getattr(small, field)
        if layers:
            update[field], origin[stack] = distinct_layers(layers, kinds.__getitem__,
                                                           lambda name: small.blocks[name].hybrid is not None)
    short = small.model_copy(update={**update, "stage_marks": ()})  # marks index the full stack, not this one
    short._spans = model._spans
    return short, origin
