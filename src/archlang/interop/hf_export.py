"""archlang → Hugging Face transformers: the config of the family that computes exactly a spec's
function, and a checkpoint folder (config.json + model.safetensors) that `from_pretrained` loads.

One exporter per model_type (EXPORTERS): a small function from the validated AST to a config
dict, which either returns the dict or raises `Unfit` naming the spec value its family cannot
express. An exporter is trusted for nothing: every config it writes is imported back
(hf.spec_from_config) and must lower to the same IR as the spec, or the family is refused at the
first value that came back different. A spec feature an exporter forgets is therefore refused,
never dropped. To add a family: write its exporter, add it to EXPORTERS (and ARCHITECTURES).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from archlang.spec import ast as A
from archlang.spec.errors import ArchError

# ----------------------------------------------------------------------------- refusals


class Unfit(Exception):
    """A spec value (at `path` in the AST, as Model.span_of takes it) that a family cannot express."""

    def __init__(self, path: tuple, message: str, config_written: bool = False):
        super().__init__(message)
        self.path, self.message = path, message
        self.config_written = config_written  # the family wrote a config; only a detail came back different


# Features that no Hugging Face family computes: refused before any family is tried, with the
# reason, so the error names the feature rather than each family's first complaint.
_NO_HF_EQUIVALENT: dict[tuple[str, str], str] = {
    ("attention", "differential"): "differential attention has no Hugging Face equivalent",
    ("attention", "linear"): "linear attention has no Hugging Face equivalent",
    ("position", "sinusoidal"): "fixed sinusoidal positions have no Hugging Face equivalent among the exported families",
    ("position", "alibi"): "ALiBi positions have no Hugging Face equivalent among the exported families",
    ("ssm", "slstm"): "the sLSTM has no Hugging Face equivalent (transformers' xlstm has mLSTM layers only)",
    ("ssm", "s4d"): "S4D has no Hugging Face equivalent",
}


def _blocks_in_use(m: A.Model) -> list[str]:
    seen: dict[str, None] = {}
    for layers in m.stacks().values():
        seen.update(dict.fromkeys(layers))
    return list(seen)


def _check_expressible(m: A.Model) -> None:
    def refuse(slot: str, kind: str, path: tuple) -> None:
        reason = _NO_HF_EQUIVALENT.get((slot, kind))
        if reason:
            raise Unfit(path, reason)

    for where, pos in [(("position",), m.position)] + [(("blocks", b, "position"), m.blocks[b].position)
                                                       for b in _blocks_in_use(m)]:
        if isinstance(pos, A.Node):
            refuse("position", pos.kind, where)
            if isinstance(pos, A.Rope) and pos.scaling is not None:
                refuse("scaling", pos.scaling.kind, where + ("scaling",))
    for b in _blocks_in_use(m):
        for slot in ("attention", "cross_attention"):
            a = getattr(m.blocks[b], slot)
            if a is not None:
                refuse("attention", a.kind, ("blocks", b, slot))
        ffn = m.blocks[b].ffn
        if isinstance(ffn, A.MoE) and ffn.router in ("hash", "expert_choice"):
            raise Unfit(("blocks", b, "ffn", "router"), f"router = {ffn.router}: no transformers MoE routes so")
        if m.blocks[b].ssm is not None:
            refuse("ssm", m.blocks[b].ssm.kind, ("blocks", b, "ssm"))


# ----------------------------------------------------------------------------- helpers for exporters


# How many of its checks the family being tried has passed: the family that passed most before
# refusing is the closest, and its reason leads the error.
_checks_passed = [0]


def _need(ok: bool, path: tuple, message: str) -> None:
    if not ok:
        raise Unfit(path, message)
    _checks_passed[0] += 1


def _layers(m: A.Model) -> list[str]:
    _need(m.family == "decoder", ("family",), f"family = {m.family}")
    return list(m.layers)


def _same(m: A.Model, blocks: list[str], field: str, what: str) -> Any:
    """The value of `field` shared by these blocks; a family with one setting for all layers
    cannot express blocks that differ."""
    first = getattr(m.blocks[blocks[0]], field)
    for b in blocks[1:]:
        _need(getattr(m.blocks[b], field) == first, ("blocks", b, field),
              f"blocks differ in their {what}, which this family sets once for all layers")
    return first


def _model_extras(m: A.Model, allowed: set[str]) -> None:
    """Model-level features outside `allowed` that a family lacks."""
    for field, off in (("embedding_norm", None), ("embedding_scale", None), ("logit_softcap", None),
                       ("logit_scale", None), ("pooler", False), ("type_vocab", 0), ("residual_scale", None)):
        if field not in allowed:
            _need(getattr(m, field) == off, (field,), f"`{field}` (this family has none)")


def _positions_inherit(m: A.Model, blocks: list[str]) -> None:
    for b in blocks:
        _need(m.blocks[b].position == "inherit", ("blocks", b, "position"), "a per-block position")


def _rope_parameters(rope: Any, path: tuple, head_dim: int | None, partial: bool = False) -> dict:
    """rope_parameters of a rope(); `partial`: the family rotates a fraction of each head
    (partial_rotary_factor), else a rope dim below head_dim is refused."""
    _need(isinstance(rope, A.Rope), path, f"position {getattr(rope, 'kind', 'none')}: this family uses RoPE")
    if head_dim is not None and not partial:
        _need(rope.dim in (None, head_dim), path + ("dim",), "partial RoPE (rope dim below head_dim)")
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(rope.theta)}
    if partial:
        params["partial_rotary_factor"] = (rope.dim or head_dim) / head_dim
    s = rope.scaling
    if isinstance(s, A.LinearScaling):
        params.update(rope_type="linear", factor=s.factor)
    elif isinstance(s, A.Llama3Scaling):
        params.update(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                      high_freq_factor=s.high_freq_factor, original_max_position_embeddings=s.original_context)
    elif isinstance(s, A.YarnScaling):
        params.update(rope_type="yarn", factor=s.factor, original_max_position_embeddings=s.original_context,
                      beta_fast=s.beta_fast, beta_slow=s.beta_slow, mscale=s.mscale, mscale_all_dim=s.mscale_all_dim)
        if not s.truncate:
            params["truncate"] = False
    elif isinstance(s, A.LongRopeScaling):
        params.update(rope_type="longrope", short_factor=list(s.short_factor), long_factor=list(s.long_factor),
                      original_max_position_embeddings=s.original_context)
        optional = {"factor": s.factor, "attention_factor": s.attention_factor}
        params.update({k: v for k, v in optional.items() if v is not None})
    elif s is not None:
        raise Unfit(path + ("scaling",), f"RoPE scaling {s.kind}")
    return params


# transformers' name of each archlang activation (hf_config.ACTIVATIONS maps them back).
HF_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu",
                  "sigmoid": "sigmoid", "tanh": "tanh", "relu2": "relu2"}


def _token_ids(m: A.Model, default: int) -> dict:
    """GPT-2's end-of-text id where the vocabulary has it, else none (a smaller vocabulary)."""
    token = default if default < m.vocab else None
    return {"bos_token_id": token, "eos_token_id": token}


def _dtype(m: A.Model) -> str:
    return m.dtype  # float32 | bfloat16 | float16: transformers' names too


def _default_scale(a) -> bool:
    return a.scale is None or math.isclose(a.scale, a.head_dim**-0.5, rel_tol=1e-12)


def _attention_kv(m: A.Model, a, path: tuple, kinds=("mha", "gqa", "mqa")) -> dict:
    _need(a is not None, path, "a block without attention")
    _need(a.kind in kinds, path, f"{a.kind} attention (this family has {', '.join(kinds)})")
    return {"num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "head_dim": a.head_dim}


def _glu(ffn, path: tuple, what: str = "ffn") -> tuple[int, str, bool]:
    _need(isinstance(ffn, A.GLU), path, f"{what} {getattr(ffn, 'kind', 'none')} (this family has a gated FFN)")
    return ffn.hidden, HF_ACTIVATIONS[ffn.act], ffn.bias


# ----------------------------------------------------------------------------- exporters


@dataclass(frozen=True)
class _LlamaLike:
    """What a llama-like family fixes and what its config chooses."""

    placement: str = "pre"  # where its RMSNorms sit
    qk_norm: str | None = None  # the scope of its QK-norm (rmsnorm, the blocks' eps), or None: it has none
    attention_bias: str = "none"  # none | both (attention_bias biases q, k, v and o) | qkv (always, o never)
    mlp_bias: bool = False  # an mlp_bias key
    windows: str | None = None  # None | all (one sliding_window on every layer) | per_layer (layer_types)
    nope: bool = False  # layers without RoPE (no_rope_layers)
    partial_rope: bool = False  # rope_parameters' partial_rotary_factor


_LLAMA_LIKE = {
    "llama": _LlamaLike(attention_bias="both", mlp_bias=True),
    "mistral": _LlamaLike(windows="all"),
    "qwen2": _LlamaLike(attention_bias="qkv", windows="per_layer"),
    "qwen3": _LlamaLike(qk_norm="head", attention_bias="both", windows="per_layer"),
    "olmo2": _LlamaLike(placement="output", qk_norm="projection", attention_bias="both"),
    "smollm3": _LlamaLike(attention_bias="both", mlp_bias=True, windows="per_layer", nope=True),
    "phi3": _LlamaLike(windows="all", partial_rope=True),
}
_PLACEMENTS = {"pre": "pre-norm RMSNorm", "output": "RMSNorm on each branch's output (placement = output)"}


def _llama_like(m: A.Model, model_type: str) -> dict:
    family = _LLAMA_LIKE[model_type]
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    if family.nope:
        for k in kinds:
            _need(m.blocks[k].position in ("inherit", None), ("blocks", k, "position"),
                  "a per-block position other than none (NoPE)")
    else:
        _positions_inherit(m, kinds)
    norm = _same(m, kinds, "norm", "norms")
    b0 = m.blocks[kinds[0]]
    _need(norm.kind == "rmsnorm" and norm.placement == family.placement and not norm.unit_offset,
          ("blocks", kinds[0], "norm"),
          f"{norm.kind}(placement = {norm.placement}{', unit_offset' if norm.unit_offset else ''}): "
          f"{model_type} has {_PLACEMENTS[family.placement]}")
    _need(m.final_norm == A.Norm(kind="rmsnorm", eps=norm.eps), ("final_norm",),
          f"a final norm other than the blocks' rmsnorm(eps = {norm.eps})")
    ffn = _same(m, kinds, "ffn", "FFNs")
    hidden, act, mlp_bias = _glu(ffn, ("blocks", kinds[0], "ffn"))
    attentions = [m.blocks[k].attention for k in kinds]
    windows = {k: m.blocks[k].attention.window if m.blocks[k].attention else None for k in kinds}
    heads = _attention_kv(m, b0.attention, ("blocks", kinds[0], "attention"))
    for k, a in zip(kinds, attentions):
        _need(a is not None and a.model_copy(update={"window": None}) == b0.attention.model_copy(update={"window": None}),
              ("blocks", k, "attention"), "blocks whose attentions differ other than in their window")
    a = b0.attention
    _need(a.softcap is None, ("blocks", kinds[0], "attention", "softcap"), "attention soft-capping")
    _need(_default_scale(a), ("blocks", kinds[0], "attention", "scale"), "an attention scale other than 1/sqrt(head_dim)")
    if family.qk_norm is None:
        _need(a.qk_norm is None, ("blocks", kinds[0], "attention", "qk_norm"), f"QK-norm ({model_type} has none)")
    else:
        scope = ", scope = projection" if family.qk_norm == "projection" else ""
        _need(a.qk_norm == A.QKNorm(kind="rmsnorm", eps=norm.eps, scope=family.qk_norm),
              ("blocks", kinds[0], "attention", "qk_norm"),
              f"{model_type} normalises q and k with the blocks' norm: qk_norm = rmsnorm(eps = {norm.eps}{scope})")
    rope = _rope_parameters(m.position, ("position",), a.head_dim, partial=family.partial_rope)
    config = {"model_type": model_type, "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
              "num_hidden_layers": len(layers), **heads, "hidden_act": act, "max_position_embeddings": m.context,
              "rms_norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
              "rope_parameters": rope}
    window_set = {w for w in windows.values() if w is not None}
    _need(len(window_set) <= 1, ("blocks", kinds[-1], "attention", "window"), "sliding windows of different widths")
    window = window_set.pop() if window_set else None
    windowed = next((k for k in kinds if windows[k] is not None), kinds[0])
    if family.windows is None:
        _need(window is None, ("blocks", windowed, "attention", "window"), f"a sliding window ({model_type} has none)")
    if family.attention_bias == "both":
        _need(a.bias == a.out_bias, ("blocks", kinds[0], "attention", "out_bias"),
              f"a bias on q, k, v but not on the output, or the reverse ({model_type}'s attention_bias sets both)")
        config["attention_bias"] = a.bias
    if family.mlp_bias:
        config["mlp_bias"] = mlp_bias
    else:
        _need(not mlp_bias, ("blocks", kinds[0], "ffn", "bias"), f"FFN biases ({model_type} has none)")
    if family.attention_bias == "none":
        _need(not a.bias and not a.out_bias, ("blocks", kinds[0], "attention", "bias"), "attention biases")
    if family.windows == "all":
        _need(all(windows[k] == window for k in kinds), ("blocks", windowed, "attention", "window"),
              f"a sliding window on some layers only ({model_type}'s window is on every layer)")
        config["sliding_window"] = window
    if family.attention_bias == "qkv":
        _need(a.bias and not a.out_bias, ("blocks", kinds[0], "attention", "bias"),
              f"{model_type} biases q, k and v and not the output: bias = true, out_bias = false")
    if family.windows == "per_layer":
        config.update(use_sliding_window=window is not None, sliding_window=window,
                      layer_types=["sliding_attention" if windows[k] else "full_attention" for k in layers])
    if family.nope:
        config["no_rope_layers"] = [int(m.position_of(k) is not None) for k in layers]
    if model_type in ("smollm3", "phi3"):
        config["pad_token_id"] = None  # their default padding ids lie past a small vocabulary
    if model_type == "phi3" and rope["rope_type"] == "longrope":
        config["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
    return config


def _as_mistral(m: A.Model, kinds, hidden: int, attention=None, **model_update) -> dict:
    """The mistral config of `m` with each block kind's FFN a dense SwiGLU of `hidden` and, where
    given, its attention replaced by `attention(kind)`: the dense model an MoE family is built
    around, whose keys the family's exporter then completes or overrides."""
    blocks = {k: m.blocks[k].model_copy(update={"ffn": A.GLU(kind="swiglu", hidden=hidden),
                                              **({"attention": attention(k)} if attention else {})}) for k in kinds}
    dense = A.Model.model_validate({**m.model_dump(exclude={"blocks", *model_update}),
                                    **{k: v.model_dump() for k, v in model_update.items()}, "blocks": blocks})
    return _llama_like(dense, "mistral")


def _mixtral(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _need(len(kinds) == 1, ("layers",), "more than one kind of layer (mixtral's layers are all alike)")
    b = m.blocks[kinds[0]]
    moe = b.ffn
    _need(isinstance(moe, A.MoE), ("blocks", kinds[0], "ffn"), "a dense FFN (mixtral's FFN is a mixture of experts)")
    hidden, act, bias = _glu(moe.expert, ("blocks", kinds[0], "ffn", "expert"), "expert")
    config = _as_mistral(m, kinds, hidden)
    config.update(model_type="mixtral", num_local_experts=moe.experts, num_experts_per_tok=moe.top_k,
                  output_router_logits=moe.aux_loss > 0, router_aux_loss_coef=moe.aux_loss or 0.001)
    return config


def _qwen2_moe(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    sparse = [isinstance(m.blocks[k].ffn, A.MoE) for k in layers]
    _need(any(sparse), ("layers",), "no mixture-of-experts layer")
    moe_kind = layers[sparse.index(True)]
    moe = m.blocks[moe_kind].ffn
    expert_hidden, _, _ = _glu(moe.expert, ("blocks", moe_kind, "ffn", "expert"), "expert")
    _need(moe.shared is not None and moe.shared_gate, ("blocks", moe_kind, "ffn", "shared"),
          "qwen2_moe has one shared expert behind a sigmoid gate: shared = swiglu(...), shared_gate = true")
    shared_hidden, _, _ = _glu(moe.shared, ("blocks", moe_kind, "ffn", "shared"), "shared expert")
    dense_kinds = [k for k in kinds if not isinstance(m.blocks[k].ffn, A.MoE)]
    hidden = m.blocks[dense_kinds[0]].ffn.hidden if dense_kinds and isinstance(m.blocks[dense_kinds[0]].ffn, A.GLU) \
        else expert_hidden
    a = m.blocks[moe_kind].attention
    _need(all(m.blocks[k].attention is not None for k in kinds), ("layers",), "layers without attention")
    # Every layer as the dense llama-like model the family is built around, then the experts.
    config = _as_mistral(m, kinds, hidden, lambda k: a.model_copy(update={"bias": False}))
    del config["sliding_window"]
    config.update(model_type="qwen2_moe", qkv_bias=a.bias, num_experts=moe.experts, num_experts_per_tok=moe.top_k,
                  moe_intermediate_size=expert_hidden, shared_expert_intermediate_size=shared_hidden,
                  norm_topk_prob=moe.normalize_top_k, decoder_sparse_step=1,
                  mlp_only_layers=[i for i, s in enumerate(sparse) if not s], intermediate_size=hidden)
    return config


def _qwen3_moe(m: A.Model) -> dict:
    """Qwen3's attention (per-head RMSNorm on q and k, one window for every layer or none) with
    routed experts; dense layers anywhere are mlp_only_layers."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    sparse = [isinstance(m.blocks[k].ffn, A.MoE) for k in layers]
    _need(any(sparse), ("layers",), "no mixture-of-experts layer")
    moe_kind = layers[sparse.index(True)]
    moe = m.blocks[moe_kind].ffn
    expert_hidden, _, _ = _glu(moe.expert, ("blocks", moe_kind, "ffn", "expert"), "expert")
    _need(moe.shared is None and not moe.shared_experts, ("blocks", moe_kind, "ffn", "shared"),
          "shared experts (qwen3_moe has routed experts only)")
    dense_kinds = [k for k in kinds if not isinstance(m.blocks[k].ffn, A.MoE)]
    hidden = m.blocks[dense_kinds[0]].ffn.hidden if dense_kinds and isinstance(m.blocks[dense_kinds[0]].ffn, A.GLU) \
        else expert_hidden
    a = m.blocks[moe_kind].attention
    _need(all(m.blocks[k].attention is not None for k in kinds), ("layers",), "layers without attention")
    _need(a.qk_norm is not None, ("blocks", moe_kind, "attention"), "qwen3_moe normalises q and k: qk_norm = rmsnorm(...)")
    # Every layer as the dense model the family is built around (mistral: one window for all), then the rest.
    plain = {"qk_norm": None, "bias": False, "out_bias": False}
    config = _as_mistral(m, kinds, hidden, lambda k: m.blocks[k].attention.model_copy(update=plain))
    window = config.pop("sliding_window")
    config.update(model_type="qwen3_moe", attention_bias=a.bias, use_sliding_window=window is not None,
                  sliding_window=window, num_experts=moe.experts, num_experts_per_tok=moe.top_k,
                  moe_intermediate_size=expert_hidden, norm_topk_prob=moe.normalize_top_k, decoder_sparse_step=1,
                  mlp_only_layers=[i for i, s in enumerate(sparse) if not s], intermediate_size=hidden)
    return config


def _qwen3_next(m: A.Model) -> dict:
    """Gated DeltaNet layers and gated attention layers (layer_types), zero-centred RMSNorms, and
    Qwen2-MoE's experts with a gated shared expert; dense layers are mlp_only_layers. What the
    checks below leave open (QK-norm, biases, other options) the round trip compares."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "rmsnorm" and norm.placement == "pre" and norm.unit_offset, ("blocks", kinds[0], "norm"),
          "qwen3_next's norms are zero-centred pre-norm RMSNorms: rmsnorm(unit_offset = true)")
    full = [k for k in kinds if m.blocks[k].attention is not None]
    linear = [k for k in kinds if isinstance(m.blocks[k].ssm, A.GatedDeltaNet)]
    for k in kinds:
        _need(k in full or k in linear, ("blocks", k), "a block whose mixer is neither attention nor gated_deltanet")
        _need(m.blocks[k].ffn is not None, ("blocks", k, "ffn"), "a block without an FFN")
    config: dict[str, Any] = {}
    if full:
        a = _same(m, full, "attention", "attentions")
        config.update(_attention_kv(m, a, ("blocks", full[0], "attention")), attention_bias=a.bias,
                      rope_parameters=_rope_parameters(m.position, ("position",), a.head_dim, partial=True))
        _need(a.output_gate, ("blocks", full[0], "attention"), "qwen3_next gates its attention: output_gate = true")
    if linear:
        s = _same(m, linear, "ssm", "gated_deltanet layers")
        config.update(linear_num_key_heads=s.key_heads, linear_num_value_heads=s.value_heads,
                      linear_key_head_dim=s.key_dim, linear_value_head_dim=s.value_dim,
                      linear_conv_kernel_dim=s.conv_size)
    sparse = [isinstance(m.blocks[k].ffn, A.MoE) for k in layers]
    dense = [k for k in kinds if not isinstance(m.blocks[k].ffn, A.MoE)]
    if dense:
        config["intermediate_size"], _, _ = _glu(_same(m, dense, "ffn", "dense FFNs"), ("blocks", dense[0], "ffn"))
    if any(sparse):
        moe_kinds = [k for k in kinds if isinstance(m.blocks[k].ffn, A.MoE)]
        moe = _same(m, moe_kinds, "ffn", "mixtures of experts")
        path = ("blocks", moe_kinds[0], "ffn")
        _need(moe.shared is not None and moe.shared_gate, path + ("shared",),
              "qwen3_next has one shared expert behind a sigmoid gate: shared = swiglu(...), shared_gate = true")
        expert_hidden, _, _ = _glu(moe.expert, path + ("expert",), "expert")
        shared_hidden, _, _ = _glu(moe.shared, path + ("shared",), "shared expert")
        config.update(num_experts=moe.experts, num_experts_per_tok=moe.top_k, moe_intermediate_size=expert_hidden,
                      shared_expert_intermediate_size=shared_hidden, norm_topk_prob=moe.normalize_top_k)
    config.update(model_type="qwen3_next", vocab_size=m.vocab, hidden_size=m.d_model, num_hidden_layers=len(layers),
                  hidden_act="silu", max_position_embeddings=m.context, rms_norm_eps=norm.eps,
                  tie_word_embeddings=m.tie_embeddings, dtype=_dtype(m), decoder_sparse_step=1,
                  mlp_only_layers=[i for i, s in enumerate(sparse) if not s],
                  layer_types=["full_attention" if k in full else "linear_attention" for k in layers])
    return config


def _olmoe(m: A.Model) -> dict:
    """Pre-norm, QK-norm over the whole q and k projections, routed experts in every layer."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _need(len(kinds) == 1, ("layers",), "more than one kind of layer (olmoe's layers are all alike)")
    b = m.blocks[kinds[0]]
    moe = b.ffn
    _need(isinstance(moe, A.MoE), ("blocks", kinds[0], "ffn"), "a dense FFN (olmoe's FFN is a mixture of experts)")
    hidden, _, _ = _glu(moe.expert, ("blocks", kinds[0], "ffn", "expert"), "expert")
    a = b.attention
    _need(a is not None and a.qk_norm is not None, ("blocks", kinds[0], "attention"),
          "olmoe normalises q and k: qk_norm = rmsnorm(scope = projection)")
    plain = {"qk_norm": None, "bias": False, "out_bias": False}
    config = _as_mistral(m, kinds, hidden, lambda k: a.model_copy(update=plain))
    _need(config.pop("sliding_window") is None, ("blocks", kinds[0], "attention", "window"), "a sliding window")
    config.update(model_type="olmoe", attention_bias=a.bias, num_experts=moe.experts, num_experts_per_tok=moe.top_k,
                  norm_topk_prob=moe.normalize_top_k, pad_token_id=None, eos_token_id=None)
    return config


def _output_norm_layers(m: A.Model, family: str):
    """What OLMo 3 and EXAONE 4 share: output norms, one FFN and one attention for every layer but
    its window, one window width. Returns (layers, kinds, norm, hidden, act, attention, head
    counts, each kind's window, the set of windows)."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "rmsnorm" and norm.placement == "output" and not norm.unit_offset, ("blocks", kinds[0], "norm"),
          f"{family} normalises each branch's output: rmsnorm(placement = output)")
    _need(m.final_norm == A.Norm(kind="rmsnorm", eps=norm.eps), ("final_norm",),
          f"a final norm other than the blocks' rmsnorm(eps = {norm.eps})")
    hidden, act, _ = _glu(_same(m, kinds, "ffn", "FFNs"), ("blocks", kinds[0], "ffn"))
    a = m.blocks[kinds[0]].attention
    heads = _attention_kv(m, a, ("blocks", kinds[0], "attention"))
    for k in kinds:
        other = m.blocks[k].attention
        _need(other is not None and other.model_copy(update={"window": None}) == a.model_copy(update={"window": None}),
              ("blocks", k, "attention"), "blocks whose attentions differ other than in their window")
    windows = {k: m.blocks[k].attention.window for k in kinds}
    window_set = {w for w in windows.values() if w is not None}
    _need(len(window_set) <= 1, ("layers",), "sliding windows of different widths")
    return layers, kinds, norm, hidden, act, a, heads, windows, window_set


def _olmo3(m: A.Model) -> dict:
    """OLMo 2's blocks with sliding and full layers (layer_types), a RoPE per layer type."""
    layers, kinds, norm, hidden, act, a, heads, windows, window_set = _output_norm_layers(m, "olmo3")
    types = {k: "sliding_attention" if windows[k] else "full_attention" for k in kinds}
    ropes: dict[str, dict] = {}
    for k in kinds:
        path = ("blocks", k, "position") if m.blocks[k].position != "inherit" else ("position",)
        rope = _rope_parameters(m.position_of(k), path, a.head_dim)
        _need(ropes.setdefault(types[k], rope) == rope, path, "layers of one type (sliding or full) with different RoPE")
    for t in ("sliding_attention", "full_attention"):  # a type no layer has still needs a setting
        ropes.setdefault(t, next(iter(ropes.values())))
    return {"model_type": "olmo3", "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
            "num_hidden_layers": len(layers), **heads, "hidden_act": act, "max_position_embeddings": m.context,
            "rms_norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
            "attention_bias": a.bias, "rope_parameters": ropes, "sliding_window": window_set.pop() if window_set else None,
            "layer_types": [types[k] for k in layers], "pad_token_id": None, "eos_token_id": None}


def _exaone4(m: A.Model) -> dict:
    """Output norms, per-head QK-norm, sliding layers with RoPE and global layers without it
    (or, with no window, RoPE on every layer)."""
    layers, kinds, norm, hidden, act, a, heads, windows, window_set = _output_norm_layers(m, "exaone4")
    rope = None
    for k in kinds:
        path = ("blocks", k, "position") if m.blocks[k].position != "inherit" else ("position",)
        pos = m.position_of(k)
        if window_set and not windows[k]:
            _need(pos is None, path, "a global layer with positions (exaone4's global layers are NoPE)")
            continue
        params = _rope_parameters(pos, path, a.head_dim)
        _need(rope in (None, params), path, "layers with different RoPE")
        rope = params
    return {"model_type": "exaone4", "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
            "num_hidden_layers": len(layers), **heads, "hidden_act": act, "max_position_embeddings": m.context,
            "rms_norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
            "rope_parameters": rope or {"rope_type": "default", "rope_theta": 10000.0},
            "sliding_window": window_set.pop() if window_set else None,
            "layer_types": ["sliding_attention" if windows[k] else "full_attention" for k in layers],
            "bos_token_id": None, "eos_token_id": None}


def _ernie4_5_moe(m: A.Model) -> dict:
    """Llama-like layers, expert layers every moe_layer_interval between a first and a last one;
    softmax routing with a correction bias and renormalised weights (floored by moe_norm_min)."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    sparse = [i for i, k in enumerate(layers) if isinstance(m.blocks[k].ffn, A.MoE)]
    _need(bool(sparse), ("layers",), "no mixture-of-experts layer")
    start, end = sparse[0], sparse[-1]
    interval = next((n for n in range(1, len(layers) + 1) if sparse == [i for i in range(start, end + 1)
                                                                     if (i + 1) % n == 0]), None)
    _need(interval is not None, ("layers",), "expert layers that are not every n-th layer between a first and "
          "a last one (moe_layer_interval, moe_layer_start_index, moe_layer_end_index)")
    moe_kind = layers[start]
    moe = m.blocks[moe_kind].ffn
    expert_hidden, _, _ = _glu(moe.expert, ("blocks", moe_kind, "ffn", "expert"), "expert")
    _need(moe.correction_bias and moe.normalize_top_k, ("blocks", moe_kind, "ffn"),
          "ernie4_5_moe chooses with a correction bias and renormalises: correction_bias = true")
    shared = 0
    if moe.shared is not None:
        shared_hidden, _, _ = _glu(moe.shared, ("blocks", moe_kind, "ffn", "shared"), "shared expert")
        _need(shared_hidden % expert_hidden == 0, ("blocks", moe_kind, "ffn", "shared"),
              "shared experts whose width is not a multiple of the experts'")
        shared = shared_hidden // expert_hidden
    dense_kinds = [k for k in kinds if not isinstance(m.blocks[k].ffn, A.MoE)]
    hidden = m.blocks[dense_kinds[0]].ffn.hidden if dense_kinds and isinstance(m.blocks[dense_kinds[0]].ffn, A.GLU) \
        else expert_hidden
    _need(all(m.blocks[k].attention is not None for k in kinds), ("layers",), "layers without attention")
    config = _as_mistral(m, kinds, hidden)
    _need(config.pop("sliding_window") is None, ("blocks", moe_kind, "attention", "window"), "a sliding window")
    config.update(model_type="ernie4_5_moe", intermediate_size=hidden, moe_num_experts=moe.experts, moe_k=moe.top_k,
                  moe_intermediate_size=expert_hidden, moe_num_shared_experts=shared, moe_layer_start_index=start,
                  moe_layer_end_index=end, moe_layer_interval=interval, moe_norm_min=moe.normalize_min,
                  use_bias=False, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    return config


def _hunyuan_v1_moe(m: A.Model) -> dict:
    """Per-head QK-norm after RoPE, routed experts and a shared MLP of the experts' width in every
    layer, one top-k per layer; NTK RoPE is the checkpoints' `dynamic` with an `alpha`."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    moes = {k: m.blocks[k].ffn for k in kinds}
    for k, moe in moes.items():
        _need(isinstance(moe, A.MoE), ("blocks", k, "ffn"), "a dense FFN (hunyuan_v1_moe's FFNs are experts)")
    moe_kind = kinds[0]
    moe = moes[moe_kind]
    hidden, _, _ = _glu(moe.expert, ("blocks", moe_kind, "ffn", "expert"), "expert")
    for k in kinds:  # blocks may differ in their top-k only
        _need(moes[k].model_copy(update={"top_k": moe.top_k}) == moe, ("blocks", k, "ffn"),
              "expert layers that differ other than in top_k")
    a = m.blocks[moe_kind].attention
    _need(a is not None and a.qk_norm is not None, ("blocks", moe_kind, "attention"),
          "hunyuan_v1_moe normalises q and k after RoPE: qk_norm = rmsnorm(after_rope = true)")
    rope = m.position
    scaling = getattr(rope, "scaling", None)
    plain = rope.model_copy(update={"scaling": None}) if isinstance(scaling, A.NTKScaling) else rope
    # every layer as the dense model the family is built around (NTK aside), then the rest
    config = _as_mistral(m, kinds, hidden, lambda k: m.blocks[k].attention.model_copy(
        update={"qk_norm": None, "bias": False, "out_bias": False}), position=plain)
    _need(config.pop("sliding_window") is None, ("blocks", moe_kind, "attention", "window"), "a sliding window")
    if isinstance(scaling, A.NTKScaling):  # transformers wants the factor its ntk_alpha then ignores
        config["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": float(rope.theta), "alpha": scaling.factor,
                                     "factor": 1.0}
    top_ks = [moes[k].top_k for k in layers]
    config.update(model_type="hunyuan_v1_moe", attention_bias=a.bias, num_experts=moe.experts,
                  moe_topk=top_ks[0] if len(set(top_ks)) == 1 else top_ks, head_dim=a.head_dim,
                  pad_token_id=None, bos_token_id=None, eos_token_id=None, eod_token_id=None, sep_token_id=None)
    return config


def _gemma2(m: A.Model, model_type: str = "gemma2") -> dict:
    """Gemma 2, and Gemma 3 (gemma3_text): its QK-norm with a unit offset, and a RoPE per layer type."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, {"embedding_scale", "logit_softcap"})
    if model_type == "gemma2":
        _positions_inherit(m, kinds)
    _need(m.embedding_scale is not None and math.isclose(m.embedding_scale, m.d_model**0.5, rel_tol=1e-12),
          ("embedding_scale",),
          f"{model_type} scales the embeddings by sqrt(d_model): embedding_scale = d_model ** 0.5")
    norm = _same(m, kinds, "norm", "norms")
    ffn = _same(m, kinds, "ffn", "FFNs")
    hidden, act, _ = _glu(ffn, ("blocks", kinds[0], "ffn"))
    a = m.blocks[kinds[0]].attention
    heads = _attention_kv(m, a, ("blocks", kinds[0], "attention"))
    scale = a.scale if a.scale is not None else a.head_dim**-0.5
    scalar = round(scale**-2)
    _need(scalar >= 1 and math.isclose(scalar**-0.5, scale, rel_tol=1e-9), ("blocks", kinds[0], "attention", "scale"),
          f"{model_type} writes the score scale as query_pre_attn_scalar ** -0.5 with a whole query_pre_attn_scalar")
    windows = [m.blocks[k].attention.window if m.blocks[k].attention else None for k in layers]
    window_set = {w for w in windows if w is not None}
    _need(len(window_set) <= 1, ("layers",), "sliding windows of different widths")
    if model_type == "gemma2":
        rope = _rope_parameters(m.position, ("position",), a.head_dim)
    else:
        _need(a.qk_norm == A.QKNorm(kind="rmsnorm", eps=norm.eps, unit_offset=True),
              ("blocks", kinds[0], "attention", "qk_norm"),
              f"gemma3 normalises q and k per head: qk_norm = rmsnorm(eps = {norm.eps}, unit_offset = true)")
        rope = {}  # one RoPE per layer type: every sliding layer shares one, every full layer another
        for k, w in zip(layers, windows):
            layer_type = "sliding_attention" if w else "full_attention"
            params = _rope_parameters(m.position_of(k), ("blocks", k, "position"), a.head_dim)
            _need(rope.setdefault(layer_type, params) == params, ("blocks", k, "position"),
                  f"{layer_type.split('_')[0]} layers with different RoPE (gemma3 has one per layer type)")
    return {"model_type": model_type, "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
            "num_hidden_layers": len(layers), **heads, "hidden_activation": act, "max_position_embeddings": m.context,
            "rms_norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
            "rope_parameters": rope, "query_pre_attn_scalar": scalar, "attn_logit_softcapping": a.softcap,
            "final_logit_softcapping": m.logit_softcap, "sliding_window": window_set.pop() if window_set else None,
            "layer_types": ["sliding_attention" if w else "full_attention" for w in windows]}


def _gemma(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, {"embedding_scale"})
    _positions_inherit(m, kinds)
    _need(m.embedding_scale is not None and math.isclose(m.embedding_scale, m.d_model**0.5, rel_tol=1e-12),
          ("embedding_scale",), "gemma scales the embeddings by sqrt(d_model): embedding_scale = d_model ** 0.5")
    _need(m.embedding_scale_in_dtype, ("embedding_scale",),
          "gemma rounds its embedding scale to the model's dtype: embedding_scale_in_dtype = true")
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "rmsnorm" and norm.placement == "pre" and norm.unit_offset, ("blocks", kinds[0], "norm"),
          "gemma has pre-norm RMSNorm with a unit offset: rmsnorm(unit_offset = true)")
    _need(m.final_norm == norm, ("final_norm",), "a final norm other than the blocks' norm")
    hidden, act, mlp_bias = _glu(_same(m, kinds, "ffn", "FFNs"), ("blocks", kinds[0], "ffn"))
    _need(not mlp_bias, ("blocks", kinds[0], "ffn", "bias"), "FFN biases (gemma has none)")
    a = _same(m, kinds, "attention", "attentions")
    heads = _attention_kv(m, a, ("blocks", kinds[0], "attention"))
    _need(a.bias == a.out_bias, ("blocks", kinds[0], "attention", "out_bias"),
          "a bias on q, k, v but not on the output, or the reverse (gemma's attention_bias sets both)")
    _need(a.window is None and a.softcap is None and _default_scale(a), ("blocks", kinds[0], "attention"),
          "a sliding window, soft-capping or a score scale other than 1/sqrt(head_dim) (gemma has none)")
    return {"model_type": "gemma", "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
            "num_hidden_layers": len(layers), **heads, "hidden_act": act, "max_position_embeddings": m.context,
            "rms_norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
            "attention_bias": a.bias, "rope_parameters": _rope_parameters(m.position, ("position",), a.head_dim)}


def _starcoder2(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "layernorm" and norm.placement == "pre" and norm.bias is not False,
          ("blocks", kinds[0], "norm"), "starcoder2 has pre-norm LayerNorm with biases")
    _need(m.final_norm == norm, ("final_norm",), "a final norm other than the blocks' layernorm")
    ffn = _same(m, kinds, "ffn", "FFNs")
    _need(isinstance(ffn, A.MLP), ("blocks", kinds[0], "ffn"), f"ffn {getattr(ffn, 'kind', 'none')} (starcoder2 has mlp)")
    a = _same(m, kinds, "attention", "attentions")
    heads = _attention_kv(m, a, ("blocks", kinds[0], "attention"))
    _need(a.bias == a.out_bias == ffn.bias, ("blocks", kinds[0], "attention", "bias"),
          "biases on some projections only (starcoder2's use_bias sets q, k, v, o and the MLP's together)")
    _need(a.softcap is None and _default_scale(a), ("blocks", kinds[0], "attention"),
          "soft-capping or a score scale other than 1/sqrt(head_dim) (starcoder2 has none)")
    return {"model_type": "starcoder2", "vocab_size": m.vocab, "hidden_size": m.d_model,
            "intermediate_size": ffn.hidden, "num_hidden_layers": len(layers),
            **{k: v for k, v in heads.items() if k != "head_dim"}, "hidden_act": HF_ACTIVATIONS[ffn.act],
            "max_position_embeddings": m.context, "norm_epsilon": norm.eps, "tie_word_embeddings": m.tie_embeddings,
            "dtype": _dtype(m), "use_bias": a.bias, "sliding_window": a.window,
            "rope_parameters": _rope_parameters(m.position, ("position",), a.head_dim), **_token_ids(m, 0)}


def _granite(m: A.Model, model_type: str) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, {"embedding_scale", "logit_scale", "residual_scale"})
    _need(not m.embedding_scale_in_dtype, ("embedding_scale_in_dtype",),
          f"{model_type} multiplies by embedding_multiplier unrounded: embedding_scale_in_dtype = false")
    _positions_inherit(m, kinds)
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "rmsnorm" and norm.placement == "pre" and not norm.unit_offset, ("blocks", kinds[0], "norm"),
          f"{model_type} has pre-norm RMSNorm")
    _need(m.final_norm == norm, ("final_norm",), "a final norm other than the blocks' rmsnorm")
    ffn = _same(m, kinds, "ffn", "FFNs")
    path = ("blocks", kinds[0], "ffn")
    config: dict[str, Any] = {}
    if model_type == "granitemoe":
        _need(isinstance(ffn, A.MoE), path, "a dense FFN (granitemoe's FFN is a mixture of experts)")
        _need(ffn.shared is None and not ffn.shared_experts, path + ("shared",), "shared experts (granitemoe has none)")
        _need(ffn.router == "softmax" and ffn.normalize_top_k, path + ("router",),
              "granitemoe takes the softmax of the top-k router logits: router = softmax, normalize_top_k = true")
        hidden, act, bias = _glu(ffn.expert, path + ("expert",), "expert")
        _need(not bias, path + ("expert", "bias"), "expert biases (granitemoe has none)")
        config.update(num_local_experts=ffn.experts, num_experts_per_tok=ffn.top_k)
    else:
        hidden, act, bias = _glu(ffn, path)
        config["mlp_bias"] = bias
    a = _same(m, kinds, "attention", "attentions")
    heads = _attention_kv(m, a, ("blocks", kinds[0], "attention"))
    _need(a.bias == a.out_bias, ("blocks", kinds[0], "attention", "out_bias"),
          f"a bias on q, k, v but not on the output, or the reverse ({model_type}'s attention_bias sets both)")
    _need(a.window is None and a.softcap is None, ("blocks", kinds[0], "attention"),
          f"a sliding window or soft-capping ({model_type} has neither)")
    _need(a.head_dim * a.heads == m.d_model, ("blocks", kinds[0], "attention", "head_dim"),
          f"a head_dim other than d_model / heads ({model_type} derives it)")
    # HF divides the logits by logits_scaling; the spec multiplies by its reciprocal: exact both ways
    logit_scale = m.logit_scale if m.logit_scale is not None else 1.0
    logits_scaling = 1 / logit_scale
    _need(1 / logits_scaling == logit_scale, ("logit_scale",),
          f"a logit_scale whose reciprocal does not convert back exactly ({model_type} divides by logits_scaling)")
    config.update({
        "model_type": model_type, "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
        "num_hidden_layers": len(layers), **{k: v for k, v in heads.items() if k != "head_dim"}, "hidden_act": act,
        "max_position_embeddings": m.context, "rms_norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings,
        "dtype": _dtype(m), "attention_bias": a.bias,
        "rope_parameters": _rope_parameters(m.position, ("position",), a.head_dim),
        "embedding_multiplier": m.embedding_scale or 1.0, "residual_multiplier": m.residual_scale or 1.0,
        "attention_multiplier": a.scale if a.scale is not None else a.head_dim**-0.5,
        "logits_scaling": logits_scaling})
    return config


def _gpt_neox(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "layernorm" and norm.placement == "pre" and norm.bias is not False,
          ("blocks", kinds[0], "norm"), "gpt_neox has pre-norm LayerNorm with biases")
    _need(m.final_norm == norm, ("final_norm",), "a final norm other than the blocks' layernorm")
    parallel = _same(m, kinds, "parallel", "residual wiring (parallel or not)")
    ffn = _same(m, kinds, "ffn", "FFNs")
    _need(isinstance(ffn, A.MLP) and ffn.bias, ("blocks", kinds[0], "ffn"), "gpt_neox has an mlp with biases")
    a = _same(m, kinds, "attention", "attentions")
    heads = _attention_kv(m, a, ("blocks", kinds[0], "attention"), kinds=("mha",))
    _need(a.bias == a.out_bias, ("blocks", kinds[0], "attention", "out_bias"),
          "a bias on q, k, v but not on the output, or the reverse (gpt_neox's attention_bias sets both)")
    _need(a.window is None and a.softcap is None and _default_scale(a), ("blocks", kinds[0], "attention"),
          "a sliding window, soft-capping or a score scale other than 1/sqrt(head_dim) (gpt_neox has none)")
    _need(a.head_dim * a.heads == m.d_model, ("blocks", kinds[0], "attention", "head_dim"),
          "a head_dim other than d_model / heads (gpt_neox derives it)")
    rope = _rope_parameters(m.position, ("position",), None)
    rotated = m.position.dim or a.head_dim
    factor = rotated / a.head_dim
    _need(int(a.head_dim * factor) == rotated, ("position", "dim"), "a rope dim that rotary_pct cannot state exactly")
    return {"model_type": "gpt_neox", "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": ffn.hidden,
            "num_hidden_layers": len(layers), "num_attention_heads": heads["num_attention_heads"],
            "hidden_act": HF_ACTIVATIONS[ffn.act], "max_position_embeddings": m.context, "layer_norm_eps": norm.eps,
            "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m), "attention_bias": a.bias,
            "use_parallel_residual": parallel, "rope_parameters": {**rope, "partial_rotary_factor": factor},
            **_token_ids(m, 0)}


def _gpt2(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _need(isinstance(m.position, A.Learned), ("position",), "gpt2 has learned positions: position = learned()")
    b = m.blocks[kinds[0]]
    _same(m, kinds, "ffn", "FFNs")
    _need(isinstance(b.ffn, A.MLP), ("blocks", kinds[0], "ffn"), f"ffn {getattr(b.ffn, 'kind', 'none')} (gpt2 has mlp)")
    _attention_kv(m, b.attention, ("blocks", kinds[0], "attention"), kinds=("mha",))
    act = "gelu_new" if b.ffn.act == "gelu_tanh" else HF_ACTIVATIONS[b.ffn.act]
    return {"model_type": "gpt2", "vocab_size": m.vocab, "n_embd": m.d_model, "n_layer": len(layers),
            "n_head": b.attention.heads, "n_positions": m.context, "n_inner": b.ffn.hidden,
            "activation_function": act, "layer_norm_epsilon": b.norm.eps, "dtype": _dtype(m),
            "tie_word_embeddings": True, **_token_ids(m, 50256)}


def _bert_like(m: A.Model, family: str) -> tuple[str, A.Block, float]:
    """What bert and albert share: an encoder of one post-norm MHA + MLP block, token types; its
    block's name, the block and the model's norm eps."""
    _need(m.family == "encoder", ("family",), f"family = {m.family} ({family} is an encoder)")
    kinds = list(dict.fromkeys(m.layers))
    b = m.blocks[kinds[0]]
    _need(m.type_vocab > 0, ("type_vocab",), f"no token-type embeddings ({family} always has them)")
    _need(isinstance(b.ffn, A.MLP), ("blocks", kinds[0], "ffn"),
          f"ffn {getattr(b.ffn, 'kind', 'none')} ({family} has mlp)")
    _attention_kv(m, b.attention, ("blocks", kinds[0], "attention"), kinds=("mha",))
    return kinds[0], b, m.embedding_norm.eps if m.embedding_norm is not None else b.norm.eps


def _bert_like_config(m: A.Model, b: A.Block, eps: float) -> dict:
    return {"vocab_size": m.vocab, "hidden_size": m.d_model, "num_hidden_layers": len(m.layers),
            "num_attention_heads": b.attention.heads, "intermediate_size": b.ffn.hidden,
            "hidden_act": HF_ACTIVATIONS[b.ffn.act], "max_position_embeddings": m.context,
            "type_vocab_size": m.type_vocab, "layer_norm_eps": eps, "dtype": _dtype(m)}


def _bert(m: A.Model) -> dict:
    kind, b, eps = _bert_like(m, "bert")
    _need(m.embedding_dim is None, ("embedding_dim",), "factorised embeddings (albert's, not bert's)")
    _need(not b.shared, ("blocks", kind, "shared"), "one set of weights for every layer (albert's, not bert's)")
    return {"model_type": "bert", **_bert_like_config(m, b, eps), **_bert_head(m, b, eps)}


def _albert(m: A.Model) -> dict:
    kind, b, eps = _bert_like(m, "albert")
    _need(len(set(m.layers)) == 1, ("layers",), "more than one block (albert repeats one shared layer)")
    _need(b.shared or len(m.layers) == 1, ("blocks", kind, "shared"),
          "layers with weights of their own (albert's share one set)")
    _need(m.embedding_dim is not None, ("embedding_dim",), "no embedding_dim (albert factorises its embeddings)")
    head = _bert_head(m, b, eps, "Albert")
    if "classifier_dropout" in head:
        head["classifier_dropout_prob"] = head.pop("classifier_dropout")
    return {"model_type": "albert", **_bert_like_config(m, b, eps), "embedding_size": m.embedding_dim,
            "num_hidden_groups": 1, "inner_group_num": 1, **head}


def _bert_head(m: A.Model, b: A.Block, eps: float, prefix: str = "Bert") -> dict:
    """The BERT class of the spec's head, and its settings: BertModel (a pooler, no head),
    BertForMaskedLM (no pooler; the prediction head, in the FFN's activation and the model's eps)
    or BertForSequenceClassification (the pooler and a classifier)."""
    head = m.head
    _need(not isinstance(head, A.RTDHead), ("head",), "a replaced-token detection head (electra's)")
    _need(m.pooler == (not isinstance(head, A.MLMHead)), ("pooler",),
          f"{prefix}ForMaskedLM has no pooler, and the other classes one" if isinstance(head, A.MLMHead)
          else f"no pooler ({prefix}Model and {prefix}ForSequenceClassification have one)")
    if head is None:
        return {"architectures": [f"{prefix}Model"]}
    if isinstance(head, A.MLMHead):
        _need(head.act == b.ffn.act, ("head", "act"), f"head act {head.act}: bert's head uses the FFN's, {b.ffn.act}")
        _need(head.norm.kind == "layernorm" and head.norm.eps == eps and head.norm.bias, ("head", "norm"),
              f"head norm {head.norm.kind}(eps = {head.norm.eps}): bert's is layernorm with the model's eps, {eps}")
        _need(head.bias, ("head", "bias"), "a head without its output bias (bert's has one)")
        _need(m.tie_embeddings, ("tie_embeddings",), "an untied head (bert's untied head keeps a second, unused "
              "output bias)")
        return {"architectures": [f"{prefix}ForMaskedLM"], "tie_word_embeddings": True}
    return {"architectures": [f"{prefix}ForSequenceClassification"], "num_labels": head.labels,
            "classifier_dropout": head.dropout}


def _electra(m: A.Model) -> dict:
    """ElectraModel, ElectraForPreTraining (rtd), ElectraForMaskedLM (mlm: GELU, the model's
    layernorm at the embedding width) or ElectraForSequenceClassification (classifier with
    dense = gelu): BERT's layer, no pooler, embeddings projected where their width differs."""
    kind, b, eps = _bert_like(m, "electra")
    _need(not b.shared or len(m.layers) == 1, ("blocks", kind, "shared"),
          "one set of weights for every layer (albert's, not electra's)")
    _need(not m.pooler, ("pooler",), "a pooler (electra has none)")
    _need(m.embedding_dim != m.d_model, ("embedding_dim",),
          "embedding_dim equal to d_model with its projection (electra projects only embeddings of another width)")
    config = {"model_type": "electra", **_bert_like_config(m, b, eps), "embedding_size": m.embedding_dim or m.d_model}
    head = m.head
    if head is None:
        return {**config, "architectures": ["ElectraModel"]}
    if isinstance(head, A.RTDHead):
        _need(head.act == b.ffn.act, ("head", "act"),
              f"head act {head.act}: electra's discriminator head uses the FFN's, {b.ffn.act}")
        return {**config, "architectures": ["ElectraForPreTraining"]}
    if isinstance(head, A.MLMHead):
        _need(head.act == "gelu", ("head", "act"), f"head act {head.act}: electra's generator head uses gelu")
        _need(head.norm.kind == "layernorm" and head.norm.eps == eps and head.norm.bias, ("head", "norm"),
              f"head norm {head.norm.kind}(eps = {head.norm.eps}): electra's is layernorm with the model's eps, {eps}")
        _need(head.bias, ("head", "bias"), "a head without its output bias (electra's has one)")
        return {**config, "architectures": ["ElectraForMaskedLM"], "tie_word_embeddings": m.tie_embeddings}
    _need(head.dense == "gelu", ("head", "dense"),
          f"a classifier with dense = {head.dense or 'none'} (electra's has its own dense layer and gelu)")
    return {**config, "architectures": ["ElectraForSequenceClassification"], "num_labels": head.labels,
            "classifier_dropout": head.dropout}


def _modernbert(m: A.Model) -> dict:
    """ModernBERT: pre-LayerNorm layers (one norm everywhere), the first layer's mixer without its
    norm, mha with a RoPE per layer type, windows of one width (local_attention = 2 (window - 1)),
    a GeGLU FFN; the class follows the head."""
    _need(m.family == "encoder", ("family",), f"family = {m.family} (modernbert is an encoder)")
    _model_extras(m, {"embedding_norm"})
    layers = list(m.layers)
    kinds = list(dict.fromkeys(layers))
    _need(not m.blocks[layers[0]].mixer_norm, ("blocks", layers[0], "mixer_norm"),
          "a norm before the first layer's attention (modernbert's reads the normed embeddings: mixer_norm = false)")
    for k in layers[1:]:
        _need(m.blocks[k].mixer_norm, ("blocks", k, "mixer_norm"), "a later layer without its attention norm")
    norm = m.embedding_norm
    _need(norm is not None and norm.kind == "layernorm", ("embedding_norm",), "no layernorm on the embeddings")
    for path, other in [(("final_norm",), m.final_norm)] + [(("blocks", k, "norm"), m.blocks[k].norm) for k in kinds]:
        _need(other == norm, path, f"a norm other than the embeddings' ({norm.kind}(eps = {norm.eps}, bias = "
              f"{str(norm.bias).lower()})): modernbert has one norm_eps and norm_bias")
    ffn = _same(m, kinds, "ffn", "FFNs")
    hidden, act, mlp_bias = _glu(ffn, ("blocks", kinds[0], "ffn"))
    a = m.blocks[kinds[0]].attention
    heads = _attention_kv(m, a, ("blocks", kinds[0], "attention"), kinds=("mha",))["num_attention_heads"]
    windows = [m.blocks[k].attention.window if m.blocks[k].attention else None for k in layers]
    window_set = {w for w in windows if w is not None}
    _need(len(window_set) <= 1, ("layers",), "sliding windows of different widths")
    rope = {}
    for k, w in zip(layers, windows):
        layer_type = "sliding_attention" if w else "full_attention"
        params = _rope_parameters(m.position_of(k), ("blocks", k, "position"), a.head_dim)
        _need(rope.setdefault(layer_type, params) == params, ("blocks", k, "position"),
              f"{layer_type.split('_')[0]} layers with different RoPE (modernbert has one per layer type)")
    rope.setdefault("full_attention", {"rope_type": "default", "rope_theta": 160_000.0})  # the config's defaults
    rope.setdefault("sliding_attention", {"rope_type": "default", "rope_theta": 10_000.0})
    ids = {key: token if token < m.vocab else None
           for key, token in (("pad_token_id", 50283), ("bos_token_id", 50281), ("eos_token_id", 50282),
                              ("cls_token_id", 50281), ("sep_token_id", 50282))}
    config = {"model_type": "modernbert", "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
              "num_hidden_layers": len(layers), "num_attention_heads": heads, "hidden_activation": act,
              "max_position_embeddings": m.context, "norm_eps": norm.eps, "norm_bias": norm.bias,
              "attention_bias": a.bias, "mlp_bias": mlp_bias, "layer_types": [
                  "sliding_attention" if w else "full_attention" for w in windows], "rope_parameters": rope,
              "local_attention": 2 * (window_set.pop() - 1) if window_set else 128, "dtype": _dtype(m), **ids}
    head = m.head
    if head is None:
        return {**config, "architectures": ["ModernBertModel"]}
    _need(head.norm == norm, ("head", "norm"), "a head norm other than the model's (modernbert's head uses "
          "norm_eps and norm_bias)")
    config.update(classifier_activation=HF_ACTIVATIONS[head.act], classifier_bias=head.dense_bias)
    if isinstance(head, A.MLMHead):
        return {**config, "architectures": ["ModernBertForMaskedLM"], "decoder_bias": head.bias,
                "tie_word_embeddings": m.tie_embeddings}
    _need(head.pooling in ("cls", "mean"), ("head", "pooling"), "a classifier on a pooler (modernbert pools the "
          "final states itself: pooling = cls or mean)")
    return {**config, "architectures": ["ModernBertForSequenceClassification"], "num_labels": head.labels,
            "classifier_dropout": head.dropout, "classifier_pooling": head.pooling}


def _deberta_v2(m: A.Model) -> dict:
    """DeBERTa-v2/v3: one post-norm block of disentangled attention and an MLP, an embedding norm,
    learned positions or none (position_biased_input), token types or none."""
    _need(m.family == "encoder", ("family",), f"family = {m.family} (deberta-v2 is an encoder)")
    kinds = list(dict.fromkeys(m.layers))
    _need(len(kinds) == 1, ("layers",), "more than one block (deberta-v2 repeats one layer)")
    b = m.blocks[kinds[0]]
    path = ("blocks", kinds[0])
    a = b.attention
    _need(isinstance(a, A.Disentangled), path + ("attention",),
          f"{getattr(a, 'kind', 'no')} attention (deberta-v2's is disentangled)")
    _need(not b.shared, path + ("shared",), "one set of weights for every layer (deberta-v2's layers have their own)")
    _need(m.embedding_dim is None, ("embedding_dim",), "factorised embeddings after the norm (albert's)")
    eps = b.norm.eps
    _need(b.norm.kind == "layernorm" and b.norm.placement == "post" and b.norm.bias is not False, path + ("norm",),
          "a norm other than the post-norm layernorm")
    _need(m.embedding_norm is not None and m.embedding_norm.kind == "layernorm" and m.embedding_norm.eps == eps
          and m.embedding_norm.bias is not False, ("embedding_norm",),
          f"an embedding norm other than layernorm(eps = {eps}) (deberta-v2 has one, with the layers' eps)")
    _need(a.bias and a.out_bias, path + ("attention", "bias"), "attention without biases (deberta-v2's have them)")
    _need(a.rel_norm is None or (a.rel_norm.kind == "layernorm" and a.rel_norm.eps == eps and a.rel_norm.bias
                                 is not False), path + ("attention", "rel_norm"),
          f"a rel_norm other than layernorm(eps = {eps})")
    _need(isinstance(b.ffn, A.MLP) and b.ffn.bias, path + ("ffn",), "an ffn other than mlp with biases")
    _need(m.position is None or isinstance(m.position, A.Learned), ("position",),
          "positions other than learned() or none")
    _model_extras(m, {"embedding_norm", "pooler", "type_vocab"})
    config = {"model_type": "deberta-v2", "vocab_size": m.vocab, "hidden_size": m.d_model,
              "num_hidden_layers": len(m.layers), "num_attention_heads": a.heads, "intermediate_size": b.ffn.hidden,
              "hidden_act": HF_ACTIVATIONS[b.ffn.act], "max_position_embeddings": m.context,
              "type_vocab_size": m.type_vocab, "layer_norm_eps": eps, "dtype": _dtype(m),
              "relative_attention": True, "pos_att_type": list(a.terms), "position_buckets": a.buckets or -1,
              "max_relative_positions": a.max_relative or -1, "share_att_key": a.share_keys,
              "norm_rel_ebd": "layer_norm" if a.rel_norm is not None else "none",
              "position_biased_input": m.position is not None}
    _need(a.heads * a.head_dim == m.d_model, path + ("attention", "head_dim"),
          "heads · head_dim other than d_model (deberta-v2's attention output is d_model wide)")
    head = m.head
    _need(m.pooler == isinstance(head, A.ClassifierHead), ("pooler",),
          "a pooler without the classifier (deberta-v2's pooler belongs to DebertaV2ForSequenceClassification)"
          if m.pooler else "a classifier without the pooler")
    if head is None:
        return {**config, "architectures": ["DebertaV2Model"]}
    if isinstance(head, A.MLMHead):
        _need(head.act == b.ffn.act, ("head", "act"), f"head act {head.act}: deberta-v2's head uses the FFN's")
        _need(head.norm.kind == "layernorm" and head.norm.eps == eps and head.norm.bias, ("head", "norm"),
              f"head norm {head.norm.kind}(eps = {head.norm.eps}): deberta-v2's is layernorm with the model's eps")
        _need(head.bias and m.tie_embeddings, ("head",), "an untied head or one without its output bias")
        return {**config, "architectures": ["DebertaV2ForMaskedLM"], "tie_word_embeddings": True}
    return {**config, "architectures": ["DebertaV2ForSequenceClassification"], "num_labels": head.labels,
            "cls_dropout": head.dropout, "pooler_hidden_act": HF_ACTIVATIONS[m.pooler_act or "tanh"]}


def _period(flags: list[bool]) -> tuple[int, int] | None:
    """(period, offset) with flags[i] == (i % period == offset) for every i, if there is one."""
    n = len(flags)
    for period in range(1, n + 1):
        for offset in range(period):
            if all(f == (i % period == offset) for i, f in enumerate(flags)):
                return period, offset
    return None


def _jamba(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _need(m.position is None, ("position",), "a position scheme (jamba's attention has none)")
    attn = [m.blocks[k].attention is not None for k in layers]
    sparse = [isinstance(m.blocks[k].ffn, A.MoE) for k in layers]
    attn_period = _period(attn)
    _need(attn_period is not None and any(attn), ("layers",),
          "attention layers that do not repeat with one period (jamba places them at i % period == offset)")
    expert_period = _period(sparse) if any(sparse) else (1, 0)
    _need(expert_period is not None, ("layers",), "expert layers that do not repeat with one period")
    ssm_kind = next((k for k in kinds if m.blocks[k].ssm is not None), None)
    _need(ssm_kind is not None, ("layers",), "no mamba layer")
    ssm = _same(m, [k for k in kinds if m.blocks[k].ssm is not None], "ssm", "mamba layers")
    _need(isinstance(ssm, A.Mamba), ("blocks", ssm_kind, "ssm"), f"{ssm.kind} layers (jamba's are mamba)")
    attn_kind = next(k for k in kinds if m.blocks[k].attention is not None)
    heads = _attention_kv(m, m.blocks[attn_kind].attention, ("blocks", attn_kind, "attention"))
    dense_kind = next((k for k in kinds if not isinstance(m.blocks[k].ffn, A.MoE)), None)
    moe_kind = next((k for k in kinds if isinstance(m.blocks[k].ffn, A.MoE)), None)
    moe = m.blocks[moe_kind].ffn if moe_kind else None
    hidden = None
    if dense_kind:
        hidden, _, _ = _glu(m.blocks[dense_kind].ffn, ("blocks", dense_kind, "ffn"))
    if moe:
        expert_hidden, _, _ = _glu(moe.expert, ("blocks", moe_kind, "ffn", "expert"), "expert")
        _need(hidden in (None, expert_hidden), ("blocks", moe_kind, "ffn", "expert", "hidden"),
              "experts of another width than the dense FFN (jamba has one intermediate_size)")
        hidden = expert_hidden
    norm = m.blocks[kinds[0]].norm
    return {"model_type": "jamba", "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
            "num_hidden_layers": len(layers), **{k: v for k, v in heads.items() if k != "head_dim"},
            "hidden_act": "silu", "max_position_embeddings": m.context, "rms_norm_eps": norm.eps,
            "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
            "attn_layer_period": attn_period[0], "attn_layer_offset": attn_period[1],
            "expert_layer_period": expert_period[0], "expert_layer_offset": expert_period[1],
            "num_experts": moe.experts if moe else 1, "num_experts_per_tok": moe.top_k if moe else 1,
            "mamba_d_state": ssm.d_state, "mamba_d_conv": ssm.d_conv, "mamba_expand": ssm.expand,
            "mamba_dt_rank": ssm.dt_rank, "mamba_conv_bias": ssm.conv_bias, "mamba_proj_bias": ssm.bias}


def _deepseek_v2(m: A.Model, model_type: str = "deepseek_v2") -> dict:
    """DeepSeek-V2 (softmax routing), and DeepSeek-V3 (sigmoid routing with the correction bias)."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    sparse = [isinstance(m.blocks[k].ffn, A.MoE) for k in layers]
    first_sparse = sparse.index(True) if any(sparse) else len(layers)
    _need(all(sparse[first_sparse:]), ("layers",), "dense layers after the first expert layer "
          f"({model_type} has first_k_dense_replace dense layers, then expert layers)")
    a = _same(m, kinds, "attention", "attentions")
    _need(a is not None and a.kind == "mla", ("blocks", kinds[0], "attention"), f"{model_type} has mla attention")
    norm = m.blocks[kinds[0]].norm
    config = {"model_type": model_type, "vocab_size": m.vocab, "hidden_size": m.d_model,
              "num_hidden_layers": len(layers), "num_attention_heads": a.heads, "num_key_value_heads": a.heads,
              "hidden_act": "silu", "max_position_embeddings": m.context, "rms_norm_eps": norm.eps,
              "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
              "rope_parameters": _rope_parameters(m.position, ("position",), None),
              "kv_lora_rank": a.kv_lora_rank, "q_lora_rank": a.q_lora_rank, "qk_rope_head_dim": a.rope_head_dim,
              "qk_nope_head_dim": a.nope_head_dim, "v_head_dim": a.v_head_dim, "head_dim": a.rope_head_dim,
              "first_k_dense_replace": first_sparse}
    if first_sparse:
        dense_kind = layers[0]
        config["intermediate_size"], _, _ = _glu(m.blocks[dense_kind].ffn, ("blocks", dense_kind, "ffn"))
    if any(sparse):
        moe_kind = layers[first_sparse]
        moe = m.blocks[moe_kind].ffn
        expert_hidden, _, _ = _glu(moe.expert, ("blocks", moe_kind, "ffn", "expert"), "expert")
        config.update(n_routed_experts=moe.experts, num_experts_per_tok=moe.top_k, moe_intermediate_size=expert_hidden,
                      n_shared_experts=moe.shared_experts or None, norm_topk_prob=False,
                      routed_scaling_factor=moe.routed_scale)
        config.setdefault("intermediate_size", expert_hidden)
        if model_type == "deepseek_v3":
            config.update(_sigmoid_routing(moe, ("blocks", moe_kind, "ffn")))
        else:
            _need(moe.router == "softmax" and not moe.correction_bias, ("blocks", moe_kind, "ffn"),
                  "deepseek_v2 routes with softmax scores and no correction bias")
        if model_type == "deepseek_v2" and moe.groups > 1:
            _need(moe.group_score == "max", ("blocks", moe_kind, "ffn", "group_score"),
                  "deepseek_v2 scores a group by its best expert: group_score = max")
            config.update(topk_method="group_limited_greedy", n_group=moe.groups, topk_group=moe.topk_groups)
    return config


def _sigmoid_routing(moe: A.MoE, path: tuple) -> dict:
    """DeepSeek-V3's routing (and GLM-4 MoE's): sigmoid scores, the correction bias, expert groups
    scored by the sum of their two best experts."""
    _need(moe.router == "sigmoid" and moe.correction_bias, path,
          "this family routes with sigmoid scores and a correction bias: router = sigmoid, correction_bias = true")
    _need(moe.groups == 1 or moe.group_score == "top2_sum", path + ("group_score",),
          "this family scores a group by the sum of its two best experts: group_score = top2_sum")
    return {"n_group": moe.groups, "topk_group": moe.topk_groups, "norm_topk_prob": moe.normalize_top_k,
            "routed_scaling_factor": moe.routed_scale}


def _glm4_moe(m: A.Model) -> dict:
    """GLM-4.5: GQA with partial RoPE and q/k/v biases, DeepSeek-V3's routing, dense first layers."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    sparse = [isinstance(m.blocks[k].ffn, A.MoE) for k in layers]
    first_sparse = sparse.index(True) if any(sparse) else len(layers)
    _need(any(sparse) and all(sparse[first_sparse:]), ("layers",), "dense layers after the first expert layer, or "
          "none (glm4_moe has first_k_dense_replace dense layers, then expert layers)")
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "rmsnorm" and norm.placement == "pre" and not norm.unit_offset, ("blocks", kinds[0], "norm"),
          "glm4_moe has pre-norm RMSNorm")
    a = _same(m, kinds, "attention", "attentions")
    heads = _attention_kv(m, a, ("blocks", kinds[0], "attention"))
    _need(not a.out_bias, ("blocks", kinds[0], "attention", "out_bias"), "glm4_moe biases q, k and v, never the output")
    moe_kind = layers[first_sparse]
    moe = m.blocks[moe_kind].ffn
    expert_hidden, act, _ = _glu(moe.expert, ("blocks", moe_kind, "ffn", "expert"), "expert")
    hidden = expert_hidden
    if first_sparse:
        hidden, _, _ = _glu(m.blocks[layers[0]].ffn, ("blocks", layers[0], "ffn"))
    return {"model_type": "glm4_moe", "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
            "num_hidden_layers": len(layers), **heads, "hidden_act": act, "max_position_embeddings": m.context,
            "rms_norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
            "rope_parameters": _rope_parameters(m.position, ("position",), a.head_dim, partial=True),
            "attention_bias": a.bias, "use_qk_norm": False, "first_k_dense_replace": first_sparse,
            "n_routed_experts": moe.experts, "num_experts_per_tok": moe.top_k, "moe_intermediate_size": expert_hidden,
            "n_shared_experts": moe.shared_experts, **_sigmoid_routing(moe, ("blocks", moe_kind, "ffn"))}


def _deepseek_v32(m: A.Model) -> dict:
    """DeepSeek-V3.2: latent attention with a lightning indexer in every layer, DeepSeek-V3's
    sigmoid routing (correction bias, expert groups), dense and MoE layers in any order."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    a = _same(m, kinds, "attention", "attentions")
    _need(a is not None and a.kind == "mla" and a.indexer is not None, ("blocks", kinds[0], "attention"),
          "deepseek_v32 has mla attention with an indexer")
    ix = a.indexer
    sparse = [isinstance(m.blocks[k].ffn, A.MoE) for k in layers]
    config = {"model_type": "deepseek_v32", "vocab_size": m.vocab, "hidden_size": m.d_model,
              "num_hidden_layers": len(layers), "num_attention_heads": a.heads, "num_key_value_heads": a.heads,
              "hidden_act": "silu", "max_position_embeddings": m.context, "rms_norm_eps": m.blocks[kinds[0]].norm.eps,
              "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
              "rope_parameters": _rope_parameters(m.position, ("position",), None),
              "kv_lora_rank": a.kv_lora_rank, "q_lora_rank": a.q_lora_rank, "qk_rope_head_dim": a.rope_head_dim,
              "qk_nope_head_dim": a.nope_head_dim, "v_head_dim": a.v_head_dim, "head_dim": a.rope_head_dim,
              "index_topk": ix.top_k, "index_head_dim": ix.head_dim, "index_n_heads": ix.heads,
              "mlp_layer_types": ["sparse" if s else "dense" for s in sparse],
              "first_k_dense_replace": sparse.index(True) if any(sparse) else len(layers)}
    if not all(sparse):
        dense_kind = layers[sparse.index(False)]
        config["intermediate_size"], _, _ = _glu(m.blocks[dense_kind].ffn, ("blocks", dense_kind, "ffn"))
    if any(sparse):
        moe_kind = layers[sparse.index(True)]
        moe = m.blocks[moe_kind].ffn
        expert_hidden, _, _ = _glu(moe.expert, ("blocks", moe_kind, "ffn", "expert"), "expert")
        _need(moe.router == "sigmoid" and moe.correction_bias, ("blocks", moe_kind, "ffn", "router"),
              "deepseek_v32 routes by sigmoid scores with a correction bias")
        config.update(n_routed_experts=moe.experts, num_experts_per_tok=moe.top_k, moe_intermediate_size=expert_hidden,
                      n_shared_experts=moe.shared_experts, norm_topk_prob=moe.normalize_top_k,
                      routed_scaling_factor=moe.routed_scale, n_group=moe.groups, topk_group=moe.topk_groups)
        config.setdefault("intermediate_size", expert_hidden)
    return config


def _kimi_linear(m: A.Model) -> dict:
    """Kimi Linear: KDA layers and MLA layers without positions (layer_types), pre-norm RMSNorms,
    DeepSeek-V3's sigmoid routing with shared experts, dense and MoE layers in any order
    (mlp_layer_types). transformers ties no weights for this family. What the checks below leave
    open the round trip compares."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    _need(m.position is None, ("position",), "kimi_linear's attention has no positions (NoPE): remove `position`")
    _need(not m.tie_embeddings, ("tie_embeddings",), "transformers' kimi_linear ties no weights: its LM head is its own")
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "rmsnorm" and norm.placement == "pre" and not norm.unit_offset, ("blocks", kinds[0], "norm"),
          "kimi_linear has pre-norm RMSNorm")
    full = [k for k in kinds if m.blocks[k].attention is not None]
    linear = [k for k in kinds if isinstance(m.blocks[k].ssm, A.KDA)]
    for k in kinds:
        _need(k in full or k in linear, ("blocks", k), "a block whose mixer is neither mla attention nor kda")
        _need(m.blocks[k].ffn is not None, ("blocks", k, "ffn"), "a block without an FFN")
    config: dict[str, Any] = {}
    if full:
        a = _same(m, full, "attention", "attentions")
        _need(a.kind == "mla" and a.indexer is None, ("blocks", full[0], "attention"), "kimi_linear has mla attention")
        config.update(num_attention_heads=a.heads, num_key_value_heads=a.heads, kv_lora_rank=a.kv_lora_rank,
                      q_lora_rank=a.q_lora_rank, qk_rope_head_dim=a.rope_head_dim, qk_nope_head_dim=a.nope_head_dim,
                      v_head_dim=a.v_head_dim)
    if linear:
        s = _same(m, linear, "ssm", "kda layers")
        config.update(linear_num_heads=s.heads, linear_head_dim=s.head_dim, linear_conv_kernel_dim=s.conv_size)
    sparse = [isinstance(m.blocks[k].ffn, A.MoE) for k in layers]
    dense = [k for k in kinds if not isinstance(m.blocks[k].ffn, A.MoE)]
    if dense:
        hidden, act, _ = _glu(_same(m, dense, "ffn", "dense FFNs"), ("blocks", dense[0], "ffn"))
        _need(act == "silu", ("blocks", dense[0], "ffn"), "kimi_linear's FFNs are swiglu")
        config["intermediate_size"] = hidden
    if any(sparse):
        moe_kinds = [k for k in kinds if isinstance(m.blocks[k].ffn, A.MoE)]
        moe = _same(m, moe_kinds, "ffn", "mixtures of experts")
        path = ("blocks", moe_kinds[0], "ffn")
        expert_hidden, act, _ = _glu(moe.expert, path + ("expert",), "expert")
        _need(act == "silu", path + ("expert",), "kimi_linear's experts are swiglu")
        config.update(num_local_experts=moe.experts, num_experts_per_tok=moe.top_k,
                      moe_intermediate_size=expert_hidden, n_shared_experts=moe.shared_experts,
                      **_sigmoid_routing(moe, path))
        config.setdefault("intermediate_size", expert_hidden)
    config.update(model_type="kimi_linear", vocab_size=m.vocab, hidden_size=m.d_model, num_hidden_layers=len(layers),
                  hidden_act="silu", max_position_embeddings=m.context, rms_norm_eps=norm.eps,
                  tie_word_embeddings=False, dtype=_dtype(m),
                  # Kimi's tokenizer ids where the vocabulary has them (the padding id indexes the embedding)
                  **{key: token if token < m.vocab else None for key, token in
                     (("pad_token_id", 163839), ("bos_token_id", 163584), ("eos_token_id", 163586))},
                  layer_types=["full_attention" if k in full else "linear_attention" for k in layers],
                  mlp_layer_types=["sparse" if s else "dense" for s in sparse])
    return config


def _t5(m: A.Model) -> dict:
    _need(m.family == "encoder_decoder", ("family",), f"family = {m.family} (t5 is an encoder_decoder)")
    enc = list(dict.fromkeys(m.encoder_layers))
    _need(isinstance(m.position, A.Relative), ("position",), "t5 has relative position buckets: position = relative(...)")
    b = m.blocks[enc[0]]
    a = b.attention
    _attention_kv(m, a, ("blocks", enc[0], "attention"), kinds=("mha",))
    ffn = b.ffn
    _need(isinstance(ffn, (A.MLP, A.GLU)), ("blocks", enc[0], "ffn"), "t5 has mlp or geglu FFNs")
    act = HF_ACTIVATIONS[ffn.act]
    gated = isinstance(ffn, A.GLU)
    if gated and act == "gelu_pytorch_tanh":
        proj = "gated-gelu"  # transformers reads this one as the tanh approximation (gelu_new)
    else:
        _need(not (gated and act == "gelu"), ("blocks", enc[0], "ffn", "act"),
              "a gated exact-erf gelu (transformers' t5 reads `gated-gelu` as the tanh approximation)")
        proj = f"gated-{act}" if gated else act
    return {"model_type": "t5", "vocab_size": m.vocab, "d_model": m.d_model, "d_kv": a.head_dim, "d_ff": ffn.hidden,
            "num_layers": len(m.encoder_layers), "num_decoder_layers": len(m.decoder_layers), "num_heads": a.heads,
            "relative_attention_num_buckets": m.position.buckets,
            "relative_attention_max_distance": m.position.max_distance, "layer_norm_epsilon": b.norm.eps,
            "feed_forward_proj": proj, "is_encoder_decoder": True, "tie_word_embeddings": True,
            "scale_decoder_outputs": m.logit_scale is not None, "n_positions": m.context, "dtype": _dtype(m)}

def _mamba2(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _need(m.position is None, ("position",), "a position scheme (mamba2 has none)")
    for k in kinds:
        block = m.blocks[k]
        _need(isinstance(block.ssm, A.Mamba2), ("blocks", k, "attention" if block.attention else "ssm"),
              f"block `{k}` is not a mamba2 layer (this family has mamba2 layers only)")
        _need(block.ffn is None, ("blocks", k, "ffn"), "an FFN (mamba2's layers are a norm and the mixer)")
    ssm = _same(m, kinds, "ssm", "mamba2 layers")
    norm = _same(m, kinds, "norm", "norms")
    path = ("blocks", kinds[0], "ssm")
    _need(ssm.gated_norm, path + ("gated_norm",), "gated_norm = false (transformers' Mamba2 always has it)")
    _need(not ssm.norm_before_gate, path + ("norm_before_gate",), "norm_before_gate (transformers' Mamba2 gates first)")
    _need(ssm.d_skip, path + ("d_skip",), "d_skip = false (transformers' Mamba2 always has D)")
    _need(ssm.norm_eps == norm.eps, path + ("norm_eps",), "a gated-norm eps other than the layers' norm eps "
                                                           "(mamba2 has one layer_norm_epsilon)")
    _need(ssm.heads * ssm.head_dim % m.d_model == 0, path + ("heads",),
          "a d_inner (heads × head_dim) that is not a multiple of d_model (transformers' Mamba2 has expand · d_model)")
    return {"model_type": "mamba2", "vocab_size": m.vocab, "hidden_size": m.d_model, "num_hidden_layers": len(layers),
            "num_heads": ssm.heads, "head_dim": ssm.head_dim, "state_size": ssm.d_state,
            "expand": ssm.heads * ssm.head_dim // m.d_model,
            "conv_kernel": ssm.d_conv, "n_groups": ssm.groups, "chunk_size": ssm.chunk, "use_bias": ssm.bias,
            "use_conv_bias": ssm.conv_bias, "layer_norm_epsilon": norm.eps, "hidden_act": "silu",
            "time_step_limit": _time_step_limit(ssm.dt_limit),
            # archlang adds residuals in the model's dtype, as transformers does with this off
            "residual_in_fp32": False, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
            "max_position_embeddings": m.context, **_token_ids(m, 0)}


def _mamba1(m: A.Model, model_type: str) -> dict:
    """Mamba-1 (mamba) and Falcon-Mamba (falcon_mamba: weightless norms on dt, B and C)."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _need(m.position is None, ("position",), f"a position scheme ({model_type} has none)")
    for k in kinds:
        block = m.blocks[k]
        _need(isinstance(block.ssm, A.Mamba), ("blocks", k, "attention" if block.attention else "ssm"),
              f"block `{k}` is not a mamba layer (this family has mamba layers only)")
        _need(block.ffn is None, ("blocks", k, "ffn"), f"an FFN ({model_type}'s layers are a norm and the mixer)")
    ssm = _same(m, kinds, "ssm", "mamba layers")
    norm = _pre_rmsnorm(m, kinds, model_type)
    path = ("blocks", kinds[0], "ssm")
    falcon = model_type == "falcon_mamba"
    written = {True: "true", False: "false"}.get(ssm.inner_norms, ssm.inner_norms)
    if falcon:
        _need(ssm.inner_norms == "weightless", path + ("inner_norms",),
              f"inner_norms = {written} (falcon_mamba's norms on dt, B and C are weightless)")
    else:
        _need(ssm.inner_norms is False, path + ("inner_norms",),
              f"inner_norms = {written} (transformers' Mamba has no norms on dt, B and C)")
        _need(ssm.norm_eps == A.Mamba.model_fields["norm_eps"].default, path + ("norm_eps",),
              "a norm_eps without inner norms (mamba has no norm for it)")
    config = {"model_type": model_type, "vocab_size": m.vocab, "hidden_size": m.d_model,
              "num_hidden_layers": len(layers), "state_size": ssm.d_state, "expand": ssm.expand,
              "intermediate_size": ssm.expand * m.d_model, "conv_kernel": ssm.d_conv, "time_step_rank": ssm.dt_rank,
              "use_bias": ssm.bias, "use_conv_bias": ssm.conv_bias, "layer_norm_epsilon": norm.eps,
              "hidden_act": "silu",
              # archlang adds residuals in the model's dtype, as transformers does with this off
              "residual_in_fp32": False, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
              "max_position_embeddings": m.context, **_token_ids(m, 0)}
    if falcon:
        config["mixer_rms_eps"] = ssm.norm_eps
    return config


def _time_step_limit(dt_limit) -> list[float]:
    """A mamba2 dt_limit as transformers' time_step_limit: none is (0, inf), an open upper end inf."""
    if dt_limit is None:
        return [0.0, math.inf]
    return [dt_limit[0], math.inf if dt_limit[1] is None else dt_limit[1]]


def _hf_mamba2_mixer(ssm: A.Mamba2, norm: A.Norm, path: tuple, model_type: str) -> None:
    """What every transformers Mamba-2 mixer fixes: the gated norm after the gate, D, one eps."""
    _need(ssm.gated_norm, path + ("gated_norm",), f"gated_norm = false ({model_type}'s mixer always has it)")
    _need(not ssm.norm_before_gate, path + ("norm_before_gate",), f"norm_before_gate ({model_type}'s mixer gates first)")
    _need(ssm.d_skip, path + ("d_skip",), f"d_skip = false ({model_type}'s mixer always has D)")
    _need(ssm.norm_eps == norm.eps, path + ("norm_eps",),
          f"a gated-norm eps other than the layers' norm eps ({model_type} has one for both)")


def _one_kind(m: A.Model, kinds: list[str], test, what: str) -> str | None:
    """The one block kind of `kinds` that passes `test` (the blocks of a kind share every setting
    in these families), or None when there is none."""
    found = [k for k in kinds if test(m.blocks[k])]
    for k in found[1:]:
        _need(m.blocks[k].model_copy(update={"name": found[0]}) == m.blocks[found[0]], ("blocks", k),
              f"two kinds of {what} blocks that differ (this family sets them once for all layers)")
    return found[0] if found else None


# transformers' hybrid caches ask their attention layers for the sequence length: a model without
# one fails in its first cached forward (generate's default), so such a checkpoint is not written.
_NO_ATTENTION = "no attention layer (transformers' {} cannot run with its cache without one)"


def _nemotron_h(m: A.Model) -> dict:
    """Blocks of one sublayer each: a Mamba-2 mixer, attention without positions, or an MLP."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _need(m.position is None, ("position",), "a position scheme (nemotron_h's attention has none)")
    _need(not m.tie_embeddings, ("tie_embeddings",), "tied embeddings (nemotron_h's LM head is never tied)")
    norm = _pre_rmsnorm(m, kinds, "nemotron_h")
    types = {}
    for k in kinds:
        b = m.blocks[k]
        parts = [slot for slot in ("ssm", "attention", "ffn") if getattr(b, slot) is not None]
        _need(len(parts) == 1 and b.cross_attention is None, ("blocks", k),
              f"block `{k}` has {' and '.join(parts) or 'nothing'} (nemotron_h's blocks have one sublayer each)")
        _need(b.position in ("inherit", None), ("blocks", k, "position"), "a per-block position (nemotron_h has none)")
        types[k] = {"ssm": "linear_attention", "attention": "full_attention",
                    "ffn": "moe" if isinstance(b.ffn, A.MoE) else "mlp"}[parts[0]]
    config: dict[str, Any] = {}
    mamba = _one_kind(m, kinds, lambda b: b.ssm is not None, "mamba2")
    if mamba:
        ssm, path = m.blocks[mamba].ssm, ("blocks", mamba, "ssm")
        _need(isinstance(ssm, A.Mamba2), path, "a mamba (v1) layer (nemotron_h's are mamba2)")
        _hf_mamba2_mixer(ssm, norm, path, "nemotron_h")
        _need(ssm.dt_limit is not None and ssm.dt_limit[1] is None, path + ("dt_limit",),
              "a dt clamp other than [lo, none] with lo > 0 (nemotron_h clamps dt below at time_step_min only)")
        config.update(ssm_state_size=ssm.d_state, mamba_num_heads=ssm.heads, mamba_head_dim=ssm.head_dim,
                      n_groups=ssm.groups, conv_kernel=ssm.d_conv, chunk_size=ssm.chunk, use_conv_bias=ssm.conv_bias,
                      use_bias=ssm.bias, time_step_min=ssm.dt_limit[0], mamba_hidden_act="silu")
    attention = _one_kind(m, kinds, lambda b: b.attention is not None, "attention")
    _need(attention is not None, ("layers",), _NO_ATTENTION.format("nemotron_h"))
    if attention:
        a, path = m.blocks[attention].attention, ("blocks", attention, "attention")
        config.update(_attention_kv(m, a, path))
        _plain_attention(a, path, "nemotron_h", set())
        _need(not a.bias, path + ("bias",), "attention biases (nemotron_h has none)")
    mlp = _one_kind(m, kinds, lambda b: b.ffn is not None and not isinstance(b.ffn, A.MoE), "mlp")
    if mlp:
        ffn, path = m.blocks[mlp].ffn, ("blocks", mlp, "ffn")
        _need(isinstance(ffn, A.MLP), path, f"ffn {ffn.kind} (nemotron_h's MLP is up, act, down)")
        config.update(intermediate_size=ffn.hidden, mlp_hidden_act=HF_ACTIVATIONS[ffn.act], mlp_bias=ffn.bias)
    moe_kind = _one_kind(m, kinds, lambda b: isinstance(b.ffn, A.MoE), "moe")
    if moe_kind:
        moe, path = m.blocks[moe_kind].ffn, ("blocks", moe_kind, "ffn")
        _need(isinstance(moe.expert, A.MLP) and not moe.expert.bias, path + ("expert",),
              "experts other than bias-free MLPs (nemotron_h's experts are up, act, down)")
        _need(isinstance(moe.shared, A.MLP) and not moe.shared_gate and moe.shared.act == moe.expert.act,
              path + ("shared",), "no ungated shared MLP of the experts' activation (nemotron_h has one)")
        act = HF_ACTIVATIONS[moe.expert.act]
        _need(config.get("mlp_hidden_act", act) == act and config.get("mlp_bias", moe.shared.bias) == moe.shared.bias,
              path + ("shared",), "an MLP activation or bias that differs between the MLP and MoE layers "
                                  "(nemotron_h has one mlp_hidden_act and mlp_bias)")
        config.update(_sigmoid_routing(moe, path), n_routed_experts=moe.experts, num_experts_per_tok=moe.top_k,
                      moe_intermediate_size=moe.expert.hidden, moe_shared_expert_intermediate_size=moe.shared.hidden,
                      mlp_hidden_act=act, mlp_bias=moe.shared.bias)
    return {"model_type": "nemotron_h", "vocab_size": m.vocab, "hidden_size": m.d_model,
            "layers_block_type": [types[k] for k in layers], **config, "layer_norm_epsilon": norm.eps,
            "max_position_embeddings": m.context, "tie_word_embeddings": False, "dtype": _dtype(m),
            **_token_ids(m, 0)}


def _bamba(m: A.Model, model_type: str = "bamba") -> dict:
    """Mamba-2 layers and attention layers, each with the one FFN; RoPE on the attention layers."""
    granite = model_type == "granitemoehybrid"
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, {"embedding_scale", "logit_scale", "residual_scale"} if granite else set())
    _need(m.position is None, ("position",), f"a model-wide position ({model_type}'s is its attention layers' own)")
    norm = _pre_rmsnorm(m, kinds, model_type)
    mamba = _one_kind(m, kinds, lambda b: b.ssm is not None, "mamba2")
    attention = _one_kind(m, kinds, lambda b: b.attention is not None, "attention")
    _need(attention is not None, ("layers",), _NO_ATTENTION.format(model_type))
    for k in kinds:
        _need((m.blocks[k].ssm is None) != (m.blocks[k].attention is None) and m.blocks[k].cross_attention is None,
              ("blocks", k), f"block `{k}` is not one mixer and an FFN")
    ffn = _same(m, kinds, "ffn", "FFNs")
    config: dict[str, Any] = {}
    if mamba:
        ssm, path = m.blocks[mamba].ssm, ("blocks", mamba, "ssm")
        _need(isinstance(ssm, A.Mamba2), path, f"a mamba (v1) layer ({model_type}'s are mamba2)")
        _hf_mamba2_mixer(ssm, norm, path, model_type)
        _need(ssm.expand is not None, path + ("expand",),
              f"d_inner set by heads × head_dim alone ({model_type}'s is mamba_expand · d_model)")
        _need(m.blocks[mamba].position in ("inherit", None), ("blocks", mamba, "position"), "a position on mamba2 layers")
        config.update(mamba_n_heads=ssm.heads, mamba_d_head=ssm.head_dim, mamba_d_state=ssm.d_state,
                      mamba_n_groups=ssm.groups, mamba_expand=ssm.expand, mamba_d_conv=ssm.d_conv,
                      mamba_chunk_size=ssm.chunk, mamba_conv_bias=ssm.conv_bias, mamba_proj_bias=ssm.bias,
                      time_step_limit=_time_step_limit(ssm.dt_limit))
    if attention:
        a, path = m.blocks[attention].attention, ("blocks", attention, "attention")
        heads = _attention_kv(m, a, path)
        # Granite's attention_multiplier is any score scale
        _plain_attention(a.model_copy(update={"scale": None}) if granite else a, path, model_type, set())
        _need(a.head_dim * a.heads == m.d_model, path + ("head_dim",), f"a head_dim other than d_model / heads "
                                                                       f"({model_type} derives it)")
        config.update({k: v for k, v in heads.items() if k != "head_dim"}, attention_bias=a.bias)
        position = m.blocks[attention].position
        if granite:
            config["attention_multiplier"] = a.scale if a.scale is not None else a.head_dim**-0.5
            if position not in ("inherit", None):
                config.update(position_embedding_type="rope",
                              rope_parameters=_rope_parameters(position, ("blocks", attention, "position"), a.head_dim))
        else:
            config["rope_parameters"] = _rope_parameters(position, ("blocks", attention, "position"), a.head_dim,
                                                         partial=True)
    path = ("blocks", kinds[0], "ffn")
    if not granite:
        hidden, act, bias = _glu(ffn, path)
        config.update(intermediate_size=hidden, mlp_bias=bias)
    elif isinstance(ffn, A.MoE):
        _need(ffn.shared is not None and not ffn.shared_gate, path + ("shared",),
              "experts without granitemoehybrid's one ungated shared MLP (shared = swiglu(...))")
        _need(ffn.router == "softmax" and ffn.normalize_top_k, path + ("router",), "granitemoehybrid takes the "
              "softmax of the top-k router logits: router = softmax, normalize_top_k = true")
        hidden, act, bias = _glu(ffn.expert, path + ("expert",), "expert")
        shared, shared_act, shared_bias = _glu(ffn.shared, path + ("shared",), "shared")
        _need(not bias and not shared_bias and shared_act == act, path, "FFN biases, or a shared MLP whose "
              "activation differs (granitemoehybrid has one hidden_act and no FFN bias)")
        config.update(intermediate_size=hidden, shared_intermediate_size=shared, num_local_experts=ffn.experts,
                      num_experts_per_tok=ffn.top_k)
    else:
        shared, act, bias = _glu(ffn, path)
        _need(not bias, path + ("bias",), "FFN biases (granitemoehybrid has none)")
        config.update(shared_intermediate_size=shared, num_local_experts=0)
    _need(act == "silu", path, f"an FFN activation other than silu ({model_type}'s hidden_act is also the mixer's)")
    if granite:
        _need(not m.embedding_scale_in_dtype, ("embedding_scale_in_dtype",),
              "granitemoehybrid multiplies by embedding_multiplier unrounded: embedding_scale_in_dtype = false")
        logit_scale = m.logit_scale if m.logit_scale is not None else 1.0
        _need(1 / (1 / logit_scale) == logit_scale, ("logit_scale",),
              "a logit_scale whose reciprocal does not convert back exactly (granitemoehybrid divides by it)")
        config.update(embedding_multiplier=m.embedding_scale or 1.0, residual_multiplier=m.residual_scale or 1.0,
                      logits_scaling=1 / logit_scale,
                      layer_types=["linear_attention" if m.blocks[k].ssm is not None else "full_attention"
                                   for k in layers])
    else:
        config["attn_layer_indices"] = [i for i, k in enumerate(layers) if m.blocks[k].attention is not None]
    return {"model_type": model_type, "vocab_size": m.vocab, "hidden_size": m.d_model,
            "num_hidden_layers": len(layers), **config, "hidden_act": "silu", "rms_norm_eps": norm.eps,
            "max_position_embeddings": m.context, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
            **_token_ids(m, 0)}


def _falcon_h1(m: A.Model) -> dict:
    """One kind of layer: attention beside a Mamba-2 mixer on the one normed input (mixers =
    parallel), then a SwiGLU; model-wide RoPE; the µP multipliers where the spec writes them."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, {"embedding_scale", "logit_scale"})
    _need(not m.embedding_scale_in_dtype, ("embedding_scale_in_dtype",),
          "falcon_h1 multiplies by embedding_multiplier unrounded: embedding_scale_in_dtype = false")
    norm = _pre_rmsnorm(m, kinds, "falcon_h1")
    kind = _one_kind(m, kinds, lambda b: True, "layer")
    blk, path = m.blocks[kind], ("blocks", kind)
    _need(blk.mixers is not None, path, "a block without parallel mixers (falcon_h1 runs attention and mamba2 side "
                                        "by side in every layer: mixers = parallel(...))")
    _positions_inherit(m, kinds)
    a, ssm, ffn, mx = blk.attention, blk.ssm, blk.ffn, blk.mixers
    heads = _attention_kv(m, a, path + ("attention",))
    _plain_attention(a, path + ("attention",), "falcon_h1", set())
    _need(isinstance(ssm, A.Mamba2), path + ("ssm",), f"an ssm {ssm.kind} (falcon_h1's is mamba2)")
    _need(ssm.d_skip, path + ("ssm", "d_skip"), "d_skip = false (falcon_h1's mixer always has D)")
    _need(ssm.norm_eps == norm.eps, path + ("ssm", "norm_eps"),
          "a gated-norm eps other than the layers' norm eps (falcon_h1 has one for both)")
    hidden, act, bias = _glu(ffn, path + ("ffn",))
    _need(act == "silu", path + ("ffn",), "an FFN activation other than silu (falcon_h1's hidden_act is also the mixer's)")
    rope = _rope_parameters(m.position, ("position",), a.head_dim)
    parts = list(ssm.in_proj_multipliers) if ssm.in_proj_multipliers is not None else [1.0] * 5
    return {"model_type": "falcon_h1", "vocab_size": m.vocab, "hidden_size": m.d_model,
            "num_hidden_layers": len(layers), "intermediate_size": hidden, **heads, "attention_bias": a.bias,
            "mlp_bias": bias, "hidden_act": "silu", "rms_norm_eps": norm.eps, "rope_parameters": rope,
            "mamba_d_ssm": ssm.heads * ssm.head_dim, "mamba_n_heads": ssm.heads, "mamba_d_head": ssm.head_dim,
            "mamba_n_groups": ssm.groups, "mamba_d_state": ssm.d_state, "mamba_d_conv": ssm.d_conv,
            "mamba_chunk_size": ssm.chunk, "mamba_conv_bias": ssm.conv_bias, "mamba_proj_bias": ssm.bias,
            "projectors_bias": ssm.bias, "mamba_rms_norm": ssm.gated_norm,
            "mamba_norm_before_gate": ssm.norm_before_gate, "time_step_limit": _time_step_limit(ssm.dt_limit),
            "key_multiplier": a.key_multiplier or 1.0, "attention_in_multiplier": mx.attention_in or 1.0,
            "attention_out_multiplier": mx.attention_out or 1.0, "ssm_in_multiplier": mx.ssm_in or 1.0,
            "ssm_out_multiplier": mx.ssm_out or 1.0, "ssm_multipliers": parts,
            "mlp_multipliers": [ffn.gate_multiplier or 1.0, ffn.down_multiplier or 1.0],
            "embedding_multiplier": m.embedding_scale or 1.0, "lm_head_multiplier": m.logit_scale or 1.0,
            "max_position_embeddings": m.context, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
            **_token_ids(m, 0)}


def _pre_rmsnorm(m: A.Model, kinds: list[str], model_type: str) -> A.Norm:
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "rmsnorm" and norm.placement == "pre" and not norm.unit_offset, ("blocks", kinds[0], "norm"),
          f"{norm.kind}(placement = {norm.placement}): {model_type} has pre-norm RMSNorm")
    _need(m.final_norm == A.Norm(kind="rmsnorm", eps=norm.eps), ("final_norm",),
          f"a final norm other than the blocks' rmsnorm(eps = {norm.eps})")
    return norm


def _plain_attention(a, path: tuple, model_type: str, allowed: set[str]) -> None:
    """Options of the attention a family lacks (those outside `allowed`) are off, its biases
    are on q, k, v and the output together, and the score scale is the default."""
    _need(a.bias == a.out_bias, path + ("out_bias",),
          f"a bias on q, k, v but not on the output, or the reverse ({model_type}'s attention_bias sets both)")
    _need(a.softcap is None, path + ("softcap",), "attention soft-capping")
    _need(_default_scale(a), path + ("scale",), "an attention scale other than 1/sqrt(head_dim)")
    for option, off in (("qk_norm", None), ("sinks", False), ("chunk", None), ("sink_tokens", 0),
                        ("temperature_tuning", False), ("window", None)):
        if option not in allowed:
            _need(getattr(a, option) == off, path + (option,), f"attention `{option}` ({model_type} has none)")


def _gpt_oss(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    # what sets gpt-oss apart is checked first, so that it is not the closest family of every spec
    a = m.blocks[kinds[0]].attention
    _need(a is not None and a.sinks, ("blocks", kinds[0], "attention"), "attention without sinks (gpt-oss has sinks = true)")
    moe = m.blocks[kinds[0]].ffn
    _need(isinstance(moe, A.MoE) and isinstance(moe.expert, A.ClampedSwiGLU), ("blocks", kinds[0], "ffn"),
          "gpt-oss's FFN is moe(expert = clamped_swiglu(...))")
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    norm = _pre_rmsnorm(m, kinds, "gpt_oss")
    heads = _attention_kv(m, a, ("blocks", kinds[0], "attention"))
    for k in kinds:
        path = ("blocks", k, "attention")
        _need(m.blocks[k].attention is not None and m.blocks[k].attention.model_copy(update={"window": None})
              == a.model_copy(update={"window": None}), path, "blocks whose attentions differ other than in their window")
        _plain_attention(m.blocks[k].attention, path, "gpt_oss", {"sinks", "window"})
    windows = {m.blocks[k].attention.window for k in kinds} - {None}
    _need(len(windows) <= 1, ("layers",), "sliding windows of different widths")
    _same(m, kinds, "ffn", "FFNs")
    path = ("blocks", kinds[0], "ffn")
    e = moe.expert
    _need(e.limit is not None and e.bias, path + ("expert",), "gpt-oss's experts clamp and have biases: "
          "clamped_swiglu(hidden, limit = ..., bias = true)")
    _need(moe.router_bias, path + ("router_bias",), "a router without bias (gpt-oss's has one)")
    return {"model_type": "gpt_oss", "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": e.hidden,
            "num_hidden_layers": len(layers), **heads, "max_position_embeddings": m.context,
            "rms_norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
            "rope_parameters": _rope_parameters(m.position, ("position",), a.head_dim), "attention_bias": a.bias,
            # a config without sliding layers still needs a width: transformers builds the mask regardless
            "sliding_window": windows.pop() if windows else 128,
            "layer_types": ["sliding_attention" if m.blocks[k].attention.window else "full_attention" for k in layers],
            "num_local_experts": moe.experts, "num_experts_per_tok": moe.top_k, "swiglu_limit": e.limit,
            "swiglu_alpha": e.alpha}


def _llama4_text(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    norm = _pre_rmsnorm(m, kinds, "llama4_text")
    nope = {k: m.blocks[k].position is None for k in kinds}
    for k in kinds:
        _need(m.blocks[k].position in ("inherit", None), ("blocks", k, "position"),
              "a per-block RoPE (llama4_text has one RoPE, and NoPE layers: position = none)")
    rope_kinds = [k for k in kinds if not nope[k]]
    a = m.blocks[kinds[0]].attention
    heads = _attention_kv(m, a, ("blocks", kinds[0], "attention"))
    plain = a.model_copy(update={f: None for f in ("qk_norm", "chunk", "floor_scale", "attn_scale")} |
                         {"temperature_tuning": False})
    for k in kinds:
        b = m.blocks[k].attention
        path = ("blocks", k, "attention")
        _need(b is not None and b.model_copy(update={f: None for f in ("qk_norm", "chunk", "floor_scale", "attn_scale")}
                                             | {"temperature_tuning": False}) == plain, path,
              "blocks whose attentions differ other than in QK-norm, chunk and temperature tuning")
        _plain_attention(b, path, "llama4_text", {"qk_norm", "chunk", "temperature_tuning"})
        if nope[k]:
            _need(b.qk_norm is None, path + ("qk_norm",), "a QK-norm on a NoPE layer (llama4_text normalises RoPE layers only)")
        else:
            _need(b.qk_norm == m.blocks[rope_kinds[0]].attention.qk_norm, path + ("qk_norm",),
                  "RoPE layers that differ in their QK-norm")
    qk = m.blocks[rope_kinds[0]].attention.qk_norm if rope_kinds else None
    _need(qk is None or (qk.kind == "l2" and qk.eps == norm.eps), ("blocks", rope_kinds[0] if rope_kinds else kinds[0],
                                                                    "attention", "qk_norm"),
          f"llama4_text's QK-norm is l2(eps = rms_norm_eps = {norm.eps})")
    chunks = {m.blocks[k].attention.chunk for k in kinds} - {None}
    _need(len(chunks) <= 1, ("layers",), "chunks of different sizes")
    tuning = {(b.temperature_tuning, b.floor_scale or 8192.0, b.attn_scale or 0.1)
              for b in (m.blocks[k].attention for k in kinds if nope[k])}
    _need(len(tuning) <= 1, ("layers",), "NoPE layers that differ in their temperature tuning")
    tuned, floor_scale, attn_scale = tuning.pop() if tuning else (False, 8192.0, 0.1)
    _need(float(floor_scale).is_integer(), ("layers",), "a floor_scale that is not a whole number")
    sparse = [i for i, k in enumerate(layers) if isinstance(m.blocks[k].ffn, A.MoE)]
    dense = [k for k in kinds if not isinstance(m.blocks[k].ffn, A.MoE)]
    config = {"model_type": "llama4_text", "vocab_size": m.vocab, "hidden_size": m.d_model,
              "num_hidden_layers": len(layers), **heads, "hidden_act": "silu", "max_position_embeddings": m.context,
              "rms_norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
              "rope_parameters": _rope_parameters(m.position, ("position",), a.head_dim), "attention_bias": a.bias,
              "use_qk_norm": qk is not None, "attention_chunk_size": chunks.pop() if chunks else 8192,
              "layer_types": ["chunked_attention" if m.blocks[k].attention.chunk else "full_attention" for k in layers],
              "no_rope_layers": [0 if nope[k] else 1 for k in layers], "attn_temperature_tuning": tuned,
              "floor_scale": int(floor_scale), "attn_scale": attn_scale, "moe_layers": sparse}
    if dense:
        ffn = _same(m, dense, "ffn", "dense FFNs")
        config["intermediate_size_mlp"], act, bias = _glu(ffn, ("blocks", dense[0], "ffn"))
        _need(act == "silu" and not bias, ("blocks", dense[0], "ffn"), "llama4_text's FFN is swiglu without bias")
    if sparse:
        moe_kinds = [k for k in kinds if isinstance(m.blocks[k].ffn, A.MoE)]
        moe = _same(m, moe_kinds, "ffn", "MoE FFNs")
        path = ("blocks", moe_kinds[0], "ffn")
        hidden, act, bias = _glu(moe.expert, path + ("expert",), "expert")
        _need(act == "silu" and not bias, path + ("expert",), "llama4_text's experts are swiglu without bias")
        _need(moe.shared == A.GLU(kind="swiglu", hidden=hidden) and not moe.shared_gate, path + ("shared",),
              f"llama4_text has one shared expert as wide as a routed one: shared = swiglu(hidden = {hidden})")
        config.update(intermediate_size=hidden, num_local_experts=moe.experts, num_experts_per_tok=moe.top_k)
        config.setdefault("intermediate_size_mlp", hidden)
    else:
        config["intermediate_size"] = config["intermediate_size_mlp"]
    return config


def _lfm2(m: A.Model) -> dict:
    """LFM2: short-conv and GQA layers (layer_types), pre-norm RMSNorms of one eps, per-head
    QK-norm with it, one SwiGLU width written as is (block_auto_adjust_ff_dim off, so transformers
    takes intermediate_size unchanged)."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "rmsnorm" and norm.placement == "pre" and not norm.unit_offset, ("blocks", kinds[0], "norm"),
          f"{norm.kind}(placement = {norm.placement}): lfm2 has pre-norm RMSNorm")
    _need(m.final_norm == A.Norm(kind="rmsnorm", eps=norm.eps), ("final_norm",),
          f"a final norm other than the blocks' rmsnorm(eps = {norm.eps})")
    _same(m, kinds, "parallel", "residual wiring (parallel or not)")
    ffn = _same(m, kinds, "ffn", "FFNs")
    hidden, act, bias = _glu(ffn, ("blocks", kinds[0], "ffn"))
    _need(act == "silu" and not bias, ("blocks", kinds[0], "ffn"), "lfm2's FFN is swiglu without biases")
    convs = [k for k in kinds if m.blocks[k].attention is None]
    attns = [k for k in kinds if m.blocks[k].attention is not None]
    for k in convs:
        _need(isinstance(m.blocks[k].ssm, A.ShortConv), ("blocks", k, "ssm"),
              f"block `{k}` has neither short_conv nor attention (lfm2 has these layers only)")
    # transformers' lfm2 reads the sequence length off an attention layer's cache: it runs no model without one
    _need(bool(attns), ("layers",), "no attention layer (transformers' lfm2 cannot run a model of conv layers only)")
    a = _same(m, attns, "attention", "attentions")
    path = ("blocks", attns[0], "attention")
    heads = _attention_kv(m, a, path)
    _need(a.head_dim * a.heads == m.d_model, path + ("head_dim",), "a head_dim other than d_model / heads (lfm2 derives it)")
    _need(not a.bias and not a.out_bias, path + ("bias",), "attention biases (lfm2 has none)")
    _need(a.window is None, path + ("window",), "a sliding window (lfm2 has none)")
    _need(a.softcap is None, path + ("softcap",), "attention soft-capping")
    _need(_default_scale(a), path + ("scale",), "a score scale other than 1/sqrt(head_dim) (lfm2 has none)")
    _need(a.qk_norm == A.QKNorm(kind="rmsnorm", eps=norm.eps), path + ("qk_norm",),
          f"lfm2 normalises each q and k head with the blocks' norm: qk_norm = rmsnorm(eps = {norm.eps})")
    config = {"model_type": "lfm2", "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
              "block_auto_adjust_ff_dim": False, "num_hidden_layers": len(layers),
              "num_attention_heads": heads["num_attention_heads"], "num_key_value_heads": heads["num_key_value_heads"],
              "max_position_embeddings": m.context, "norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings,
              "dtype": _dtype(m), "rope_parameters": _rope_parameters(m.position, ("position",), a.head_dim),
              "layer_types": ["conv" if m.blocks[k].attention is None else "full_attention" for k in layers],
              "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    if convs:
        conv = _same(m, convs, "ssm", "short convolutions")
        _need(conv.bias == conv.conv_bias, ("blocks", convs[0], "ssm", "conv_bias"),
              "a bias on the projections but not on the conv, or the reverse (lfm2's conv_bias sets both)")
        config.update(conv_L_cache=conv.kernel, conv_bias=conv.bias)
    return config


def _factor_for(width: int, d_model: int) -> float:
    """A factor f with int(d_model · f) = width, as transformers' xLSTM derives its widths (the FFN's
    too, rounded up to a multiple of 1): width / d_model where float arithmetic gives width back,
    else half a unit more."""
    for f in (width / d_model, (width + 0.5) / d_model):
        if int(d_model * f) == width:
            return f
    return width / d_model  # unreachable in practice; the round trip would report the width


def _xlstm(m: A.Model) -> dict:
    """xLSTM: one kind of block (pre-norm RMSNorm, mlstm, SwiGLU without biases), the final norm
    and the mLSTM's head norm of one eps, soft-capped gates and logits (transformers always caps
    both), widths that transformers' cache sizes alike (multiples of 64), an untied head."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, {"logit_softcap"})
    _need(m.position is None, ("position",), "a position scheme (xlstm has none)")
    for k in kinds:
        block = m.blocks[k]
        _need(isinstance(block.ssm, A.MLSTM), ("blocks", k, "attention" if block.attention else "ssm"),
              f"block `{k}` is not an mlstm layer (this family has mlstm layers only)")
    norm = _pre_rmsnorm(m, kinds, "xlstm")
    _same(m, kinds, "parallel", "residual wiring (parallel or not)")
    ssm = _same(m, kinds, "ssm", "mlstm layers")
    ffn = _same(m, kinds, "ffn", "FFNs")
    hidden, act, bias = _glu(ffn, ("blocks", kinds[0], "ffn"))
    _need(act == "silu" and not bias, ("blocks", kinds[0], "ffn"), "xlstm's FFN is swiglu without biases")
    path = ("blocks", kinds[0], "ssm")
    _need(ssm.norm_eps == norm.eps, path + ("norm_eps",), "a head-norm eps other than the blocks' norm eps "
                                                          "(xlstm has one norm_eps)")
    _need(ssm.gate_softcap is not None, path + ("gate_softcap",), "uncapped gates (transformers' xlstm caps them)")
    _need(m.logit_softcap is not None, ("logit_softcap",), "uncapped logits (transformers' xlstm caps them)")
    _need(not m.tie_embeddings, ("tie_embeddings",), "tied embeddings (transformers' xlstm ties nothing)")
    keys, values = ssm.heads * ssm.key_dim, ssm.heads * ssm.value_dim
    for field, width in (("key_dim", keys), ("value_dim", values)):
        _need(width % 64 == 0, path + (field,), f"heads · {field} = {width}, not a multiple of 64 (transformers' "
                                                "xlstm sizes its cache by the width rounded up to 64)")
    return {"model_type": "xlstm", "vocab_size": m.vocab, "hidden_size": m.d_model, "embedding_dim": m.d_model,
            "num_hidden_layers": len(layers), "num_blocks": len(layers), "num_heads": ssm.heads,
            "qk_dim_factor": _factor_for(keys, m.d_model), "v_dim_factor": _factor_for(values, m.d_model),
            "ffn_proj_factor": _factor_for(hidden, m.d_model), "ffn_round_up_to_multiple_of": 1,
            "gate_soft_cap": ssm.gate_softcap, "output_logit_soft_cap": m.logit_softcap, "norm_eps": norm.eps,
            "eps": ssm.denominator_eps, "chunk_size": ssm.chunk, "weight_mode": "single", "use_bias": False,
            "tie_word_embeddings": False, "dtype": _dtype(m), "max_position_embeddings": m.context,
            "pad_token_id": None, **_token_ids(m, 0)}


def _rwkv(m: A.Model) -> dict:
    """RWKV-4: a LayerNorm on the embeddings, blocks of rwkv4 time mixing and rwkv_channel_mix behind
    pre-norm LayerNorms, a final LayerNorm. The norms' eps give rescale_every: transformers' eps is
    layer_norm_epsilon (the final norm's 1e-5) times 4^k after k halvings of the hidden state
    (interop/hf.py rwkv_rescale_groups), so the eps of layer i must be the first layer's times
    4^(i // rescale_every) and the final norm's 1e-5 times 4^(layers // rescale_every)."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, {"embedding_norm"})
    _need(m.position is None, ("position",), "a position scheme (rwkv has none)")
    for k in kinds:
        block = m.blocks[k]
        _need(isinstance(block.ssm, A.RWKV4), ("blocks", k, "attention" if block.attention else "ssm"),
              f"block `{k}` is not an rwkv4 layer (this family has rwkv4 layers only)")
        _need(isinstance(block.ffn, A.RWKVChannelMix), ("blocks", k, "ffn"),
              "an FFN other than rwkv_channel_mix (rwkv's layers are time mixing and channel mixing)")
        norm = block.norm
        _need(norm.kind == "layernorm" and norm.bias and norm.placement == "pre", ("blocks", k, "norm"),
              f"{norm.kind}(placement = {norm.placement}): rwkv has pre-norm LayerNorms with biases")
    _same(m, kinds, "parallel", "residual wiring (parallel or not)")
    ssm = _same(m, kinds, "ssm", "time mixing")
    ffn = _same(m, kinds, "ffn", "channel mixing")
    eps = [m.blocks[k].norm.eps for k in layers]
    _need(m.embedding_norm == A.Norm(kind="layernorm", eps=eps[0]), ("embedding_norm",),
          f"rwkv normalises the embeddings with the first layer's norm: embedding_norm = layernorm(eps = {eps[0]})")
    _need(m.final_norm is not None and m.final_norm.kind == "layernorm" and m.final_norm.bias
          and m.final_norm.placement == "pre", ("final_norm",), "rwkv's final norm is a LayerNorm with a bias")
    every = next((r for r in range(len(layers) + 1)
                  if eps == [eps[0] * 4 ** (i // r if r else 0) for i in range(len(layers))]
                  and m.final_norm.eps == 1e-5 * 4 ** (len(layers) // r if r else 0)), None)
    _need(every is not None, ("final_norm", "eps"),
          "norms' eps that no rescale_every gives (rwkv's final norm has eps 1e-5, and each halving of the "
          "hidden state multiplies the eps of the norms after it by 4)")
    return {"model_type": "rwkv", "vocab_size": m.vocab, "hidden_size": m.d_model, "num_hidden_layers": len(layers),
            "attention_hidden_size": ssm.dim or m.d_model, "intermediate_size": ffn.hidden,
            "layer_norm_epsilon": eps[0], "rescale_every": every, "context_length": m.context,
            "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m), "bos_token_id": None, "eos_token_id": None,
            # transformers sizes its cached state by hidden_size: with a narrower time mixing its forward
            # fails unless it runs without the cache (the same logits)
            **({"use_cache": False} if (ssm.dim or m.d_model) != m.d_model else {})}


def _block_cycle(layers: list[str]) -> list[str]:
    """The shortest pattern whose repetition, cut to the stack's length, gives the stack
    (RecurrentGemma's block_types are cycled over the layers, the last cycle possibly cut short)."""
    return next(layers[:p] for p in range(1, len(layers) + 1)
                if all(k == layers[i % p] for i, k in enumerate(layers)))


def _recurrent_gemma(m: A.Model) -> dict:
    """RecurrentGemma: rglru and local-attention blocks cycled from block_types, pre-norm RMSNorms
    with a unit offset, one biased GeGLU, the embedding scale sqrt(d_model) as bfloat16, logits
    soft-capped; the attention heads count the rglru's gate blocks too (num_attention_heads)."""
    import torch

    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, {"embedding_scale", "logit_softcap"})
    _positions_inherit(m, kinds)
    scale = torch.tensor(m.d_model**0.5, dtype=torch.bfloat16).item()
    _need(m.embedding_scale == scale and not m.embedding_scale_in_dtype, ("embedding_scale",),
          f"recurrent_gemma scales the embeddings by sqrt(d_model) held in bfloat16: embedding_scale = {scale}")
    _need(m.logit_softcap is not None, ("logit_softcap",), "recurrent_gemma always soft-caps the logits")
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "rmsnorm" and norm.placement == "pre" and norm.unit_offset, ("blocks", kinds[0], "norm"),
          "recurrent_gemma has pre-norm RMSNorm with a unit offset: rmsnorm(unit_offset = true)")
    _need(m.final_norm == norm, ("final_norm",), "a final norm other than the blocks' norm")
    _same(m, kinds, "parallel", "residual wiring (parallel or not)")
    ffn = _same(m, kinds, "ffn", "FFNs")
    hidden, act, bias = _glu(ffn, ("blocks", kinds[0], "ffn"))
    _need(bias, ("blocks", kinds[0], "ffn", "bias"), "recurrent_gemma's MLP has biases: bias = true")
    recurrent = [k for k in kinds if isinstance(m.blocks[k].ssm, A.RGLRU)]
    attns = [k for k in kinds if m.blocks[k].attention is not None]
    for k in kinds:
        _need(k in recurrent or k in attns, ("blocks", k),
              f"block `{k}` has neither rglru nor attention (recurrent_gemma has these layers only)")
    config = {"model_type": "recurrent_gemma", "vocab_size": m.vocab, "hidden_size": m.d_model,
              "intermediate_size": 2 * hidden, "num_hidden_layers": len(layers), "hidden_activation": act,
              "max_position_embeddings": m.context, "rms_norm_eps": norm.eps, "logits_soft_cap": m.logit_softcap,
              "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
              "block_types": ["recurrent" if k in recurrent else "attention" for k in _block_cycle(layers)],
              "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    heads = None
    if recurrent:
        r = _same(m, recurrent, "ssm", "rglru layers")
        path = ("blocks", recurrent[0], "ssm")
        _need(r.act == ffn.act, path + ("act",), "recurrent_gemma's one hidden_activation is the MLP's and the "
              f"recurrent block's: act = {ffn.act}")
        heads = r.heads
        config.update(lru_width=r.width or m.d_model, conv1d_width=r.conv_size, num_attention_heads=r.heads)
    if attns:
        a = _same(m, attns, "attention", "attentions")
        path = ("blocks", attns[0], "attention")
        kv = _attention_kv(m, a, path)
        _need(heads is None or a.heads == heads, path + ("heads",),
              f"attention heads other than the rglru's heads ({heads}): recurrent_gemma's num_attention_heads "
              "sets both")
        _need(a.head_dim * a.heads == m.d_model, path + ("head_dim",),
              "a head_dim other than d_model / heads (recurrent_gemma derives it)")
        _need(a.out_bias, path + ("out_bias",), "recurrent_gemma's o_proj always has a bias: out_bias = true")
        _need(a.window is not None, path + ("window",), "recurrent_gemma's attention is local: it needs a window")
        _need(a.softcap is None and _default_scale(a), path, "soft-capping or a score scale other than "
              "1/sqrt(head_dim) (recurrent_gemma has none)")
        for option, off in (("qk_norm", None), ("sinks", False), ("sink_tokens", 0), ("dilation", None),
                            ("global_tokens", 0), ("temperature_tuning", False), ("output_gate", False)):
            _need(getattr(a, option) == off, path + (option,), f"attention `{option}` (recurrent_gemma has none)")
        rope = _rope_parameters(m.position, ("position",), a.head_dim, partial=True)
        _need(rope["rope_type"] == "default", ("position", "scaling"), "RoPE scaling (recurrent_gemma has none)")
        config.update(num_attention_heads=a.heads, num_key_value_heads=kv["num_key_value_heads"],
                      attention_bias=a.bias, attention_window_size=a.window, rope_parameters=rope)
    else:
        _need(m.position is None, ("position",), "a position without attention layers to apply it to")
    return config


def _minimax(m: A.Model) -> dict:
    """MiniMax: lightning and GQA layers (layer_types) behind RMSNorms placed normed_residual, one
    Mixtral-style MoE, the residual weights per layer type (lightning, full attention, MoE); the
    lightning layers' heads and head width are the attention's (num_attention_heads, head_dim)."""
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    norm = _same(m, kinds, "norm", "norms")
    _need(norm.kind == "rmsnorm" and norm.placement == "normed_residual" and not norm.unit_offset,
          ("blocks", kinds[0], "norm"), "minimax's RMSNorms start the residual: rmsnorm(placement = normed_residual)")
    _need(m.final_norm == A.Norm(kind="rmsnorm", eps=norm.eps), ("final_norm",),
          f"a final norm other than rmsnorm(eps = {norm.eps})")
    moe = _same(m, kinds, "ffn", "FFNs")
    _need(isinstance(moe, A.MoE), ("blocks", kinds[0], "ffn"), "a dense FFN (minimax's FFN is a mixture of experts)")
    hidden, act, bias = _glu(moe.expert, ("blocks", kinds[0], "ffn", "expert"), "expert")
    _need(act == "silu" and not bias, ("blocks", kinds[0], "ffn", "expert"), "minimax's experts are swiglu without "
          "biases")
    _need(moe.aux_loss == 0, ("blocks", kinds[0], "ffn", "aux_loss"), "a load-balancing loss (not mapped for minimax)")
    linear = [k for k in kinds if isinstance(m.blocks[k].ssm, A.Lightning)]
    full = [k for k in kinds if m.blocks[k].attention is not None]
    for k in kinds:
        _need(k in linear or k in full, ("blocks", k),
              f"block `{k}` has neither lightning nor attention (minimax has these layers only)")
    ffn_weights = _same(m, kinds, "ffn_residual", "FFN residual weights") or (1.0, 1.0)
    config = {"model_type": "minimax", "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
              "num_hidden_layers": len(layers), "max_position_embeddings": m.context, "rms_norm_eps": norm.eps,
              "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m), "num_local_experts": moe.experts,
              "num_experts_per_tok": moe.top_k, "mlp_alpha_factor": ffn_weights[0], "mlp_beta_factor": ffn_weights[1],
              "layer_types": ["linear_attention" if k in linear else "full_attention" for k in layers],
              "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    heads = head_dim = None
    if linear:
        s = _same(m, linear, "ssm", "lightning layers")
        path = ("blocks", linear[0], "ssm")
        _need(s.value_dim == s.key_dim, path + ("value_dim",), "a value_dim other than key_dim (minimax has one head_dim)")
        _need(s.act == "silu", path + ("act",), "minimax's lightning attention shares hidden_act with the experts: silu")
        _need(s.norm_eps == 1e-6, path + ("norm_eps",), "minimax's lightning norm has eps 1e-6")
        heads, head_dim = s.heads, s.key_dim
        alpha, beta = _same(m, linear, "mixer_residual", "lightning residual weights") or (1.0, 1.0)
        config.update(num_attention_heads=heads, head_dim=head_dim, block_size=s.chunk,
                      linear_attn_alpha_factor=alpha, linear_attn_beta_factor=beta)
    if full:
        a = _same(m, full, "attention", "attentions")
        path = ("blocks", full[0], "attention")
        kv = _attention_kv(m, a, path)
        _need(heads is None or (a.heads, a.head_dim) == (heads, head_dim), path,
              f"attention heads other than the lightning layers' ({heads} of {head_dim}): minimax's "
              "num_attention_heads and head_dim set both")
        _need(not a.bias and not a.out_bias, path + ("bias",), "attention biases (minimax has none)")
        _need(a.softcap is None and _default_scale(a), path, "soft-capping or a score scale other than "
              "1/sqrt(head_dim) (minimax has none)")
        for option, off in (("qk_norm", None), ("sinks", False), ("chunk", None), ("sink_tokens", 0),
                            ("dilation", None), ("global_tokens", 0), ("temperature_tuning", False),
                            ("output_gate", False)):
            _need(getattr(a, option) == off, path + (option,), f"attention `{option}` (minimax has none)")
        alpha, beta = _same(m, full, "mixer_residual", "attention residual weights") or (1.0, 1.0)
        config.update(**kv, sliding_window=a.window, full_attn_alpha_factor=alpha, full_attn_beta_factor=beta,
                      rope_parameters=_rope_parameters(m.position, ("position",), a.head_dim))
    else:
        _need(m.position is None, ("position",), "a position without attention layers to apply it to")
    return config


def _zamba2(m: A.Model) -> dict:
    """Mamba-2 layers; before some, a hybrid = zamba2() shared block (the blocks in turn), which
    transformers' hybrid layer runs with the Mamba-2 layer after it. The round trip checks the
    rest (widths, scales, adapters, eps)."""
    layers = _layers(m)
    _model_extras(m, set())
    kinds = list(dict.fromkeys(layers))
    hybrid = [k for k in kinds if m.blocks[k].hybrid is not None]
    mamba = _one_kind(m, kinds, lambda b: b.hybrid is None, "mamba2")
    _need(bool(hybrid), ("layers",), _NO_ATTENTION.format("zamba2"))
    _need(mamba is not None and isinstance(m.blocks[mamba].ssm, A.Mamba2), ("layers",),
          "layers other than mamba2 blocks and hybrid = zamba2() blocks")
    types, i = [], 0
    while i < len(layers):
        is_hybrid = m.blocks[layers[i]].hybrid is not None
        types.append("hybrid" if is_hybrid else "mamba")
        i += 2 if is_hybrid else 1  # a hybrid block's hand-off goes to the mamba2 layer after it
    order = [k for k in layers if k in hybrid]
    _need(order == [hybrid[j % len(hybrid)] for j in range(len(order))], ("layers",),
          "hybrid blocks not used in turn (zamba2's hybrid layers take blocks 0, 1, ..., 0, 1, ...)")
    _need(m.tie_embeddings or len(hybrid) == len(order), ("tie_embeddings",), "an untied head with a block "
          "used twice (transformers' zamba2 shares its blocks only with tie_word_embeddings)")
    ssm, sb = m.blocks[mamba].ssm, m.blocks[hybrid[0]]
    _need(ssm.expand is not None, ("blocks", mamba, "ssm", "expand"),
          "d_inner set by heads × head_dim alone (zamba2's is mamba_expand · d_model)")
    a, ffn = sb.attention, sb.ffn
    hidden, act, bias = _glu(ffn, ("blocks", hybrid[0], "ffn"))
    targets = sb.lora.targets if sb.lora is not None else ()
    config: dict[str, Any] = {
        "mamba_d_state": ssm.d_state, "mamba_d_conv": ssm.d_conv, "mamba_expand": ssm.expand,
        "n_mamba_heads": ssm.heads, "mamba_ngroups": ssm.groups, "chunk_size": ssm.chunk,
        "add_bias_linear": bias, "time_step_min": ssm.dt_limit[0] if ssm.dt_limit is not None else 0.0,
        "intermediate_size": hidden, "hidden_act": act, "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads, "num_mem_blocks": len(hybrid),
        "use_shared_attention_adapter": "q" in targets, "adapter_rank": sb.lora.rank if sb.lora is not None else 128,
        "use_mem_rope": m.position is not None}
    if m.position is not None:
        config["rope_parameters"] = _rope_parameters(m.position, ("position",), a.head_dim)
    return {"model_type": "zamba2", "vocab_size": m.vocab, "hidden_size": m.d_model,
            "num_hidden_layers": len(types), "layers_block_type": types, **config,
            "rms_norm_eps": m.blocks[mamba].norm.eps, "max_position_embeddings": m.context,
            "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m), **_token_ids(m, 0)}


def _blt(m: A.Model) -> dict:
    """The Byte Latent Transformer: one sub-config per stack (spec/byte_latent.py has already
    refused what the family cannot compute); the local decoder's final norm is its layers' eps.
    What is left (mean_patch, a facts-only assumption, among others) the round trip compares."""
    _need(m.family == "byte_latent", ("family",), f"family = {m.family}")
    bl = m.byte_latent

    def stack(field: str, width: int) -> dict:
        name = getattr(m, field)[0]
        b = m.blocks[name]
        return {"hidden_size": width, "num_hidden_layers": len(getattr(m, field)),
                "num_attention_heads": b.attention.heads, "num_key_value_heads": b.attention.kv_heads or b.attention.heads,
                "intermediate_size": b.ffn.hidden, "rms_norm_eps": b.norm.eps, "rope_parameters": {
                    "rope_type": "default", "rope_theta": float(m.position_of(name).theta)}}

    decoder = stack("decoder_layers", m.d_model)
    _need(m.final_norm.eps == decoder["rms_norm_eps"], ("final_norm",), "blt's final norm has the local decoder's "
          f"rms_norm_eps ({decoder['rms_norm_eps']})")
    entropy = bl.patching == "entropy"
    cross = {"cross_attn_k": bl.cross_k, "hidden_size_global": bl.global_d_model}
    patcher = ({**stack("entropy_layers", bl.entropy_d_model), "sliding_window": bl.entropy_window} if entropy
               else {})  # not built without entropy patching; its vocabulary must still be the model's
    return {"model_type": "blt", "vocab_size": m.vocab, "max_position_embeddings": m.context, "dtype": _dtype(m),
            "patching_mode": "entropy" if entropy else "byte", "patch_in_forward": entropy,
            "patching_threshold": bl.threshold if entropy else None, "max_patch_length": bl.max_patch,
            "local_attention_window_len": bl.window, "cross_attn_k": bl.cross_k,
            "encoder_hash_byte_group_size": list(bl.ngrams), "encoder_hash_byte_group_vocab": bl.hash_vocab,
            "encoder_hash_byte_group_nb_functions": bl.hash_functions, "tie_word_embeddings": False,
            # archlang's byte_latent has no cache (patches move as bytes arrive), and transformers'
            # cached blt forward fails in 5.23: the checkpoint says so
            "use_cache": False,
            "patcher_config": {**patcher, "vocab_size": m.vocab},
            "encoder_config": {**stack("encoder_layers", m.d_model), **cross, "vocab_size": m.vocab,
                               "cross_attn_all_layers": bl.encoder_cross == "all"},
            "global_config": stack("global_layers", bl.global_d_model),
            "decoder_config": {**decoder, **cross, "vocab_size": m.vocab,
                               "cross_attn_all_layers": bl.decoder_cross == "all"}}


EXPORTERS: dict[str, Callable[[A.Model], dict]] = {
    "llama": lambda m: _llama_like(m, "llama"), "mistral": lambda m: _llama_like(m, "mistral"),
    "qwen2": lambda m: _llama_like(m, "qwen2"), "mixtral": _mixtral, "qwen2_moe": _qwen2_moe, "gemma2": _gemma2,
    "gpt2": _gpt2, "bert": _bert, "albert": _albert, "jamba": _jamba, "deepseek_v2": _deepseek_v2, "t5": _t5, "mamba2": _mamba2,
    # 2024-2026 families; a spec two families express goes to the first (a plain llama to llama)
    "qwen3": lambda m: _llama_like(m, "qwen3"), "olmo2": lambda m: _llama_like(m, "olmo2"),
    "gemma3_text": lambda m: _gemma2(m, "gemma3_text"), "smollm3": lambda m: _llama_like(m, "smollm3"),
    "phi3": lambda m: _llama_like(m, "phi3"), "deepseek_v3": lambda m: _deepseek_v2(m, "deepseek_v3"),
    "glm4_moe": _glm4_moe, "gpt_oss": _gpt_oss, "llama4_text": _llama4_text,
    "qwen3_moe": _qwen3_moe, "olmoe": _olmoe, "olmo3": _olmo3,
    "exaone4": _exaone4, "ernie4_5_moe": _ernie4_5_moe, "hunyuan_v1_moe": _hunyuan_v1_moe,
    "gemma": _gemma, "starcoder2": _starcoder2, "granite": lambda m: _granite(m, "granite"),
    "granitemoe": lambda m: _granite(m, "granitemoe"), "gpt_neox": _gpt_neox,
    "deepseek_v32": _deepseek_v32,
    "mamba": lambda m: _mamba1(m, "mamba"), "falcon_mamba": lambda m: _mamba1(m, "falcon_mamba"),
    "qwen3_next": _qwen3_next,
    "nemotron_h": _nemotron_h, "bamba": _bamba, "granitemoehybrid": lambda m: _bamba(m, "granitemoehybrid"),
    "lfm2": _lfm2,
    "xlstm": _xlstm,
    "rwkv": _rwkv,
    "recurrent_gemma": _recurrent_gemma,
    "minimax": _minimax,
    "falcon_h1": _falcon_h1,
    "kimi_linear": _kimi_linear,
    "electra": _electra,
    "zamba2": _zamba2,
    "modernbert": _modernbert,
    "deberta-v2": _deberta_v2,
    "blt": _blt,
}

# The transformers class of each family's checkpoint, for config.json's `architectures` (the
# class `from_pretrained` is expected to build: AutoModel for encoders, AutoModelForSeq2SeqLM for t5).
ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM", "gemma2": "Gemma2ForCausalLM",
    "gpt2": "GPT2LMHeadModel", "bert": "BertModel", "albert": "AlbertModel", "jamba": "JambaForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM", "t5": "T5ForConditionalGeneration", "mamba2": "Mamba2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "olmo2": "Olmo2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
    "smollm3": "SmolLM3ForCausalLM", "phi3": "Phi3ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
    "glm4_moe": "Glm4MoeForCausalLM", "gpt_oss": "GptOssForCausalLM", "llama4_text": "Llama4ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM", "olmo3": "Olmo3ForCausalLM",
    "exaone4": "Exaone4ForCausalLM", "ernie4_5_moe": "Ernie4_5_MoeForCausalLM",
    "hunyuan_v1_moe": "HunYuanMoEV1ForCausalLM",
    "gemma": "GemmaForCausalLM", "starcoder2": "Starcoder2ForCausalLM", "granite": "GraniteForCausalLM",
    "granitemoe": "GraniteMoeForCausalLM", "gpt_neox": "GPTNeoXForCausalLM",
    "deepseek_v32": "DeepseekV32ForCausalLM",
    "mamba": "MambaForCausalLM", "falcon_mamba": "FalconMambaForCausalLM",
    "qwen3_next": "Qwen3NextForCausalLM",
    "nemotron_h": "NemotronHForCausalLM", "bamba": "BambaForCausalLM",
    "granitemoehybrid": "GraniteMoeHybridForCausalLM",
    "lfm2": "Lfm2ForCausalLM",
    "xlstm": "xLSTMForCausalLM",
    "rwkv": "RwkvForCausalLM",
    "recurrent_gemma": "RecurrentGemmaForCausalLM",
    "minimax": "MiniMaxForCausalLM",
    "falcon_h1": "FalconH1ForCausalLM",
    "kimi_linear": "KimiLinearForCausalLM",
    "electra": "ElectraModel",
    "zamba2": "Zamba2ForCausalLM",
    "modernbert": "ModernBertModel",
    "deberta-v2": "DebertaV2Model",
    "blt": "BltForCausalLM",
}


# ----------------------------------------------------------------------------- the round trip


def _ir_text(m: A.Model) -> str:
    """The IR dump without its header (which names the model): the function the spec computes."""
    from archlang.compiler import lower
    from archlang.compiler.ir import dump

    return dump(lower(m)).split("\n", 1)[1]


def _first_difference(a: Any, b: Any, path: tuple) -> tuple[tuple, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(k), b.get(k), path + (k,))
            if found:
                return found
        return None
    return None if a == b else (path, a, b)


def _ast_difference(m: A.Model, back: A.Model) -> tuple[tuple, Any, Any] | None:
    """The first spec value (its AST path) that did not survive export and import."""
    for field in A.MODEL_FIELDS:
        if field in ("layers", "encoder_layers", "decoder_layers"):
            continue
        found = _first_difference(_dumped(getattr(m, field)), _dumped(getattr(back, field)), (field,))
        if found:
            return found
    for stack, layers in m.stacks().items():
        theirs = back.stacks().get(stack, ())
        if len(theirs) != len(layers):
            field = "layers" if stack == "layers" else f"{stack}_layers"
            return (field,), len(layers), len(theirs)
        for ours_name, their_name in zip(layers, theirs):
            ours, their = m.blocks[ours_name], back.blocks[their_name]
            for field in A.BLOCK_FIELDS:
                a = m.position_of(ours_name) if field == "position" else getattr(ours, field)
                b = back.position_of(their_name) if field == "position" else getattr(their, field)
                found = _first_difference(_dumped(a), _dumped(b), ("blocks", ours_name, field))
                if found:
                    return found
    return None


def _dumped(v: Any) -> Any:
    return v.model_dump() if isinstance(v, A.Node) else v


def _round_trip(m: A.Model, model_type: str, config) -> None:
    """Refuse (Unfit) unless the config imports back to a spec computing the same function."""
    from archlang.api import load_model

    from .hf import spec_from_config

    try:
        back = load_model(spec_from_config(config, name=m.name))
    except ArchError as exc:
        raise Unfit(("name",), f"the {model_type} config it gives is refused on import: {exc.message}") from None
    if _ir_text(back) == _ir_text(m) and back.dtype == m.dtype and back.context == m.context:
        return
    diff = _ast_difference(m, back)
    if diff is None:  # the same values, other IR: a bug of an exporter or of the importer
        raise Unfit(("name",), f"the {model_type} config it gives computes another function")
    path, ours, theirs = diff
    shown = ".".join(str(p) for p in path if p != "blocks")
    raise Unfit(path, f"`{shown}` = {_shown(ours)} (the {model_type} config gives {_shown(theirs)})",
                config_written=True)


def _shown(v: Any) -> str:
    if isinstance(v, dict) and "kind" in v:
        args = ", ".join(f"{k} = {_shown(x)}" for k, x in v.items() if k != "kind" and x is not None)
        return f"{v['kind']}({args})"
    return "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _config(model_type: str, values: dict):
    from .hf import config_from_dict

    nullable = ("q_lora_rank", "sliding_window", "final_logit_softcapping", "attn_logit_softcapping",
                "bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id",
                "local_attention_window_len")
    values = {k: v for k, v in values.items() if v is not None or k in nullable}
    config = config_from_dict({"architectures": [ARCHITECTURES[model_type]], **values})
    return config


_DROPOUTS = ("embedding_dropout", "attention_dropout", "residual_dropout")


def _dropout_keys(m: A.Model, model_type: str) -> dict:
    """The family's dropout keys (hf_config's dropout_into / no_dropout) for the spec's dropouts:
    each mapped key the value of the fields it sets, which must agree; zero for a key the family
    applies where archlang has no dropout. A spec dropout that no key of the family sets is refused."""
    from .hf_config import table

    values, carried = {}, set()
    for key, rule in table(model_type).items():
        if not rule.dropout:
            continue
        p = getattr(m, rule.fields[0]) if rule.fields else 0.0
        for field in rule.fields[1:]:
            _need(getattr(m, field) == p, (field,), f"`{field}` = {getattr(m, field)} and `{rule.fields[0]}` = {p} "
                                                    f"differ ({model_type}'s {key} sets both)")
        values[key] = p
        carried.update(rule.fields)
    for field in _DROPOUTS:
        _need(field in carried or not getattr(m, field), (field,), f"`{field}` ({model_type} has no such dropout)")
    return values


def _try(m: A.Model, model_type: str):
    _check_expressible(m)
    values = EXPORTERS[model_type](m)
    values.update(_dropout_keys(m, model_type))
    try:
        config = _config(model_type, values)
    except ArchError as exc:
        raise Unfit(("name",), exc.message) from None
    _round_trip(m, model_type, config)
    return config


def _refusal(m: A.Model, unfit: Unfit, message: str, notes: list[str] | None = None,
             hint: str | None = None) -> ArchError:
    return ArchError(message, span=m.span_of(*unfit.path), notes=notes or [], kind="interop",
                     hint=hint or f"export supports: {', '.join(EXPORTERS)}")


def export_config(m: A.Model, model_type: str | None = None):
    """The transformers config whose model computes exactly what `m` does: of `model_type`, or
    of the first family (EXPORTERS' order) that expresses it. ArchError, located at the first spec
    value no family (or the forced one) can express, when there is none."""
    if model_type is not None:
        if model_type not in EXPORTERS:
            raise ArchError(f"cannot export to model_type {model_type!r}", kind="usage",
                            hint=f"export supports: {', '.join(EXPORTERS)}")
        try:
            return _try(m, model_type)
        except Unfit as unfit:
            raise _refusal(m, unfit, f"a {model_type} config cannot express this spec: {unfit.message}",
                           hint="leave out --model-type to try every family") from None
    try:
        _check_expressible(m)
    except Unfit as unfit:
        raise _refusal(m, unfit, unfit.message) from None
    reasons: dict[str, Unfit] = {}
    reach: dict[str, tuple[bool, int]] = {}
    for name in EXPORTERS:
        _checks_passed[0] = 0
        try:
            return _try(m, name)
        except Unfit as unfit:
            reasons[name] = unfit
            reach[name] = (unfit.config_written, _checks_passed[0])
    # The closest family leads: one whose config came back with one detail different, else the
    # one that passed most of its checks before refusing.
    closest = max(reasons, key=lambda name: reach[name])
    unfit = reasons[closest]
    raise _refusal(m, unfit, f"no Hugging Face family expresses this spec; the closest, {closest}, lacks: "
                   f"{unfit.message}", notes=[f"{name}: {u.message}" for name, u in reasons.items()])


# ----------------------------------------------------------------------------- checkpoints


def _build(spec, model: str | None, m: A.Model, weights: str | os.PathLike | None, seed: int):
    import torch

    from archlang import checkpoint
    from archlang.api import build

    torch.manual_seed(seed)
    module = build(spec, model=model, passes="")
    if weights is not None:
        from safetensors import SafetensorError

        try:
            checkpoint.load(module, weights, strict=True)
        except (OSError, SafetensorError) as exc:
            raise ArchError(f"cannot read the weights in {weights}: {exc}", kind="interop") from None
        except RuntimeError as exc:  # missing, unexpected or misshapen tensors
            detail = str(exc).split("\n\t")
            raise ArchError(f"the weights in {weights} do not fit the spec of `{m.name}`", notes=detail[1:6] or detail,
                            hint="pass a checkpoint archlang saved (archlang.save) for a model of this spec",
                            kind="interop") from None
    return module.eval()


def export_hf(spec: str | os.PathLike, directory: str | os.PathLike, *, model: str | None = None,
              model_type: str | None = None, weights: str | os.PathLike | None = None, seed: int = 0,
              force: bool = False) -> str:
    """Write `directory`/config.json + model.safetensors for a spec, with the weights of an
    archlang checkpoint (`weights`) or random ones drawn with `seed`. The folder appears whole
    or not at all: it is written beside its destination and renamed. Returns the model_type."""
    from archlang.api import load_model

    from .hf import save_hf_checkpoint

    m = load_model(spec, model=model)
    config = export_config(m, model_type)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ArchError(f"cannot write {directory}: it is a file", kind="usage")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise ArchError(f"{directory} exists and is not empty", hint="pass --force to replace it", kind="usage")
    module = _build(spec, model, m, weights, seed)
    tmp = directory.with_name(f".{directory.name}.archc-tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.archc-old-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        save_hf_checkpoint(module, config, tmp)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
    except OSError as exc:
        raise ArchError(f"cannot write {directory}: {exc.strerror or exc}", kind="io") from None
    finally:
        if old.exists() and not directory.exists():  # the new folder never arrived: put the old one back
            os.replace(old, directory)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return config.model_type
