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
    ("scaling", "ntk"): "NTK-aware RoPE scaling has no Hugging Face equivalent among the exported families",
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
                       ("logit_scale", None), ("pooler", False), ("type_vocab", 0)):
        if field not in allowed:
            _need(getattr(m, field) == off, (field,), f"`{field}` (this family has none)")


def _positions_inherit(m: A.Model, blocks: list[str]) -> None:
    for b in blocks:
        _need(m.blocks[b].position == "inherit", ("blocks", b, "position"), "a per-block position")


def _rope_parameters(rope: Any, path: tuple, head_dim: int | None) -> dict:
    _need(isinstance(rope, A.Rope), path, f"position {getattr(rope, 'kind', 'none')}: this family uses RoPE")
    if head_dim is not None:
        _need(rope.dim in (None, head_dim), path + ("dim",), "partial RoPE (rope dim below head_dim)")
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(rope.theta)}
    s = rope.scaling
    if isinstance(s, A.LinearScaling):
        params.update(rope_type="linear", factor=s.factor)
    elif isinstance(s, A.Llama3Scaling):
        params.update(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                      high_freq_factor=s.high_freq_factor, original_max_position_embeddings=s.original_context)
    elif isinstance(s, A.YarnScaling):
        params.update(rope_type="yarn", factor=s.factor, original_max_position_embeddings=s.original_context,
                      beta_fast=s.beta_fast, beta_slow=s.beta_slow, mscale=s.mscale, mscale_all_dim=s.mscale_all_dim)
    elif s is not None:
        raise Unfit(path + ("scaling",), f"RoPE scaling {s.kind}")
    return params


# transformers' name of each archlang activation (hf_config.ACTIVATIONS maps them back).
HF_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu",
                  "sigmoid": "sigmoid", "tanh": "tanh"}


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


def _llama_like(m: A.Model, model_type: str) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    norm = _same(m, kinds, "norm", "norms")
    b0 = m.blocks[kinds[0]]
    _need(norm.kind == "rmsnorm" and norm.placement == "pre" and not norm.unit_offset, ("blocks", kinds[0], "norm"),
          f"{norm.kind}(placement = {norm.placement}{', unit_offset' if norm.unit_offset else ''}): "
          f"{model_type} has pre-norm RMSNorm")
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
    config = {"model_type": model_type, "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
              "num_hidden_layers": len(layers), **heads, "hidden_act": act, "max_position_embeddings": m.context,
              "rms_norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
              "rope_parameters": _rope_parameters(m.position, ("position",), a.head_dim)}
    window_set = {w for w in windows.values() if w is not None}
    _need(len(window_set) <= 1, ("blocks", kinds[-1], "attention", "window"), "sliding windows of different widths")
    window = window_set.pop() if window_set else None
    windowed = next((k for k in kinds if windows[k] is not None), kinds[0])
    if model_type == "llama":
        _need(window is None, ("blocks", windowed, "attention", "window"), "a sliding window (llama has none)")
        _need(a.bias == a.out_bias, ("blocks", kinds[0], "attention", "out_bias"),
              "a bias on q, k, v but not on the output, or the reverse (llama's attention_bias sets both)")
        config.update(attention_bias=a.bias, mlp_bias=mlp_bias)
    else:
        _need(not mlp_bias, ("blocks", kinds[0], "ffn", "bias"), f"FFN biases ({model_type} has none)")
    if model_type == "mistral":
        _need(not a.bias and not a.out_bias, ("blocks", kinds[0], "attention", "bias"), "attention biases")
        _need(all(windows[k] == window for k in kinds), ("blocks", windowed, "attention", "window"),
              "a sliding window on some layers only (mistral's window is on every layer)")
        config["sliding_window"] = window
    if model_type == "qwen2":
        _need(a.bias and not a.out_bias, ("blocks", kinds[0], "attention", "bias"),
              "qwen2 biases q, k and v and not the output: bias = true, out_bias = false")
        config.update(use_sliding_window=window is not None, sliding_window=window,
                      layer_types=["sliding_attention" if windows[k] else "full_attention" for k in layers])
    return config


def _mixtral(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _need(len(kinds) == 1, ("layers",), "more than one kind of layer (mixtral's layers are all alike)")
    b = m.blocks[kinds[0]]
    moe = b.ffn
    _need(isinstance(moe, A.MoE), ("blocks", kinds[0], "ffn"), "a dense FFN (mixtral's FFN is a mixture of experts)")
    hidden, act, bias = _glu(moe.expert, ("blocks", kinds[0], "ffn", "expert"), "expert")
    dense = A.Model.model_validate({**m.model_dump(exclude={"blocks"}), "blocks": {
        kinds[0]: b.model_copy(update={"ffn": A.GLU(kind="swiglu", hidden=hidden)})}})
    config = _llama_like(dense, "mistral")
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
    dense = A.Model.model_validate({**m.model_dump(exclude={"blocks"}), "blocks": {
        k: m.blocks[k].model_copy(update={"ffn": A.GLU(kind="swiglu", hidden=hidden),
                                          "attention": a.model_copy(update={"bias": False})}) for k in kinds}})
    config = _llama_like(dense, "mistral")
    del config["sliding_window"]
    config.update(model_type="qwen2_moe", qkv_bias=a.bias, num_experts=moe.experts, num_experts_per_tok=moe.top_k,
                  moe_intermediate_size=expert_hidden, shared_expert_intermediate_size=shared_hidden,
                  norm_topk_prob=moe.normalize_top_k, decoder_sparse_step=1,
                  mlp_only_layers=[i for i, s in enumerate(sparse) if not s], intermediate_size=hidden)
    return config


def _gemma2(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, {"embedding_scale", "logit_softcap"})
    _positions_inherit(m, kinds)
    _need(m.embedding_scale is not None and math.isclose(m.embedding_scale, m.d_model**0.5, rel_tol=1e-12),
          ("embedding_scale",), "gemma2 scales the embeddings by sqrt(d_model): embedding_scale = d_model ** 0.5")
    norm = _same(m, kinds, "norm", "norms")
    ffn = _same(m, kinds, "ffn", "FFNs")
    hidden, act, _ = _glu(ffn, ("blocks", kinds[0], "ffn"))
    a = m.blocks[kinds[0]].attention
    heads = _attention_kv(m, a, ("blocks", kinds[0], "attention"))
    scale = a.scale if a.scale is not None else a.head_dim**-0.5
    scalar = round(scale**-2)
    _need(scalar >= 1 and math.isclose(scalar**-0.5, scale, rel_tol=1e-9), ("blocks", kinds[0], "attention", "scale"),
          "gemma2 writes the score scale as query_pre_attn_scalar ** -0.5 with a whole query_pre_attn_scalar")
    windows = [m.blocks[k].attention.window if m.blocks[k].attention else None for k in layers]
    window_set = {w for w in windows if w is not None}
    _need(len(window_set) <= 1, ("layers",), "sliding windows of different widths")
    return {"model_type": "gemma2", "vocab_size": m.vocab, "hidden_size": m.d_model, "intermediate_size": hidden,
            "num_hidden_layers": len(layers), **heads, "hidden_activation": act, "max_position_embeddings": m.context,
            "rms_norm_eps": norm.eps, "tie_word_embeddings": m.tie_embeddings, "dtype": _dtype(m),
            "rope_parameters": _rope_parameters(m.position, ("position",), a.head_dim),
            "query_pre_attn_scalar": scalar, "attn_logit_softcapping": a.softcap,
            "final_logit_softcapping": m.logit_softcap, "sliding_window": window_set.pop() if window_set else None,
            "layer_types": ["sliding_attention" if w else "full_attention" for w in windows]}


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


def _bert(m: A.Model) -> dict:
    _need(m.family == "encoder", ("family",), f"family = {m.family} (bert is an encoder)")
    kinds = list(dict.fromkeys(m.layers))
    b = m.blocks[kinds[0]]
    _need(m.type_vocab > 0, ("type_vocab",), "no token-type embeddings (bert always has them)")
    _need(isinstance(b.ffn, A.MLP), ("blocks", kinds[0], "ffn"), f"ffn {getattr(b.ffn, 'kind', 'none')} (bert has mlp)")
    _attention_kv(m, b.attention, ("blocks", kinds[0], "attention"), kinds=("mha",))
    eps = m.embedding_norm.eps if m.embedding_norm is not None else b.norm.eps
    return {"model_type": "bert", "vocab_size": m.vocab, "hidden_size": m.d_model,
            "num_hidden_layers": len(m.layers), "num_attention_heads": b.attention.heads,
            "intermediate_size": b.ffn.hidden, "hidden_act": HF_ACTIVATIONS[b.ffn.act],
            "max_position_embeddings": m.context, "type_vocab_size": m.type_vocab, "layer_norm_eps": eps,
            "dtype": _dtype(m)}


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


def _deepseek_v2(m: A.Model) -> dict:
    layers = _layers(m)
    kinds = list(dict.fromkeys(layers))
    _model_extras(m, set())
    _positions_inherit(m, kinds)
    sparse = [isinstance(m.blocks[k].ffn, A.MoE) for k in layers]
    first_sparse = sparse.index(True) if any(sparse) else len(layers)
    _need(all(sparse[first_sparse:]), ("layers",), "dense layers after the first expert layer "
          "(deepseek_v2 has first_k_dense_replace dense layers, then expert layers)")
    a = _same(m, kinds, "attention", "attentions")
    _need(a is not None and a.kind == "mla", ("blocks", kinds[0], "attention"), "deepseek_v2 has mla attention")
    norm = m.blocks[kinds[0]].norm
    config = {"model_type": "deepseek_v2", "vocab_size": m.vocab, "hidden_size": m.d_model,
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
    return config


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


EXPORTERS: dict[str, Callable[[A.Model], dict]] = {
    "llama": lambda m: _llama_like(m, "llama"), "mistral": lambda m: _llama_like(m, "mistral"),
    "qwen2": lambda m: _llama_like(m, "qwen2"), "mixtral": _mixtral, "qwen2_moe": _qwen2_moe, "gemma2": _gemma2,
    "gpt2": _gpt2, "bert": _bert, "jamba": _jamba, "deepseek_v2": _deepseek_v2, "t5": _t5,
    "deepseek_v32": _deepseek_v32,
}

# The transformers class of each family's checkpoint, for config.json's `architectures` (the
# class `from_pretrained` is expected to build: AutoModel for encoders, AutoModelForSeq2SeqLM for t5).
ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM", "gemma2": "Gemma2ForCausalLM",
    "gpt2": "GPT2LMHeadModel", "bert": "BertModel", "jamba": "JambaForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM", "t5": "T5ForConditionalGeneration",
    "deepseek_v32": "DeepseekV32ForCausalLM",
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
                "bos_token_id", "eos_token_id")
    values = {k: v for k, v in values.items() if v is not None or k in nullable}
    config = config_from_dict({**values, "architectures": [ARCHITECTURES[model_type]]})
    return config


def _try(m: A.Model, model_type: str):
    _check_expressible(m)
    values = EXPORTERS[model_type](m)
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
