"""Hugging Face transformers ⇄ archlang: a spec from an HF config, and HF weights under
archlang's names. Each supported family has one spec writer and one weight-name table.

Verified by logit parity tests (tests/interop): llama, mistral, qwen2, qwen3, olmo2, smollm3, phi3, mixtral,
qwen2_moe, deepseek_v2, deepseek_v3, glm4_moe, gemma2, gemma3_text, gpt2, bert, albert, jamba, t5, mamba2, gpt_oss,
llama4_text, qwen3_moe, olmoe, olmo3, exaone4, ernie4_5_moe, hunyuan_v1_moe, gemma, starcoder2, granite,
granitemoe, gpt_neox, deepseek_v32, mamba, falcon_mamba, qwen3_next, nemotron_h, bamba,
granitemoehybrid, lfm2, xlstm, rwkv, recurrent_gemma,
minimax, falcon_h1, kimi_linear, zamba2, electra, modernbert, deberta-v2, blt. The encoders (bert, albert, electra,
modernbert, deberta-v2) come with the head of the class the config's `architectures` names: the base model, its
masked-LM head, its sequence classifier, or (electra) the discriminator's replaced-token detection head.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

import torch

from archlang.spec.errors import ArchError

from . import hf_config
from .hf_weights import to_archlang, to_hf


# ----------------------------------------------------------------------------- spec text


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, float):
        return repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, str):
        return v  # enumeration words (silu, pre, decoder)
    return repr(v)


class Raw:
    """Spec text written as is (a nested call)."""

    def __init__(self, text: str):
        self.text = text


def call(name: str, **kwargs: Any) -> Raw:
    args = ", ".join(f"{k} = {_value(v)}" for k, v in kwargs.items() if v is not None or k == "window")
    return Raw(f"{name}({args})")


def write_spec(name: str, fields: dict[str, Any], blocks: dict[str, dict[str, Any]], layers: dict[str, str],
               comment: str = "") -> str:
    lines = [f"# {comment}"] if comment else []
    lines.append(f"model {name} {{")
    for k, v in fields.items():
        if v is not None:
            lines.append(f"    {k} = {_value(v)}")
    for block, assigns in blocks.items():
        lines.append("")
        lines.append(f"    block {block} {{")
        for k, v in assigns.items():
            if v is not None:
                lines.append(f"        {k} = {_value(v)}")
        lines.append("    }")
    lines.append("")
    for k, v in layers.items():
        lines.append(f"    {k} = {v}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _layout(kinds: list[str]) -> str:
    n = len(kinds)
    for period in range(1, n + 1):
        if n % period == 0 and kinds == kinds[:period] * (n // period):
            unit = kinds[0] if period == 1 else "[" + ", ".join(kinds[:period]) + "]"
            return unit if n == period else f"{unit} * {n // period}"
    return "[" + ", ".join(kinds) + "]"


def _rope(c, rotary_dim: int | None = None, params: dict | None = None) -> Raw:
    """The rope() of a config; `params` for one layer type's entry of rope_parameters (Gemma 3)."""
    params = dict(params if params is not None else getattr(c, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    kind = params.get("rope_type", "default")
    scaling = None
    if kind == "linear":
        scaling = call("linear", factor=float(params["factor"]))
    elif kind == "llama3":
        scaling = call("llama3", factor=float(params["factor"]), low_freq_factor=float(params["low_freq_factor"]),
                       high_freq_factor=float(params["high_freq_factor"]),
                       original_context=int(params["original_max_position_embeddings"]))
    elif kind == "yarn":
        scaling = call("yarn", factor=float(params["factor"]),
                       original_context=int(params.get("original_max_position_embeddings") or c.max_position_embeddings),
                       beta_fast=float(params.get("beta_fast") or 32), beta_slow=float(params.get("beta_slow") or 1),
                       mscale=float(params.get("mscale") or 1), mscale_all_dim=float(params.get("mscale_all_dim") or 0),
                       truncate=False if params.get("truncate") is False else None)
    elif kind == "longrope":  # Phi-3; the factor defaults to context / original_context in both
        scaling = call("longrope", short_factor=Raw(_numbers(params["short_factor"])),
                       long_factor=Raw(_numbers(params["long_factor"])),
                       original_context=int(params.get("original_max_position_embeddings")
                                            or getattr(c, "original_max_position_embeddings", None)
                                            or c.max_position_embeddings),
                       factor=float(params["factor"]) if params.get("factor") is not None else None,
                       attention_factor=float(params["attention_factor"]) if params.get("attention_factor") else None)
    elif kind == "dynamic":  # transformers grows the base past max_position_embeddings
        scaling = call("dynamic", factor=float(params["factor"]), original_context=int(c.max_position_embeddings))
    elif kind != "default":
        raise ArchError(f"RoPE scaling {kind!r} has no archlang equivalent yet", kind="interop")
    partial = getattr(c, "partial_rotary_factor", None) or params.get("partial_rotary_factor")
    dim = None
    if rotary_dim is not None:  # the rotary part has its own width (MLA): dim is the attention's business
        partial = None
    if partial and partial != 1.0:
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        dim = int(hd * partial)
    return call("rope", theta=float(theta), dim=dim, scaling=scaling)


def _numbers(values) -> str:
    return "[" + ", ".join(_value(float(v)) if not isinstance(v, int) else str(v) for v in values) + "]"


def _act(name: str) -> str:
    return hf_config.ACTIVATIONS.get(name) or _unsupported(f"activation {name!r}")


def _unsupported(what: str):
    raise ArchError(f"{what} has no archlang equivalent yet", kind="interop")


def _attention(c, *, window=None, bias=False, out_bias=False, softcap=None, scale=None, head_dim=None,
               qk_norm=None, **options) -> Raw:
    heads, kv = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    hd = head_dim or getattr(c, "head_dim", None)
    if hd == c.hidden_size // heads:
        hd = None
    kind = "mha" if kv == heads else "mqa" if kv == 1 else "gqa"
    return call(kind, heads=heads, kv_heads=kv if kind == "gqa" else None, head_dim=hd, bias=bias or None,
                out_bias=out_bias or None, window=window, softcap=softcap, scale=scale, qk_norm=qk_norm, **options)


def _decoder_fields(c, **extra) -> dict[str, Any]:
    fields = {"family": "decoder", "vocab": c.vocab_size, "d_model": c.hidden_size,
              "context": c.max_position_embeddings, "dtype": hf_config.spec_dtype(c.dtype),
              "tie_embeddings": bool(getattr(c, "tie_word_embeddings", False)) or None, **_dropouts(c)}
    fields.update(extra)
    return fields


def _dropouts(c) -> dict[str, float]:
    """The model's dropout fields that the config's dropout keys set (hf_config.dropout_into),
    where they are not zero."""
    fields: dict[str, float] = {}
    for key, rule in hf_config.table(c.model_type).items():
        p = getattr(c, key, None) if rule.fields else None
        fields.update((field, float(p)) for field in rule.fields if p)
    order = ("embedding_dropout", "attention_dropout", "residual_dropout")
    return {field: fields[field] for field in order if field in fields}


def _llama_like(c, name: str) -> str:
    eps = c.rms_norm_eps
    layer_types = getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers
    window = getattr(c, "sliding_window", None)
    if c.model_type in ("qwen2", "qwen3", "smollm3") and not getattr(c, "use_sliding_window", False):
        window = None
    # Qwen3 normalises each q/k head before RoPE; OLMo 2 the whole q and k projections.
    qk_norm = {"qwen3": call("rmsnorm", eps=eps), "olmo2": call("rmsnorm", eps=eps, scope="projection")}.get(c.model_type)
    norm = call("rmsnorm", eps=eps, placement="output" if c.model_type == "olmo2" else None)
    # Qwen2 biases q, k and v; Llama's attention_bias biases the output projection too.
    bias = bool(getattr(c, "attention_bias", c.model_type == "qwen2"))
    out_bias = bool(getattr(c, "attention_bias", False))
    mlp_bias = bool(getattr(c, "mlp_bias", False)) or None
    ffn = call("swiglu", hidden=c.intermediate_size, bias=mlp_bias) if _act(c.hidden_act) == "silu" \
        else call("geglu", hidden=c.intermediate_size, act=_act(c.hidden_act), bias=mlp_bias)
    # SmolLM3: no_rope_layers[i] = 0 makes layer i a NoPE layer
    uses_rope = getattr(c, "no_rope_layers", None) or [1] * len(layer_types)
    blocks, kinds = {}, []
    for t, rope in zip(layer_types, uses_rope):
        sliding = t == "sliding_attention" or (c.model_type in ("mistral", "phi3") and window)
        kind = ("sliding" if sliding and window else "layer") + ("" if rope else "_nope")
        kinds.append(kind)
        if kind not in blocks:
            blocks[kind] = {"norm": norm,
                            "attention": _attention(c, window=window if kind.startswith("sliding") else None,
                                                    bias=bias, out_bias=out_bias, qk_norm=qk_norm),
                            "ffn": ffn, "position": None if rope else Raw("none")}
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, f"Imported from a Hugging Face {c.model_type} config.")


def _moe_like(c, name: str) -> str:
    eps = c.rms_norm_eps
    if c.model_type == "mixtral":
        experts, top_k, hidden = c.num_local_experts, c.num_experts_per_tok, c.intermediate_size
        moe = call("moe", experts=experts, top_k=top_k, expert=call("swiglu", hidden=hidden),
                   aux_loss=float(c.router_aux_loss_coef) if getattr(c, "output_router_logits", False) else None)
        attention = _attention(c, window=getattr(c, "sliding_window", None))
        kinds = ["layer"] * c.num_hidden_layers
        blocks = {"layer": {"norm": call("rmsnorm", eps=eps), "attention": attention, "ffn": moe}}
    else:  # qwen2_moe
        moe = call("moe", experts=c.num_experts, top_k=c.num_experts_per_tok,
                   expert=call("swiglu", hidden=c.moe_intermediate_size),
                   shared=call("swiglu", hidden=c.shared_expert_intermediate_size), shared_gate=True,
                   normalize_top_k=bool(c.norm_topk_prob))
        attention = _attention(c, bias=bool(c.qkv_bias))
        kinds = []
        for i in range(c.num_hidden_layers):
            sparse = i not in (c.mlp_only_layers or []) and (i + 1) % c.decoder_sparse_step == 0
            kinds.append("moe_layer" if sparse else "dense_layer")
        blocks = _dense_and_moe_blocks(kinds, "dense_layer", "moe_layer", eps, attention, c.intermediate_size, moe)
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, f"Imported from a Hugging Face {c.model_type} config.")


def _qwen3_moe(c, name: str) -> str:
    """Qwen3 attention (per-head QK-norm before RoPE; a sliding window on every layer when
    use_sliding_window) with routed experts only; mlp_only_layers and decoder_sparse_step pick
    the dense layers."""
    eps = c.rms_norm_eps
    moe = call("moe", experts=c.num_experts, top_k=c.num_experts_per_tok,
               expert=call("swiglu", hidden=c.moe_intermediate_size), normalize_top_k=bool(c.norm_topk_prob))
    bias = bool(c.attention_bias) or None
    attention = _attention(c, window=c.sliding_window if c.use_sliding_window else None, bias=bias, out_bias=bias,
                           qk_norm=call("rmsnorm", eps=eps))
    kinds = ["moe_layer" if i not in c.mlp_only_layers and c.num_experts > 0 and (i + 1) % c.decoder_sparse_step == 0
             else "dense_layer" for i in range(c.num_hidden_layers)]
    blocks = _dense_and_moe_blocks(kinds, "dense_layer", "moe_layer", eps, attention, c.intermediate_size, moe)
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face qwen3_moe config.")


def _olmoe(c, name: str) -> str:
    """OLMoE: pre-norm (unlike OLMo 2) with OLMo 2's QK-norm over the whole q and k projections,
    and routed SwiGLU experts in every layer."""
    eps = c.rms_norm_eps
    bias = bool(c.attention_bias) or None
    attention = _attention(c, bias=bias, out_bias=bias, qk_norm=call("rmsnorm", eps=eps, scope="projection"))
    moe = call("moe", experts=c.num_experts, top_k=c.num_experts_per_tok,
               expert=call("swiglu", hidden=c.intermediate_size), normalize_top_k=bool(c.norm_topk_prob))
    blocks = {"layer": {"norm": call("rmsnorm", eps=eps), "attention": attention, "ffn": moe}}
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": f"layer * {c.num_hidden_layers}"},
                      "Imported from a Hugging Face olmoe config.")


def _olmo3(c, name: str) -> str:
    """OLMo 3: OLMo 2's blocks (norms on the branch outputs, QK-norm over the whole projections)
    with sliding and full layers (layer_types), each type with its own RoPE."""
    eps = c.rms_norm_eps
    norm = call("rmsnorm", eps=eps, placement="output")
    qk_norm = call("rmsnorm", eps=eps, scope="projection")
    bias = bool(c.attention_bias) or None
    ffn = call("swiglu", hidden=c.intermediate_size)
    # a window as long as the context masks nothing there (transformers' defaults: 4096 over 2048)
    window = c.sliding_window if c.sliding_window and c.sliding_window < c.max_position_embeddings else None
    blocks, kinds = {}, []
    for t in c.layer_types:
        kind = "sliding" if t == "sliding_attention" else "full"
        kinds.append(kind)
        blocks.setdefault(kind, {"norm": norm, "attention": _attention(
            c, window=window if kind == "sliding" else None, bias=bias, out_bias=bias, qk_norm=qk_norm),
            "ffn": ffn, "position": _rope(c, params=c.rope_parameters[t])})
    fields = _decoder_fields(c, final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face olmo3 config.")


def _exaone4(c, name: str) -> str:
    """EXAONE 4: norms on the branch outputs (as OLMo 2), per-head QK-norm, and sliding layers
    with RoPE beside global layers without it (NoPE) when a window is set; RoPE everywhere else."""
    eps = c.rms_norm_eps
    norm = call("rmsnorm", eps=eps, placement="output")
    qk_norm = call("rmsnorm", eps=eps)
    ffn = call("swiglu", hidden=c.intermediate_size) if _act(c.hidden_act) == "silu" \
        else call("geglu", hidden=c.intermediate_size, act=_act(c.hidden_act))
    # a window as long as the context masks nothing there (transformers' defaults: 4096 over 2048)
    window = c.sliding_window if c.sliding_window and c.sliding_window < c.max_position_embeddings else None
    blocks, kinds = {}, []
    for t in c.layer_types:
        kind = "sliding" if t == "sliding_attention" else "full"
        kinds.append(kind)
        nope = kind == "full" and c.sliding_window is not None  # transformers' test, on the config's window
        blocks.setdefault(kind, {"norm": norm, "attention": _attention(
            c, window=window if kind == "sliding" else None, qk_norm=qk_norm), "ffn": ffn,
            "position": Raw("none") if nope else None})
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face exaone4 config.")


def _ernie4_5_moe(c, name: str) -> str:
    """ERNIE 4.5 MoE: softmax routing that chooses with a correction bias (moe_statics) and divides
    the chosen weights by max(sum, moe_norm_min), shared experts beside the routed ones, expert
    layers every moe_layer_interval within [start, end]. Its RoPE rotates channel pairs: the
    weight rules permute q and k. (use_bias, which biases the LM head too, is refused.)"""
    eps = c.rms_norm_eps
    attention = _attention(c)
    shared = c.moe_num_shared_experts
    moe = call("moe", experts=c.num_experts, top_k=c.num_experts_per_tok,
               expert=call("swiglu", hidden=c.moe_intermediate_size),
               shared=call("swiglu", hidden=c.moe_intermediate_size * shared) if shared else None,
               correction_bias=True, normalize_min=float(c.moe_norm_min) if c.moe_norm_min else None)
    kinds = ["moe_layer" if (i + 1) % c.moe_layer_interval == 0 and c.moe_layer_start_index <= i
             <= c.moe_layer_end_index else "dense_layer" for i in range(c.num_hidden_layers)]
    blocks = {}
    if "dense_layer" in kinds:
        blocks["dense_layer"] = {"norm": call("rmsnorm", eps=eps), "attention": attention,
                                 "ffn": call("swiglu", hidden=c.intermediate_size)}
    if "moe_layer" in kinds:
        blocks["moe_layer"] = {"norm": call("rmsnorm", eps=eps), "attention": attention, "ffn": moe}
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("rmsnorm", eps=eps))
    layers = " + ".join(_layout([k]) if n == 1 else f"{k} * {n}" for k, n in _runs(kinds))
    return write_spec(name, fields, blocks, {"layers": layers}, "Imported from a Hugging Face ernie4_5_moe config.")


def _hunyuan_v1_moe(c, name: str) -> str:
    """Hunyuan MoE: per-head RMSNorm on q and k after RoPE, routed experts beside an always-on
    shared MLP in every layer, a top-k per layer (moe_topk as a list); its fixed NTK `alpha`
    RoPE is archlang's ntk(factor = alpha)."""
    eps = c.rms_norm_eps
    bias = bool(c.attention_bias) or None
    attention = _attention(c, bias=bias, out_bias=bias, qk_norm=call("rmsnorm", eps=eps, after_rope=True))
    params = c.rope_parameters or {}
    position = _rope(c)
    if params.get("rope_type") == "dynamic" and params.get("alpha"):  # transformers' ntk_alpha
        position = call("rope", theta=float(params["rope_theta"]), scaling=call("ntk", factor=float(params["alpha"])))
    top_ks = c.moe_topk if isinstance(c.moe_topk, list) else [c.moe_topk] * c.num_hidden_layers
    blocks, kinds = {}, []
    for k in top_ks:
        kind = "layer" if len(set(top_ks)) == 1 else f"layer_top{k}"
        kinds.append(kind)
        blocks.setdefault(kind, {"norm": call("rmsnorm", eps=eps), "attention": attention, "ffn": call(
            "moe", experts=c.num_experts, top_k=k, expert=call("swiglu", hidden=c.intermediate_size),
            shared=call("swiglu", hidden=c.intermediate_size))})
    fields = _decoder_fields(c, position=position, final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face hunyuan_v1_moe config.")


def _dense_and_moe_blocks(kinds: list[str], dense: str, sparse: str, eps: float, attention: Raw, hidden: int,
                          moe: Raw) -> dict[str, dict[str, Any]]:
    """The two block kinds of a model that mixes dense SwiGLU layers and MoE layers, for the
    kinds its layer list uses."""
    blocks = {}
    if dense in kinds:
        blocks[dense] = {"norm": call("rmsnorm", eps=eps), "attention": attention, "ffn": call("swiglu", hidden=hidden)}
    if sparse in kinds:
        blocks[sparse] = {"norm": call("rmsnorm", eps=eps), "attention": attention, "ffn": moe}
    return blocks


def _gemma(c, name: str) -> str:
    """Gemma 1: GeGLU, RMSNorm with a unit offset (pre-norm only), embeddings scaled by
    sqrt(hidden_size), a head_dim of its own."""
    eps = c.rms_norm_eps
    ffn = call("geglu", hidden=c.intermediate_size, act=_act(c.hidden_act))
    bias = bool(c.attention_bias)
    block = {"norm": call("rmsnorm", eps=eps, unit_offset=True),
             "attention": _attention(c, bias=bias, out_bias=bias, head_dim=c.head_dim), "ffn": ffn}
    # transformers rounds the normaliser to the activations' dtype before it multiplies
    fields = _decoder_fields(c, embedding_scale=float(c.hidden_size) ** 0.5, embedding_scale_in_dtype=True,
                             position=_rope(c), final_norm=call("rmsnorm", eps=eps, unit_offset=True))
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.num_hidden_layers}"},
                      "Imported from a Hugging Face gemma config.")


def _starcoder2(c, name: str) -> str:
    """StarCoder2: LayerNorm with biases, a GELU MLP, use_bias on every projection, one sliding
    window for all layers (its dropout keys map through hf_config's table)."""
    eps, bias = c.norm_epsilon, bool(c.use_bias)
    block = {"norm": call("layernorm", eps=eps),
             "attention": _attention(c, window=c.sliding_window, bias=bias, out_bias=bias),
             "ffn": call("mlp", hidden=c.intermediate_size, act=_act(c.hidden_act), bias=bias)}
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("layernorm", eps=eps))
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.num_hidden_layers}"},
                      "Imported from a Hugging Face starcoder2 config.")


def _granite(c, name: str) -> str:
    """Granite (and GraniteMoe, whose FFN is a mixture of experts): Llama with four multipliers,
    on the embeddings, on every residual branch, as the attention's score scale, and dividing
    the logits (archlang multiplies the final hidden state by the reciprocal, which the head,
    having no bias, turns into the same logits)."""
    eps = c.rms_norm_eps
    bias = bool(c.attention_bias)
    act = _act(c.hidden_act)
    glu = "swiglu" if act == "silu" else "geglu"
    if c.model_type == "granitemoe":
        ffn = call("moe", experts=c.num_local_experts, top_k=c.num_experts_per_tok,
                   expert=call(glu, hidden=c.intermediate_size, act=None if glu == "swiglu" else act))
    else:
        ffn = call(glu, hidden=c.intermediate_size, act=None if glu == "swiglu" else act, bias=bool(c.mlp_bias) or None)
    block = {"norm": call("rmsnorm", eps=eps),
             "attention": _attention(c, bias=bias, out_bias=bias, scale=float(c.attention_multiplier)), "ffn": ffn}

    def factor(v: float) -> float | None:
        return None if v == 1 else float(v)

    fields = _decoder_fields(c, embedding_scale=factor(c.embedding_multiplier),
                             residual_scale=factor(c.residual_multiplier),
                             logit_scale=factor(1 / c.logits_scaling), position=_rope(c),
                             final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.num_hidden_layers}"},
                      f"Imported from a Hugging Face {c.model_type} config.")


def _gpt_neox(c, name: str) -> str:
    """GPT-NeoX (Pythia): LayerNorm, partial RoPE, a GELU MLP with biases, and with
    use_parallel_residual the attention and the MLP side by side on each layer's input."""
    eps, bias = c.layer_norm_eps, bool(c.attention_bias)
    block = {"norm": call("layernorm", eps=eps), "attention": _attention(c, bias=bias, out_bias=bias),
             "ffn": call("mlp", hidden=c.intermediate_size, act=_act(c.hidden_act), bias=True),
             "parallel": True if c.use_parallel_residual else None}
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("layernorm", eps=eps))
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.num_hidden_layers}"},
                      "Imported from a Hugging Face gpt_neox config.")


def _gemma2(c, name: str) -> str:
    eps = c.rms_norm_eps
    norm = call("rmsnorm", eps=eps, unit_offset=True, placement="sandwich")
    ffn = call("geglu", hidden=c.intermediate_size, act=_act(c.hidden_activation))
    scale = c.query_pre_attn_scalar**-0.5
    blocks, kinds = {}, []
    for t in c.layer_types:
        kind = "sliding" if t == "sliding_attention" else "full"
        kinds.append(kind)
        blocks.setdefault(kind, {"norm": norm, "attention": _attention(
            c, window=c.sliding_window if kind == "sliding" else None, softcap=c.attn_logit_softcapping,
            scale=scale, head_dim=c.head_dim), "ffn": ffn})
    fields = _decoder_fields(c, embedding_scale=float(c.hidden_size) ** 0.5, logit_softcap=c.final_logit_softcapping,
                             position=_rope(c), final_norm=call("rmsnorm", eps=eps, unit_offset=True))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face gemma2 config.")


def _gemma3(c, name: str) -> str:
    """Gemma 3: Gemma 2's sandwich norms and scale, QK-norm with a unit offset instead of
    soft-capping, and a RoPE per layer type (the sliding layers' own base, the full layers' scaled)."""
    eps = c.rms_norm_eps
    norm = call("rmsnorm", eps=eps, unit_offset=True, placement="sandwich")
    ffn = call("geglu", hidden=c.intermediate_size, act=_act(c.hidden_activation))
    qk_norm = call("rmsnorm", eps=eps, unit_offset=True)
    ropes = c.rope_parameters
    blocks, kinds = {}, []
    for t in c.layer_types:
        kind = "sliding" if t == "sliding_attention" else "full"
        kinds.append(kind)
        blocks.setdefault(kind, {"norm": norm, "attention": _attention(
            c, window=c.sliding_window if kind == "sliding" else None, softcap=c.attn_logit_softcapping,
            scale=c.query_pre_attn_scalar**-0.5, head_dim=c.head_dim, qk_norm=qk_norm), "ffn": ffn,
            "position": _rope(c, params=ropes[t])})
    fields = _decoder_fields(c, embedding_scale=float(c.hidden_size) ** 0.5, logit_softcap=c.final_logit_softcapping,
                             final_norm=call("rmsnorm", eps=eps, unit_offset=True))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face gemma3_text config.")


def _gpt2(c, name: str) -> str:
    eps = c.layer_norm_epsilon
    fields = {"family": "decoder", "vocab": c.vocab_size, "d_model": c.n_embd, "context": c.n_positions,
              "dtype": hf_config.spec_dtype(c.dtype), "tie_embeddings": True, **_dropouts(c),
              "position": call("learned"), "final_norm": call("layernorm", eps=eps)}
    block = {"norm": call("layernorm", eps=eps), "attention": call("mha", heads=c.n_head, bias=True, out_bias=True),
             "ffn": call("mlp", hidden=c.n_inner or 4 * c.n_embd, act=_act(c.activation_function), bias=True)}
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.n_layer}"}, "Imported from a Hugging Face gpt2 config.")


# The encoder classes the importer builds, by the head each puts on the encoder (the first is the
# class of a config that names none).
ENCODER_HEADS = {
    "bert": {"BertModel": None, "BertForMaskedLM": "mlm", "BertForSequenceClassification": "classifier"},
    "albert": {"AlbertModel": None, "AlbertForMaskedLM": "mlm", "AlbertForSequenceClassification": "classifier"},
    "electra": {"ElectraModel": None, "ElectraForPreTraining": "rtd", "ElectraForMaskedLM": "mlm",
                "ElectraForSequenceClassification": "classifier"},
    "modernbert": {"ModernBertModel": None, "ModernBertForMaskedLM": "mlm",
                   "ModernBertForSequenceClassification": "classifier"},
    "deberta-v2": {"DebertaV2Model": None, "DebertaV2ForMaskedLM": "mlm",
                   "DebertaV2ForSequenceClassification": "classifier"},
}


def encoder_class(c) -> str:
    """The transformers class of an encoder config: the one `architectures` names, refused unless
    the importer builds it."""
    classes = ENCODER_HEADS[c.model_type]
    arch = (getattr(c, "architectures", None) or [next(iter(classes))])[0]
    if arch not in classes:
        raise ArchError(f"{c.model_type} architectures = {arch}: archlang builds {', '.join(classes)}",
                        kind="interop", hint="load the checkpoint as one of these classes")
    return arch


def bert_head(c) -> str | None:
    """The head of the encoder class `config.architectures` names (the base model when none)."""
    return ENCODER_HEADS[c.model_type][encoder_class(c)]


def _bert(c, name: str) -> str:
    eps = c.layer_norm_eps
    head = bert_head(c)
    fields = {"family": "encoder", "vocab": c.vocab_size, "d_model": c.hidden_size,
              "context": c.max_position_embeddings, "dtype": hf_config.spec_dtype(c.dtype), "type_vocab": c.type_vocab_size,
              "pooler": head != "mlm", **_dropouts(c), "position": call("learned"),
              "embedding_norm": call("layernorm", eps=eps)}
    _encoder_head(c, fields, head, eps, c.classifier_dropout)
    block = {"norm": call("layernorm", eps=eps, placement="post"),
             "attention": call("mha", heads=c.num_attention_heads, bias=True, out_bias=True),
             "ffn": call("mlp", hidden=c.intermediate_size, act=_act(c.hidden_act), bias=True)}
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.num_hidden_layers}"}, "Imported from a Hugging Face bert config.")


def _encoder_head(c, fields: dict[str, Any], head: str | None, eps: float, classifier_dropout) -> None:
    """The head fields of a BERT-like encoder: the masked-LM head (no pooler; tied to the
    embeddings) or the classifier on the pooled token."""
    if head == "mlm":
        if not c.tie_word_embeddings:
            raise ArchError(f"{c.model_type} tie_word_embeddings = false: its masked-LM head then keeps two output "
                            "biases, one of them unused, which archlang does not map", kind="interop",
                            hint="import the tied model (tie_word_embeddings = true)")
        fields["tie_embeddings"] = True
        fields["head"] = call("mlm", act=_act(c.hidden_act), norm=call("layernorm", eps=eps))
    elif head == "classifier":
        dropout = classifier_dropout if classifier_dropout is not None else c.hidden_dropout_prob
        fields["head"] = call("classifier", labels=c.num_labels, dropout=dropout or None)


def _albert(c, name: str) -> str:
    """ALBERT: BERT's post-norm layer, one set of weights for every layer (a shared block), and
    embeddings of width embedding_size projected to hidden_size after their norm."""
    if c.num_hidden_groups != 1 or c.inner_group_num != 1:
        key = "num_hidden_groups" if c.num_hidden_groups != 1 else "inner_group_num"
        raise ArchError(f"albert {key} = {getattr(c, key)}: archlang maps one group of one shared layer",
                        kind="interop", hint=f"set {key} = 1")
    eps = c.layer_norm_eps
    head = bert_head(c)
    fields = {"family": "encoder", "vocab": c.vocab_size, "d_model": c.hidden_size,
              "context": c.max_position_embeddings, "dtype": hf_config.spec_dtype(c.dtype), "type_vocab": c.type_vocab_size,
              "embedding_dim": c.embedding_size, "pooler": head != "mlm", **_dropouts(c), "position": call("learned"),
              "embedding_norm": call("layernorm", eps=eps)}
    _encoder_head(c, fields, head, eps, c.classifier_dropout_prob)
    block = {"shared": True, "norm": call("layernorm", eps=eps, placement="post"),
             "attention": call("mha", heads=c.num_attention_heads, bias=True, out_bias=True),
             "ffn": call("mlp", hidden=c.intermediate_size, act=_act(c.hidden_act), bias=True)}
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.num_hidden_layers}"},
                      "Imported from a Hugging Face albert config.")


def _electra(c, name: str) -> str:
    """ELECTRA: BERT's post-norm layer without a pooler, embeddings of width embedding_size
    projected to hidden_size (after their norm) where the two differ. Its heads: the
    discriminator's replaced-token detection (ElectraForPreTraining), the generator's masked-LM
    head (GELU and a norm of the embedding width, then onto the vocabulary) and a classifier with
    a dense layer of its own on the first token."""
    eps = c.layer_norm_eps
    head = bert_head(c)
    fields = {"family": "encoder", "vocab": c.vocab_size, "d_model": c.hidden_size,
              "context": c.max_position_embeddings, "dtype": hf_config.spec_dtype(c.dtype), "type_vocab": c.type_vocab_size,
              "embedding_dim": c.embedding_size if c.embedding_size != c.hidden_size else None, **_dropouts(c),
              "position": call("learned"), "embedding_norm": call("layernorm", eps=eps)}
    if head == "mlm":  # its own decoder when untied: generator_lm_head, with the one output bias
        fields["tie_embeddings"] = bool(c.tie_word_embeddings)
        fields["head"] = call("mlm", act="gelu", norm=call("layernorm", eps=eps))
    elif head == "rtd":
        fields["head"] = call("rtd", act=_act(c.hidden_act))
    elif head == "classifier":
        dropout = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        fields["head"] = call("classifier", labels=c.num_labels, dropout=dropout or None, dense="gelu")
    block = {"norm": call("layernorm", eps=eps, placement="post"),
             "attention": call("mha", heads=c.num_attention_heads, bias=True, out_bias=True),
             "ffn": call("mlp", hidden=c.intermediate_size, act=_act(c.hidden_act), bias=True)}
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.num_hidden_layers}"},
                      "Imported from a Hugging Face electra config.")


def _modernbert(c, name: str) -> str:
    """ModernBERT: pre-norm layers (norm biases per norm_bias), the first layer's attention reading
    the normed embeddings directly, bidirectional attention alternating global and local (a token
    sees the tokens within local_attention // 2 of it on either side: window = that + 1), RoPE with
    a base per layer type, a GeGLU FFN (Wi's first half is the activated one), a final norm, and
    the head of the class: dense, activation and norm before the tied decoder or the classifier."""
    eps, head = c.norm_eps, bert_head(c)
    norm = call("layernorm", eps=eps, bias=bool(c.norm_bias))
    bias = bool(c.attention_bias) or None
    ffn = call("geglu", hidden=c.intermediate_size, act=_act(c.hidden_activation), bias=bool(c.mlp_bias) or None)
    kinds, blocks = [], {}
    for i, t in enumerate(c.layer_types):
        kind = "sliding" if t == "sliding_attention" else "full"
        # a window past the context sees every token, as one of the context's length does
        window = min(c.local_attention // 2 + 1, c.max_position_embeddings) if kind == "sliding" else None
        block = {"norm": norm, "position": _rope(c, params=c.rope_parameters[t]),
                 "attention": call("mha", heads=c.num_attention_heads, bias=bias, out_bias=bias, window=window)
                 if window else call("mha", heads=c.num_attention_heads, bias=bias, out_bias=bias), "ffn": ffn}
        if i == 0:  # its attn_norm is the identity
            kind, block = "first", {"mixer_norm": False, **block}
        kinds.append(kind)
        blocks.setdefault(kind, block)
    fields = {"family": "encoder", "vocab": c.vocab_size, "d_model": c.hidden_size,
              "context": c.max_position_embeddings, "dtype": hf_config.spec_dtype(c.dtype), **_dropouts(c),
              "embedding_norm": norm, "final_norm": norm}
    head_norm = {"act": _act(c.classifier_activation), "norm": norm, "dense_bias": bool(c.classifier_bias) or False}
    if head == "mlm":
        fields["tie_embeddings"] = bool(c.tie_word_embeddings) or None
        fields["head"] = call("mlm", bias=bool(c.decoder_bias), **head_norm)
    elif head == "classifier":
        fields["head"] = call("classifier", labels=c.num_labels, dropout=c.classifier_dropout or None,
                              pooling=c.classifier_pooling, **head_norm)
    rest = _layout(kinds[1:]) if len(kinds) > 1 else None
    return write_spec(name, fields, blocks, {"layers": "first" + (f" + {rest}" if rest else "")},
                      "Imported from a Hugging Face modernbert config.")


def deberta_terms(c) -> list[str]:
    """The relative terms of a deberta-v2 config (pos_att_type, "p2c|c2p" or a list), in archlang's order."""
    value = c.pos_att_type or []
    terms = {t.strip() for t in value.lower().split("|")} if isinstance(value, str) else set(value)
    return [t for t in ("c2p", "p2c") if t in terms]


def _deberta_v2(c, name: str) -> str:
    """DeBERTa-v2/v3: BERT's post-norm layer with disentangled attention over one table of relative
    embeddings, absolute positions added to the embeddings only where position_biased_input."""
    conv = getattr(c, "conv_kernel_size", 0) or 0
    if conv > 0:
        raise ArchError(f"deberta-v2 conv_kernel_size = {conv}: the convolution beside the first layer is not mapped",
                        kind="interop", hint="import a checkpoint without it (DeBERTaV3 has none)")
    if getattr(c, "embedding_size", c.hidden_size) != c.hidden_size:
        raise ArchError(f"deberta-v2 embedding_size = {c.embedding_size}: narrower embeddings projected before their "
                        "norm are not mapped", kind="interop", hint="set embedding_size = hidden_size")
    eps, head, terms = c.layer_norm_eps, bert_head(c), deberta_terms(c)
    fields = {"family": "encoder", "vocab": c.vocab_size, "d_model": c.hidden_size,
              "context": c.max_position_embeddings, "dtype": hf_config.spec_dtype(c.dtype),
              "type_vocab": c.type_vocab_size or None, "pooler": head == "classifier" or None,
              "pooler_act": _act(c.pooler_hidden_act) if head == "classifier" and c.pooler_hidden_act != "tanh" else None,
              **_dropouts(c), "position": call("learned") if c.position_biased_input else None,
              "embedding_norm": call("layernorm", eps=eps)}
    _encoder_head(c, fields, head, eps, getattr(c, "cls_dropout", None))
    heads = c.num_attention_heads
    if c.relative_attention:
        if not terms:
            raise ArchError("deberta-v2 relative_attention = true with pos_att_type empty: a table of relative "
                            "embeddings that no attention term reads is not mapped", kind="interop",
                            hint='set pos_att_type = "p2c|c2p" or relative_attention = false')
        buckets = getattr(c, "position_buckets", -1)
        norms = {k.strip() for k in str(getattr(c, "norm_rel_ebd", "none")).lower().split("|")}
        attention = call("disentangled", heads=heads, bias=True, out_bias=True,
                         terms=Raw(f"[{', '.join(terms)}]") if len(terms) < 2 else None,
                         buckets=buckets if buckets > 0 else None,
                         max_relative=c.max_relative_positions if c.max_relative_positions >= 1 else None,
                         share_keys=bool(getattr(c, "share_att_key", False)) or None,
                         rel_norm=call("layernorm", eps=eps) if "layer_norm" in norms else None)
    else:  # DisentangledSelfAttention without relative terms still divides by sqrt(d · (1 + #pos_att_type))
        if "layer_norm" in {k.strip() for k in str(getattr(c, "norm_rel_ebd", "none")).lower().split("|")}:
            raise ArchError("deberta-v2 norm_rel_ebd = layer_norm with relative_attention = false: a norm of relative "
                            "embeddings the model does not have is not mapped", kind="interop",
                            hint="set norm_rel_ebd = none, or relative_attention = true")
        hd = c.hidden_size // heads
        attention = call("mha", heads=heads, bias=True, out_bias=True,
                         scale=(hd * (1 + len(terms))) ** -0.5 if terms else None)
    block = {"norm": call("layernorm", eps=eps, placement="post"), "attention": attention,
             "ffn": call("mlp", hidden=c.intermediate_size, act=_act(c.hidden_act), bias=True)}
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.num_hidden_layers}"},
                      "Imported from a Hugging Face deberta-v2 config.")


def _jamba(c, name: str) -> str:
    eps = c.rms_norm_eps
    mamba = call("mamba", d_state=c.mamba_d_state, d_conv=c.mamba_d_conv, expand=c.mamba_expand,
                 dt_rank=c.mamba_dt_rank, conv_bias=bool(c.mamba_conv_bias), bias=bool(c.mamba_proj_bias) or None,
                 inner_norms=True)
    dense = call("swiglu", hidden=c.intermediate_size)
    moe = call("moe", experts=c.num_experts, top_k=c.num_experts_per_tok, expert=call("swiglu", hidden=c.intermediate_size),
               normalize_top_k=False)
    blocks, kinds = {}, []
    for i in range(c.num_hidden_layers):
        attn = i % c.attn_layer_period == c.attn_layer_offset
        sparse = c.num_experts > 1 and i % c.expert_layer_period == c.expert_layer_offset
        kind = ("attn" if attn else "mamba") + ("_moe" if sparse else "")
        kinds.append(kind)
        if kind not in blocks:
            mixer = {"attention": _attention(c)} if attn else {"ssm": mamba}
            blocks[kind] = {"norm": call("rmsnorm", eps=eps), **mixer, "ffn": moe if sparse else dense}
    fields = _decoder_fields(c, final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face jamba config.")


def _qwen3_next(c, name: str) -> str:
    """Qwen3-Next: Gated DeltaNet layers (layer type linear_attention) between gated full-attention
    layers (an output gate per head, QK-norm, partial RoPE), zero-centred RMSNorms (weights applied
    as 1 + w: unit_offset), and Qwen2-MoE's experts with a gated shared expert; mlp_only_layers and
    decoder_sparse_step pick the dense layers."""
    eps = c.rms_norm_eps
    norm = call("rmsnorm", eps=eps, unit_offset=True)
    bias = bool(c.attention_bias) or None
    mixers = {"full_attention": {"attention": _attention(c, bias=bias, out_bias=bias, output_gate=True,
                                                         qk_norm=call("rmsnorm", eps=eps, unit_offset=True))},
              "linear_attention": {"ssm": call("gated_deltanet", key_heads=c.linear_num_key_heads,
                                               value_heads=c.linear_num_value_heads, key_dim=c.linear_key_head_dim,
                                               value_dim=c.linear_value_head_dim, conv_size=c.linear_conv_kernel_dim,
                                               norm_eps=eps)}}
    moe = call("moe", experts=c.num_experts, top_k=c.num_experts_per_tok,
               expert=call("swiglu", hidden=c.moe_intermediate_size),
               shared=call("swiglu", hidden=c.shared_expert_intermediate_size), shared_gate=True,
               normalize_top_k=bool(c.norm_topk_prob))
    dense = call("swiglu", hidden=c.intermediate_size)
    blocks, kinds = {}, []
    for i, t in enumerate(c.layer_types):
        sparse = i not in (c.mlp_only_layers or []) and c.num_experts > 0 and (i + 1) % c.decoder_sparse_step == 0
        kind = t + ("" if sparse else "_dense")
        kinds.append(kind)
        blocks.setdefault(kind, {"norm": norm, **mixers[t], "ffn": moe if sparse else dense})
    fields = _decoder_fields(c, position=_rope(c), final_norm=norm)
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face qwen3_next config.")


def _kimi_linear(c, name: str) -> str:
    """Kimi Linear: Kimi Delta Attention layers (layer type linear_attention) and latent-attention
    layers without RoPE (full_attention: MLA with NoPE, the rope_head_dim part of the key still
    shared), DeepSeek-V3's sigmoid-routed experts with a correction bias and shared experts, dense
    layers by mlp_layer_types. transformers ties no weights for this family, whatever
    tie_word_embeddings says."""
    eps = c.rms_norm_eps
    mixers = {"linear_attention": {"ssm": call("kda", heads=c.linear_num_heads, head_dim=c.linear_head_dim,
                                               conv_size=c.linear_conv_kernel_dim, norm_eps=eps)},
              "full_attention": {"attention": call("mla", heads=c.num_attention_heads, kv_lora_rank=c.kv_lora_rank,
                                                   q_lora_rank=c.q_lora_rank, rope_head_dim=c.qk_rope_head_dim,
                                                   nope_head_dim=c.qk_nope_head_dim, v_head_dim=c.v_head_dim)}}
    grouped = c.n_group > 1
    moe = call("moe", experts=c.num_local_experts, top_k=c.num_experts_per_tok,
               shared_experts=c.n_shared_experts or None, expert=call("swiglu", hidden=c.moe_intermediate_size),
               normalize_top_k=bool(c.norm_topk_prob),
               routed_scale=float(c.routed_scaling_factor) if c.routed_scaling_factor != 1 else None,
               router="sigmoid", correction_bias=True, groups=c.n_group if grouped else None,
               topk_groups=c.topk_group if grouped else None)
    dense = call("swiglu", hidden=c.intermediate_size)
    names = {"linear_attention": "linear", "full_attention": "attn"}
    blocks, kinds = {}, []
    for layer_type, mlp_type in zip(c.layer_types, c.mlp_layer_types):
        kind = names[layer_type] + ("" if mlp_type == "sparse" else "_dense")
        kinds.append(kind)
        blocks.setdefault(kind, {"norm": call("rmsnorm", eps=eps), **mixers[layer_type],
                                 "ffn": moe if mlp_type == "sparse" else dense})
    fields = _decoder_fields(c, tie_embeddings=None, final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face kimi_linear config.")


# Mamba-2 has no context limit and its config no max_position_embeddings; the spec needs one.
# Export writes the spec's context there (transformers keeps the key and reads nothing from it).
MAMBA2_CONTEXT = 1 << 20


def _mamba2(c, name: str) -> str:
    eps = c.layer_norm_epsilon
    ssm = call("mamba2", d_state=c.state_size, d_conv=c.conv_kernel, expand=c.expand, heads=c.num_heads,
               head_dim=c.head_dim, groups=c.n_groups, chunk=c.chunk_size, conv_bias=bool(c.use_conv_bias),
               bias=bool(c.use_bias) or None, norm_eps=eps, dt_limit=_mamba2_dt_limit(c.time_step_limit))
    return _ssm_only(c, name, ssm)


def _ssm_only(c, name: str, ssm) -> str:
    """A stack of one mixer behind an RMSNorm (Mamba's backbone layout); like Mamba-2, no context
    limit of its own."""
    eps = c.layer_norm_epsilon
    fields = {"family": "decoder", "vocab": c.vocab_size, "d_model": c.hidden_size,
              "context": getattr(c, "max_position_embeddings", None) or MAMBA2_CONTEXT,
              "dtype": hf_config.spec_dtype(c.dtype), "tie_embeddings": bool(c.tie_word_embeddings) or None,
              "final_norm": call("rmsnorm", eps=eps)}
    blocks = {"mamba": {"norm": call("rmsnorm", eps=eps), "ssm": ssm}}
    return write_spec(name, fields, blocks, {"layers": f"mamba * {c.num_hidden_layers}"},
                      f"Imported from a Hugging Face {c.model_type} config.")


def _mamba(c, name: str) -> str:
    """Mamba-1 (mamba) and Falcon-Mamba (falcon_mamba: weightless RMSNorms on dt, B and C)."""
    falcon = c.model_type == "falcon_mamba"
    # transformers sizes the mixer by intermediate_size (which replaces expand · hidden_size when written)
    ssm = call("mamba", d_state=c.state_size, d_conv=c.conv_kernel, expand=c.intermediate_size // c.hidden_size,
               dt_rank=int(c.time_step_rank),
               conv_bias=bool(c.use_conv_bias), bias=bool(c.use_bias) or None,
               inner_norms=Raw("weightless") if falcon else None, norm_eps=float(c.mixer_rms_eps) if falcon else None)
    return _ssm_only(c, name, ssm)


def rwkv_rescale_groups(c) -> tuple[list[int], int]:
    """Hugging Face's rwkv at inference (eval mode) halves the hidden state after every
    rescale_every-th layer and divides layer i's output weights by 2^(i // rescale_every): layer i
    sees the stream scaled by 2^-k, k = i // rescale_every, and adds its branch at the same scale.
    A LayerNorm of x / 2^k is the LayerNorm of x with eps · 4^k (exactly in floating point, as
    scaling by a power of two commutes with rounding), so the spec keeps the checkpoint's weights
    and gives each group of layers the eps that group's norms effectively use. Returns k per layer
    and the final norm's k (the halvings before ln_out); all 0 when rescale_every <= 0."""
    every, layers = c.rescale_every, c.num_hidden_layers
    if every <= 0:
        return [0] * layers, 0
    return [i // every for i in range(layers)], layers // every


def _rwkv(c, name: str) -> str:
    """RWKV-4: a LayerNorm on the embeddings (layer 0's pre_ln), then per layer ln1 → time mixing and
    ln2 → channel mixing, ln_out (whose eps is LayerNorm's default 1e-5 whatever layer_norm_epsilon
    says), and the head. rescale_every: see rwkv_rescale_groups."""
    eps = c.layer_norm_epsilon
    groups, final_group = rwkv_rescale_groups(c)
    dim = c.attention_hidden_size if c.attention_hidden_size != c.hidden_size else None
    blocks, kinds = {}, []
    for k in groups:
        kind = "layer" if k == 0 else f"layer_rescaled_{k}"
        kinds.append(kind)
        blocks.setdefault(kind, {"norm": call("layernorm", eps=eps * 4 ** k), "ssm": call("rwkv4", dim=dim),
                                 "ffn": call("rwkv_channel_mix", hidden=c.intermediate_size)})
    fields = {"family": "decoder", "vocab": c.vocab_size, "d_model": c.hidden_size, "context": c.context_length,
              "dtype": hf_config.spec_dtype(c.dtype), "tie_embeddings": bool(c.tie_word_embeddings) or None,
              "embedding_norm": call("layernorm", eps=eps), "final_norm": call("layernorm", eps=1e-5 * 4 ** final_group)}
    comment = "Imported from a Hugging Face rwkv config."
    if final_group:
        comment += (f" rescale_every = {c.rescale_every}: transformers halves the hidden state after every "
                    f"{c.rescale_every} layers at inference, which the norms see as eps · 4^k after k halvings.")
    runs = [f"{kind} * {kinds.count(kind)}" if kinds.count(kind) > 1 else kind for kind in dict.fromkeys(kinds)]
    return write_spec(name, fields, blocks, {"layers": " + ".join(runs)}, comment)


def _nemotron_h(c, name: str) -> str:
    """Nemotron-H: blocks of one sublayer each behind its own RMSNorm, a Mamba-2 mixer (d_inner =
    mamba_num_heads · mamba_head_dim, dt clamped below at time_step_min only), attention without
    positions or biases, a non-gated MLP (relu² by default), or a mixture of such MLPs (Nemotron 3);
    layers_block_type says which."""
    eps = c.layer_norm_epsilon
    norm = call("rmsnorm", eps=eps)
    low = float(c.time_step_min)
    # transformers' mixer clamps dt to [time_step_min, inf) and never reads time_step_limit or expand
    ssm = call("mamba2", d_state=c.ssm_state_size, d_conv=c.conv_kernel, heads=c.mamba_num_heads,
               head_dim=c.mamba_head_dim, groups=c.n_groups, chunk=c.chunk_size, conv_bias=bool(c.use_conv_bias),
               bias=bool(c.use_bias) or None, norm_eps=eps, dt_limit=Raw(f"[{_value(low)}, none]") if low else None)
    if "moe" in c.layers_block_type:  # DeepSeek-V3's routing over relu² experts, beside a relu² shared MLP
        act, grouped = _act(c.mlp_hidden_act), c.n_group > 1
        moe = call("moe", experts=c.n_routed_experts, top_k=c.num_experts_per_tok,
                   expert=call("mlp", hidden=c.moe_intermediate_size, act=act, bias=False),
                   shared=call("mlp", hidden=c.moe_shared_expert_intermediate_size, act=act, bias=bool(c.mlp_bias)),
                   normalize_top_k=bool(c.norm_topk_prob),
                   routed_scale=float(c.routed_scaling_factor) if c.routed_scaling_factor != 1 else None,
                   router="sigmoid", correction_bias=True, groups=c.n_group if grouped else None,
                   topk_groups=c.topk_group if grouped else None)
    sublayers = {
        "linear_attention": ("mamba", {"ssm": ssm}),
        "full_attention": ("attention", {"attention": _attention(c, head_dim=c.head_dim)}),
        "mlp": ("mlp", {"ffn": call("mlp", hidden=c.intermediate_size, act=_act(c.mlp_hidden_act),
                                    bias=bool(c.mlp_bias))}),
        "moe": ("moe", {"ffn": moe if "moe" in c.layers_block_type else None}),
    }
    blocks, kinds = {}, []
    for t in c.layers_block_type:
        kind, sublayer = sublayers[t]
        kinds.append(kind)
        blocks.setdefault(kind, {"norm": norm, **sublayer})
    # transformers' NemotronHForCausalLM ties nothing (_tied_weights_keys is empty), whatever the config says
    fields = _decoder_fields(c, final_norm=norm, tie_embeddings=None)
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face nemotron_h config.")


def _mamba2_dt_limit(limit) -> Raw | None:
    """A config's time_step_limit as mamba2's dt_limit: (0, inf) clamps nothing, (lo, inf) below only."""
    low, high = (float(x) for x in limit)
    if high == float("inf"):
        return None if low == 0 else Raw(f"[{_value(low)}, none]")
    return Raw(_numbers([low, high]))


def _bamba(c, name: str) -> str:
    """Bamba (and Granite 4.0's GraniteMoeHybrid): Mamba-2 layers and attention layers, each
    followed by its own FFN; RoPE (partial in Bamba) acts on the attention layers only, so it is
    theirs, not the model's."""
    eps = c.rms_norm_eps
    ssm = call("mamba2", d_state=c.mamba_d_state, d_conv=c.mamba_d_conv, expand=c.mamba_expand,
               heads=c.mamba_n_heads, head_dim=c.mamba_d_head, groups=c.mamba_n_groups, chunk=c.mamba_chunk_size,
               conv_bias=bool(c.mamba_conv_bias), bias=bool(c.mamba_proj_bias) or None, norm_eps=eps,
               dt_limit=_mamba2_dt_limit(c.time_step_limit))
    bias = bool(c.attention_bias) or None
    granite = c.model_type == "granitemoehybrid"
    scale = float(c.attention_multiplier) if granite else None
    position = _rope(c)
    if granite:  # Granite's rotary embedding turns whole heads: it never reads partial_rotary_factor
        params = {k: v for k, v in (c.rope_parameters or {}).items() if k != "partial_rotary_factor"}
        position = _rope(c, params=params) if c.position_embedding_type == "rope" else None
    attention = {"attention": _attention(c, bias=bias, out_bias=bias, scale=scale), "position": position}
    if not granite:
        ffn = call("swiglu", hidden=c.intermediate_size, bias=bool(c.mlp_bias) or None)
    elif c.num_local_experts:  # routed experts beside an always-on shared MLP, added without a gate
        ffn = call("moe", experts=c.num_local_experts, top_k=c.num_experts_per_tok,
                   expert=call("swiglu", hidden=c.intermediate_size),
                   shared=call("swiglu", hidden=c.shared_intermediate_size))
    else:  # no experts: the shared MLP alone
        ffn = call("swiglu", hidden=c.shared_intermediate_size)
    blocks, kinds = {}, []
    for t in c.layers_block_type:
        kind = "attention" if t == "full_attention" else "mamba"
        kinds.append(kind)
        blocks.setdefault(kind, {"norm": call("rmsnorm", eps=eps),
                                 **({"ssm": ssm} if kind == "mamba" else attention), "ffn": ffn})
    scales = {}
    if granite:  # Granite's multipliers, as _granite writes them
        def factor(v: float) -> float | None:
            return None if v == 1 else float(v)

        scales = dict(embedding_scale=factor(c.embedding_multiplier), residual_scale=factor(c.residual_multiplier),
                      logit_scale=factor(1 / c.logits_scaling))
    fields = _decoder_fields(c, **scales, final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, f"Imported from a Hugging Face {c.model_type} config.")


def _falcon_h1(c, name: str) -> str:
    """Falcon-H1: every layer runs its attention and its Mamba-2 mixer side by side on the one
    normed input (mixers = parallel(...), with the attention_in/out and ssm_in/out multipliers),
    then a SwiGLU; the other µP multipliers are the keys' (key_multiplier), the in-projection's
    five parts' (ssm_multipliers: z, x, B, C, dt), the SwiGLU's gate and down (mlp_multipliers),
    the embeddings' (embedding_scale) and the logits' (lm_head_multiplier, as logit_scale: the
    head has no bias, so scaling its input scales the logits). The mixer is mamba_n_heads ·
    mamba_d_head wide (transformers' mamba_d_ssm, or mamba_expand · d_model without one), its
    gated RMSNorm optional (mamba_rms_norm)."""
    eps = c.rms_norm_eps

    def factor(v: float) -> float | None:
        return None if v == 1 else float(v)

    parts = [float(v) for v in c.ssm_multipliers]
    ssm = call("mamba2", d_state=c.mamba_d_state, d_conv=c.mamba_d_conv, heads=c.mamba_n_heads,
               head_dim=c.mamba_d_head, groups=c.mamba_n_groups, chunk=c.mamba_chunk_size,
               conv_bias=bool(c.mamba_conv_bias), bias=bool(c.mamba_proj_bias) or None, norm_eps=eps,
               gated_norm=None if c.mamba_rms_norm else False,
               norm_before_gate=True if c.mamba_rms_norm and c.mamba_norm_before_gate else None,
               dt_limit=_mamba2_dt_limit(c.time_step_limit),
               in_proj_multipliers=Raw(_numbers(parts)) if any(v != 1 for v in parts) else None)
    bias = bool(c.attention_bias) or None
    gate, down = c.mlp_multipliers
    block = {"norm": call("rmsnorm", eps=eps),
             "mixers": call("parallel", attention_in=factor(c.attention_in_multiplier),
                            attention_out=factor(c.attention_out_multiplier), ssm_in=factor(c.ssm_in_multiplier),
                            ssm_out=factor(c.ssm_out_multiplier)),
             "attention": _attention(c, bias=bias, out_bias=bias, key_multiplier=factor(c.key_multiplier)),
             "ssm": ssm,
             "ffn": call("swiglu", hidden=c.intermediate_size, bias=bool(c.mlp_bias) or None,
                         gate_multiplier=factor(gate), down_multiplier=factor(down))}
    fields = _decoder_fields(c, embedding_scale=factor(c.embedding_multiplier),
                             logit_scale=factor(c.lm_head_multiplier), position=_rope(c),
                             final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.num_hidden_layers}"},
                      "Imported from a Hugging Face falcon_h1 config.")


def lfm2_ffn_width(c) -> int:
    """Lfm2MLP's width, computed as transformers does: with block_auto_adjust_ff_dim, two thirds of
    intermediate_size (floored), then, with a block_ffn_dim_multiplier, times it (floored) and
    rounded up to a multiple of block_multiple_of; without it, intermediate_size itself."""
    width = c.intermediate_size
    if c.block_auto_adjust_ff_dim:
        width = int(2 * width / 3)
        if c.block_ffn_dim_multiplier is not None:
            width = int(c.block_ffn_dim_multiplier * width)
            width = c.block_multiple_of * ((width + c.block_multiple_of - 1) // c.block_multiple_of)
    return width


def _lfm2(c, name: str) -> str:
    """LFM2: gated short-convolution layers and GQA layers with per-head QK-norm (layer_types),
    each followed by a SwiGLU FFN of the width transformers derives; RMSNorms throughout (the
    one HF calls embedding_norm is the final norm, after the last layer)."""
    eps = c.norm_eps
    norm = call("rmsnorm", eps=eps)
    ffn = call("swiglu", hidden=lfm2_ffn_width(c))
    bias = bool(c.conv_bias) or None  # LFM2's one flag biases in_proj, the conv and out_proj
    mixers = {"conv": {"ssm": call("short_conv", kernel=c.conv_L_cache, bias=bias, conv_bias=bias)},
              "attn": {"attention": _attention(c, qk_norm=call("rmsnorm", eps=eps))}}
    kinds = ["conv" if t == "conv" else "attn" for t in c.layer_types]
    blocks = {k: {"norm": norm, **mixers[k], "ffn": ffn} for k in dict.fromkeys(kinds)}
    # RoPE acts in the attention layers only; a model of conv layers alone has no position
    fields = _decoder_fields(c, position=_rope(c) if "attn" in kinds else None, final_norm=norm)
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face lfm2 config.")


def xlstm_widths(c) -> tuple[int, int, int]:
    """(key_dim, value_dim, FFN width) as transformers' xLSTMLayer and xLSTMFeedForward compute
    them: q/k width int(hidden_size · qk_dim_factor) and v width int(hidden_size · v_dim_factor),
    split over num_heads; the FFN hidden_size · ffn_proj_factor rounded up to a multiple of
    ffn_round_up_to_multiple_of (in float, as transformers rounds it)."""
    qk, v = int(c.hidden_size * c.qk_dim_factor), int(c.hidden_size * c.v_dim_factor)
    step = c.ffn_round_up_to_multiple_of
    ffn = int(((c.hidden_size * c.ffn_proj_factor + step - 1) // step) * step)
    return qk // c.num_heads, v // c.num_heads, ffn


def _xlstm(c, name: str) -> str:
    """xLSTM (xLSTM-7B): pre-norm blocks of an mLSTM layer and a SwiGLU FFN, RMSNorms of norm_eps
    throughout (the out_norm is the final norm), logits soft-capped by output_logit_soft_cap. No
    context limit of its own, as Mamba (export writes the spec's there). weight_mode only lays the
    weights out (interop/hf_weights.py)."""
    eps = c.norm_eps
    key_dim, value_dim, hidden = xlstm_widths(c)
    cap = Raw("none") if c.gate_soft_cap is None else float(c.gate_soft_cap)
    ssm = call("mlstm", heads=c.num_heads, key_dim=key_dim, value_dim=value_dim, gate_softcap=cap,
               norm_eps=eps, denominator_eps=float(c.eps), chunk=c.chunk_size)
    fields = {"family": "decoder", "vocab": c.vocab_size, "d_model": c.hidden_size,
              "context": getattr(c, "max_position_embeddings", None) or MAMBA2_CONTEXT,
              "dtype": hf_config.spec_dtype(c.dtype),
              "logit_softcap": float(c.output_logit_soft_cap) if c.output_logit_soft_cap is not None else None,
              "final_norm": call("rmsnorm", eps=eps)}
    blocks = {"mlstm": {"norm": call("rmsnorm", eps=eps), "ssm": ssm, "ffn": call("swiglu", hidden=hidden)}}
    return write_spec(name, fields, blocks, {"layers": f"mlstm * {c.num_hidden_layers}"},
                      "Imported from a Hugging Face xlstm config.")


def _recurrent_gemma(c, name: str) -> str:
    """RecurrentGemma (Griffin): block_types cycled over the layers, recurrent blocks (rglru, as
    wide as lru_width, its gates in num_attention_heads blocks) and local MQA/GQA attention
    (a window of attention_window_size, partial RoPE, a biased o_proj); each followed by a biased
    GeGLU of intermediate_size / 2. RMSNorms with a unit offset, tied embeddings scaled by
    sqrt(hidden_size) as a bfloat16 number (transformers keeps the normaliser in bfloat16 at any
    dtype), soft-capped logits. No context limit of its own."""
    eps = c.rms_norm_eps
    norm = call("rmsnorm", eps=eps, unit_offset=True)
    act = _act(c.hidden_activation)
    ffn = call("geglu", hidden=c.intermediate_size // 2, act=act, bias=True)
    width = c.lru_width if c.lru_width != c.hidden_size else None
    mixers = {"recurrent": {"ssm": call("rglru", heads=c.num_attention_heads, width=width,
                                        conv_size=c.conv1d_width, act=act if act != "gelu_tanh" else None)},
              "attention": {"attention": _attention(c, window=c.attention_window_size, bias=bool(c.attention_bias),
                                                    out_bias=True)}}
    kinds = [(list(c.block_types) * c.num_hidden_layers)[i] for i in range(c.num_hidden_layers)]
    blocks = {k: {"norm": norm, **mixers[k], "ffn": ffn} for k in dict.fromkeys(kinds)}
    scale = torch.tensor(float(c.hidden_size) ** 0.5, dtype=torch.bfloat16).item()
    # transformers' config has no max_position_embeddings: export writes the spec's context there
    fields = {"family": "decoder", "vocab": c.vocab_size, "d_model": c.hidden_size,
              "context": getattr(c, "max_position_embeddings", None) or MAMBA2_CONTEXT,
              "dtype": hf_config.spec_dtype(c.dtype), "tie_embeddings": bool(c.tie_word_embeddings) or None,
              **_dropouts(c), "embedding_scale": scale, "logit_softcap": c.logits_soft_cap,
              "position": _rope(c) if "attention" in kinds else None, "final_norm": norm}
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)},
                      "Imported from a Hugging Face recurrent_gemma config.")


def _minimax(c, name: str) -> str:
    """MiniMax: lightning-attention and GQA layers (layer_types), each followed by a Mixtral-style
    MoE; the residual stream carries each sublayer's normalised input (normed_residual), the two
    terms of every residual add weighed by the config's alpha and beta factors."""
    eps = c.rms_norm_eps
    if (c.rope_parameters or {}).get("partial_rotary_factor") not in (None, 1, 1.0):
        _unsupported("minimax's partial_rotary_factor (transformers' MiniMax rotates whole heads by default RoPE)")
    norm = call("rmsnorm", eps=eps, placement=Raw("normed_residual"))
    moe = call("moe", experts=c.num_local_experts, top_k=c.num_experts_per_tok,
               expert=call("swiglu", hidden=c.intermediate_size))
    head_dim = getattr(c, "head_dim", None)
    key_dim = head_dim if head_dim and head_dim != c.hidden_size // c.num_attention_heads else None

    def weights(alpha, beta):
        return None if (alpha, beta) == (1, 1) else Raw(_numbers([float(alpha), float(beta)]))

    mixers = {"linear": {"ssm": call("lightning", heads=c.num_attention_heads, key_dim=key_dim,
                                     act=_act(c.hidden_act) if _act(c.hidden_act) != "silu" else None,
                                     chunk=c.block_size),
                         "mixer_residual": weights(c.linear_attn_alpha_factor, c.linear_attn_beta_factor)},
              "full": {"attention": _attention(c, window=c.sliding_window, head_dim=head_dim),
                       "mixer_residual": weights(c.full_attn_alpha_factor, c.full_attn_beta_factor)}}
    kinds = ["linear" if t == "linear_attention" else "full" for t in c.layer_types]
    ffn_residual = weights(c.mlp_alpha_factor, c.mlp_beta_factor)
    blocks = {k: {"norm": norm, **{f: v for f, v in mixers[k].items() if f != "mixer_residual"}, "ffn": moe,
                  "mixer_residual": mixers[k]["mixer_residual"], "ffn_residual": ffn_residual}
              for k in dict.fromkeys(kinds)}
    # RoPE acts in the attention layers only; a model of lightning layers alone has no position
    fields = _decoder_fields(c, position=_rope(c) if "full" in kinds else None, final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face minimax config.")


def _deepseek_routing(c) -> dict[str, Any]:
    """DeepSeek-V3 scores experts with a sigmoid, chooses them with the correction bias added and
    within the best topk_group of n_group groups (each scored by its top-2 sum); DeepSeek-V2
    uses a softmax, and groups (scored by their best expert) only with group_limited_greedy."""
    if c.model_type in ("deepseek_v3", "deepseek_v32"):
        grouped = c.n_group > 1
        return {"router": "sigmoid", "correction_bias": True, "groups": c.n_group if grouped else None,
                "topk_groups": c.topk_group if grouped else None}
    if c.topk_method == "group_limited_greedy":
        return {"groups": c.n_group, "topk_groups": c.topk_group, "group_score": "max"}
    if c.topk_method != "greedy":
        _unsupported(f"DeepSeek routing {c.topk_method!r}")
    return {}


def _deepseek_v2(c, name: str) -> str:
    eps = c.rms_norm_eps
    if c.attention_bias:
        _unsupported("DeepSeek attention_bias")
    mla = call("mla", heads=c.num_attention_heads, kv_lora_rank=c.kv_lora_rank, q_lora_rank=c.q_lora_rank,
               rope_head_dim=c.qk_rope_head_dim, nope_head_dim=c.qk_nope_head_dim, v_head_dim=c.v_head_dim)
    moe = call("moe", experts=c.n_routed_experts, top_k=c.num_experts_per_tok, shared_experts=c.n_shared_experts or None,
               # transformers' DeepSeek-V2 never renormalises the top-k weights, whatever norm_topk_prob says
               expert=call("swiglu", hidden=c.moe_intermediate_size),
               normalize_top_k=bool(c.norm_topk_prob) if c.model_type == "deepseek_v3" else False,
               routed_scale=float(c.routed_scaling_factor) if c.routed_scaling_factor != 1 else None,
               **_deepseek_routing(c))
    kinds = ["dense" if i < c.first_k_dense_replace else "sparse" for i in range(c.num_hidden_layers)]
    blocks = _dense_and_moe_blocks(kinds, "dense", "sparse", eps, mla, c.intermediate_size, moe)
    fields = _decoder_fields(c, position=_rope(c, rotary_dim=c.qk_rope_head_dim), final_norm=call("rmsnorm", eps=eps))
    layers = " + ".join(_layout([k]) if n == 1 else f"{k} * {n}" for k, n in _runs(kinds))
    return write_spec(name, fields, blocks, {"layers": layers}, f"Imported from a Hugging Face {c.model_type} config.")


def _deepseek_v32(c, name: str) -> str:
    """DeepSeek-V3.2: DeepSeek-V3 whose latent attention attends only to the index_topk keys its
    lightning indexer scores best (DeepSeek Sparse Attention); dense and MoE layers by mlp_layer_types."""
    eps = c.rms_norm_eps
    indexer = call("indexer", heads=c.index_n_heads, head_dim=c.index_head_dim, top_k=c.index_topk)
    mla = call("mla", heads=c.num_attention_heads, kv_lora_rank=c.kv_lora_rank, q_lora_rank=c.q_lora_rank,
               rope_head_dim=c.qk_rope_head_dim, nope_head_dim=c.qk_nope_head_dim, v_head_dim=c.v_head_dim,
               indexer=indexer)
    moe = call("moe", experts=c.n_routed_experts, top_k=c.num_experts_per_tok, shared_experts=c.n_shared_experts or None,
               expert=call("swiglu", hidden=c.moe_intermediate_size), normalize_top_k=bool(c.norm_topk_prob),
               routed_scale=float(c.routed_scaling_factor) if c.routed_scaling_factor != 1 else None,
               **_deepseek_routing(c))
    kinds = list(c.mlp_layer_types)  # "dense" | "sparse", one per layer
    blocks = _dense_and_moe_blocks(kinds, "dense", "sparse", eps, mla, c.intermediate_size, moe)
    fields = _decoder_fields(c, position=_rope(c, rotary_dim=c.qk_rope_head_dim), final_norm=call("rmsnorm", eps=eps))
    layers = " + ".join(_layout([k]) if n == 1 else f"{k} * {n}" for k, n in _runs(kinds))
    return write_spec(name, fields, blocks, {"layers": layers}, "Imported from a Hugging Face deepseek_v32 config.")


def _glm4_moe(c, name: str) -> str:
    """GLM-4.5: GQA with partial RoPE and q/k/v biases, DeepSeek-V3's routing, dense first layers."""
    eps = c.rms_norm_eps
    if c.use_qk_norm:
        _unsupported("GLM-4 MoE use_qk_norm")
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // heads  # Glm4MoeAttention floors, never refuses
    kind = "mha" if kv == heads else "mqa" if kv == 1 else "gqa"
    attention = call(kind, heads=heads, kv_heads=kv if kind == "gqa" else None,
                     head_dim=hd if hd * heads != c.hidden_size else None, bias=bool(c.attention_bias) or None)
    grouped = c.n_group > 1
    moe = call("moe", experts=c.n_routed_experts, top_k=c.num_experts_per_tok, shared_experts=c.n_shared_experts or None,
               expert=call("swiglu", hidden=c.moe_intermediate_size), normalize_top_k=bool(c.norm_topk_prob),
               routed_scale=float(c.routed_scaling_factor) if c.routed_scaling_factor != 1 else None,
               router="sigmoid", correction_bias=True, groups=c.n_group if grouped else None,
               topk_groups=c.topk_group if grouped else None)
    kinds = ["dense" if i < c.first_k_dense_replace else "sparse" for i in range(c.num_hidden_layers)]
    blocks = _dense_and_moe_blocks(kinds, "dense", "sparse", eps, attention, c.intermediate_size, moe)
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("rmsnorm", eps=eps))
    layers = " + ".join(_layout([k]) if n == 1 else f"{k} * {n}" for k, n in _runs(kinds))
    return write_spec(name, fields, blocks, {"layers": layers}, "Imported from a Hugging Face glm4_moe config.")


def _gpt_oss(c, name: str) -> str:
    """gpt-oss: GQA with biases and a learned sink logit per head, sliding and full layers,
    YaRN without truncation, and clamped-SwiGLU experts with biases behind a biased router."""
    eps = c.rms_norm_eps
    moe = call("moe", experts=c.num_local_experts, top_k=c.num_experts_per_tok,
               expert=call("clamped_swiglu", hidden=c.intermediate_size, limit=float(c.swiglu_limit),
                           alpha=float(c.swiglu_alpha), bias=True), router_bias=True)
    blocks, kinds = {}, []
    for t in c.layer_types:
        kind = "sliding" if t == "sliding_attention" else "full"
        kinds.append(kind)
        blocks.setdefault(kind, {"norm": call("rmsnorm", eps=eps), "attention": _attention(
            c, window=c.sliding_window if kind == "sliding" else None, bias=bool(c.attention_bias),
            out_bias=bool(c.attention_bias), head_dim=c.head_dim, sinks=True), "ffn": moe})
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face gpt_oss config.")


def _llama4_text(c, name: str) -> str:
    """Llama 4's text model: RoPE layers with chunked attention and a weightless L2 QK-norm after
    RoPE (interleaved RoPE pairs become halves by a permutation in the weight rules), NoPE layers
    with full attention and temperature tuning, and sigmoid top-k experts that scale their input
    beside a shared expert, interleaved with dense layers (intermediate_size_mlp)."""
    eps = c.rms_norm_eps
    moe = call("moe", experts=c.num_local_experts, top_k=c.num_experts_per_tok,
               expert=call("swiglu", hidden=c.intermediate_size), shared=call("swiglu", hidden=c.intermediate_size),
               router="sigmoid", normalize_top_k=False, scale_input=True)
    dense = call("swiglu", hidden=c.intermediate_size_mlp)
    moe_layers = set(c.moe_layers)
    blocks, kinds = {}, []
    for i, (t, rope) in enumerate(zip(c.layer_types, c.no_rope_layers)):
        chunked = t == "chunked_attention"
        kind = ("chunked" if chunked else "full") + ("" if rope else "_nope") + ("" if i in moe_layers else "_dense")
        kinds.append(kind)
        if kind in blocks:
            continue
        tuned = bool(c.attn_temperature_tuning) and not rope
        attention = _attention(c, bias=bool(c.attention_bias), out_bias=bool(c.attention_bias), head_dim=c.head_dim,
                               qk_norm=call("l2", eps=eps) if c.use_qk_norm and rope else None,
                               chunk=c.attention_chunk_size if chunked else None, temperature_tuning=tuned or None,
                               floor_scale=float(c.floor_scale) if tuned else None,
                               attn_scale=float(c.attn_scale) if tuned else None)
        blocks[kind] = {"norm": call("rmsnorm", eps=eps), "attention": attention,
                        "ffn": moe if i in moe_layers else dense, "position": None if rope else Raw("none")}
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face llama4_text config.")


def _t5(c, name: str) -> str:
    eps = c.layer_norm_epsilon
    attention = call("mha", heads=c.num_heads, head_dim=c.d_kv, scale=1)
    if c.is_gated_act:
        ffn = call("geglu", hidden=c.d_ff, act=_act(c.dense_act_fn))
    else:
        ffn = call("mlp", hidden=c.d_ff, act=_act(c.dense_act_fn), bias=False)
    norm = call("rmsnorm", eps=eps)
    fields = {"family": "encoder_decoder", "vocab": c.vocab_size, "d_model": c.d_model,
              "context": getattr(c, "n_positions", None) or 512, "dtype": hf_config.spec_dtype(c.dtype), "tie_embeddings": True,
              "logit_scale": Raw("d_model ** -0.5") if getattr(c, "scale_decoder_outputs", True) else None,
              "position": call("relative", buckets=c.relative_attention_num_buckets,
                               max_distance=c.relative_attention_max_distance),
              "final_norm": norm}
    blocks = {"encoder": {"norm": norm, "attention": attention, "ffn": ffn},
              "decoder": {"norm": norm, "attention": attention, "cross_attention": attention, "ffn": ffn}}
    layers = {"encoder_layers": f"encoder * {c.num_layers}",
              "decoder_layers": f"decoder * {c.num_decoder_layers or c.num_layers}"}
    return write_spec(name, fields, blocks, layers, "Imported from a Hugging Face t5 config.")


def zamba2_blocks(c) -> int:
    """How many shared transformer blocks a Zamba2 model has: num_mem_blocks, or one per hybrid
    layer where there are fewer. (transformers 5.23 ties the hybrid layers' transformers only
    with tie_word_embeddings; hf_config refuses the untied configs where that would matter.)"""
    return min(c.num_mem_blocks, c.layers_block_type.count("hybrid"))


def zamba2_layout(c) -> list[tuple[str, int | None]]:
    """Zamba2's layers in archlang's order: a mamba layer is ("mamba", None); a hybrid layer is
    its shared transformer, ("shared", b) with b its block (the hybrid layers use the blocks in
    turn), then ("mamba", None), the Mamba-2 layer its output joins."""
    out: list[tuple[str, int | None]] = []
    for t in c.layers_block_type:
        if t == "hybrid":
            out.append(("shared", len([k for k, _ in out if k == "shared"]) % zamba2_blocks(c)))
        out.append(("mamba", None))
    return out


def zamba2_block_name(c, b: int) -> str:
    return "shared" if zamba2_blocks(c) == 1 else f"shared{b}"


def _zamba2(c, name: str) -> str:
    """Zamba2: Mamba-2 layers; before each hybrid layer's Mamba-2 layer, one of the shared
    transformer blocks (in turn; zamba2_blocks says how many) reads concat(x, embeddings) at 2 · hidden_size, with
    heads of 2 · hidden_size / heads scaled by (head_dim / 2)^-1/2, no residual adds, LoRA
    adapters of each use on its gate_up projection (and on q, k, v with
    use_shared_attention_adapter), and a projection of each use's own into the Mamba-2 layer's
    normed input (hybrid = zamba2()). RoPE only with use_mem_rope. The Mamba-2 mixer clamps dt
    below at time_step_min in its chunked prefill; its gated norm's eps is 1e-5 whatever
    rms_norm_eps says; its conv always has a bias."""
    eps = c.rms_norm_eps
    norm = call("rmsnorm", eps=eps)
    bias = bool(c.add_bias_linear) or None
    low = float(c.time_step_min)
    ssm = call("mamba2", d_state=c.mamba_d_state, d_conv=c.mamba_d_conv, expand=c.mamba_expand,
               heads=c.n_mamba_heads, groups=c.mamba_ngroups, chunk=c.chunk_size, bias=bias, norm_eps=1e-5,
               dt_limit=Raw(f"[{_value(low)}, none]") if low else None)
    hd = 2 * c.hidden_size // c.num_attention_heads
    attention = _attention(c, head_dim=hd, scale=(hd / 2) ** -0.5)
    act = _act(c.hidden_act)
    ffn = call("swiglu" if act == "silu" else "geglu", hidden=c.intermediate_size,
               act=act if act not in ("silu", "gelu") else None, bias=bias)
    targets = (["q", "k", "v"] if c.use_shared_attention_adapter else []) + ["gate_up"]
    shared = {"norm": norm, "attention": attention, "ffn": ffn, "shared": True,
              "lora": call("lora", rank=c.adapter_rank, targets=Raw("[" + ", ".join(targets) + "]")),
              "hybrid": call("zamba2")}
    blocks = {"mamba": {"norm": norm, "ssm": ssm}}
    kinds = []
    for kind, b in zamba2_layout(c):
        kinds.append("mamba" if kind == "mamba" else zamba2_block_name(c, b))
        if kind == "shared":
            blocks.setdefault(kinds[-1], shared)
    params = dict(c.rope_parameters or {})
    if params.get("rope_type", "default") == "default":  # zamba2's own default RoPE turns whole heads
        params.pop("partial_rotary_factor", None)
    fields = _decoder_fields(c, position=_rope(c, params=params) if c.use_mem_rope else None, final_norm=norm)
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, "Imported from a Hugging Face zamba2 config.")


def _blt(c, name: str) -> str:
    """The Byte Latent Transformer: one block per stack (entropy model, local encoder, global
    transformer, local decoder), each with its own width, RoPE base and SwiGLU width."""
    enc, glob, dec, ent = c.encoder_config, c.global_config, c.decoder_config, c.patcher_config
    entropy = c.patching_mode == "entropy" and c.patch_in_forward

    def rope(s) -> Raw:
        return call("rope", theta=float(s.rope_parameters["rope_theta"]))

    def block(s) -> dict[str, Any]:  # the model's position is the encoder's
        heads, kv = s.num_attention_heads, s.num_key_value_heads or s.num_attention_heads
        kind = "mha" if kv == heads else "gqa"
        head_dim = s.hidden_size // heads if s.hidden_size != enc.hidden_size else None
        return {"norm": call("rmsnorm", eps=s.rms_norm_eps),
                "attention": call(kind, heads=heads, kv_heads=kv if kind == "gqa" else None, head_dim=head_dim),
                "ffn": call("swiglu", hidden=s.intermediate_size),
                "position": rope(s) if s is not enc else None}

    byte_latent = call("byte_latent", global_d_model=glob.hidden_size, cross_k=c.cross_attn_k,
                       window=c.local_attention_window_len,
                       encoder_cross="all" if enc.cross_attn_all_layers else "last",
                       decoder_cross="all" if dec.cross_attn_all_layers else "first",
                       ngrams=Raw(_numbers(c.encoder_hash_byte_group_size)),
                       hash_vocab=c.encoder_hash_byte_group_vocab,
                       hash_functions=c.encoder_hash_byte_group_nb_functions,
                       patching="entropy" if entropy else "bytes",
                       threshold=float(c.patching_threshold) if entropy else None,
                       entropy_d_model=ent.hidden_size if entropy else None,
                       entropy_window=ent.sliding_window if entropy else None, max_patch=c.max_patch_length)
    fields = {"family": "byte_latent", "vocab": c.vocab_size, "d_model": enc.hidden_size,
              "context": c.max_position_embeddings, "dtype": hf_config.spec_dtype(c.dtype), "position": rope(enc),
              "final_norm": call("rmsnorm", eps=dec.rms_norm_eps), "byte_latent": byte_latent}
    blocks = {"entropy": block(ent)} if entropy else {}
    blocks.update(encoder=block(enc), latent=block(glob), decoder=block(dec))
    layers = {"entropy_layers": f"entropy * {ent.num_hidden_layers}"} if entropy else {}
    layers.update(encoder_layers=f"encoder * {enc.num_hidden_layers}", global_layers=f"latent * {glob.num_hidden_layers}",
                  decoder_layers=f"decoder * {dec.num_hidden_layers}")
    return write_spec(name, fields, blocks, layers, "Imported from a Hugging Face blt config.")


def _runs(kinds: list[str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for k in kinds:
        if out and out[-1][0] == k:
            out[-1] = (k, out[-1][1] + 1)
        else:
            out.append((k, 1))
    return out


SPEC_WRITERS: dict[str, Callable] = {
    "llama": _llama_like, "mistral": _llama_like, "qwen2": _llama_like, "qwen3": _llama_like, "olmo2": _llama_like,
    "smollm3": _llama_like, "phi3": _llama_like, "mixtral": _moe_like, "qwen2_moe": _moe_like, "gemma2": _gemma2,
    "gemma3_text": _gemma3, "gpt2": _gpt2, "bert": _bert, "albert": _albert, "jamba": _jamba, "deepseek_v2": _deepseek_v2,
    "deepseek_v3": _deepseek_v2, "glm4_moe": _glm4_moe, "t5": _t5, "mamba2": _mamba2, "gpt_oss": _gpt_oss,
    "llama4_text": _llama4_text, "qwen3_moe": _qwen3_moe, "olmoe": _olmoe, "olmo3": _olmo3, "exaone4": _exaone4,
    "ernie4_5_moe": _ernie4_5_moe, "hunyuan_v1_moe": _hunyuan_v1_moe,
    "gemma": _gemma, "starcoder2": _starcoder2, "granite": _granite, "granitemoe": _granite, "gpt_neox": _gpt_neox,
    "deepseek_v32": _deepseek_v32,
    "mamba": _mamba, "falcon_mamba": _mamba,
    "qwen3_next": _qwen3_next,
    "nemotron_h": _nemotron_h,
    "bamba": _bamba,
    "granitemoehybrid": _bamba,
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


def config_from_dict(config: dict, source: str | None = None):
    """A transformers config from a config.json's dict, its keys' types checked first."""
    import transformers
    from huggingface_hub.errors import StrictDataclassError  # strict config classes' field types

    hf_config.check_types(config, source)
    try:
        return transformers.AutoConfig.for_model(**config)
    except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError,
            StrictDataclassError) as exc:  # transformers' own checks (its config classes are strict dataclasses)
        where = f"{source}: " if source else ""
        raise ArchError(f"{where}transformers rejects this {config['model_type']} config: {exc}", kind="interop") from None


def spec_from_config(config, name: str | None = None) -> str:
    """The .arch text of a transformers config (a PretrainedConfig, its dict, or the path of a
    config.json). Every key is mapped, known to be irrelevant, or refused (hf_config.py):
    nothing is dropped silently."""
    source = None
    if isinstance(config, (str, os.PathLike)):
        source = str(config)
        config = hf_config.read_config(config)
    if isinstance(config, dict):
        config = config_from_dict(config, source)
    model_type = getattr(config, "model_type", None)
    if model_type not in SPEC_WRITERS:
        raise hf_config.unsupported_model_type(model_type, source)
    hf_config.check_keys(config.to_dict(), source)
    where = f"{source}: " if source else ""
    try:
        text = SPEC_WRITERS[model_type](config, name or model_type.replace("-", "_"))  # deberta-v2 → deberta_v2
    except (ValueError, TypeError, ArithmeticError) as exc:  # e.g. zero heads, a zero layer period
        raise ArchError(f"{where}this {model_type} config does not describe a model: {exc}", kind="interop") from None
    model = _check_written(text, model_type, where)
    _check_dropouts(model, config, where)
    return text


def _check_written(text: str, model_type: str, where: str):
    """An imported spec always passes `archc check`: a config whose values do not make a valid
    model (zero sizes, heads that do not divide, ...) is refused here, in the config's terms."""
    from archlang.api import compile_spec
    from archlang.spec.errors import ArchErrors, all_errors

    try:
        return compile_spec(text, passes="").model
    except (ArchError, ArchErrors) as exc:
        first = all_errors(exc)[0]
        raise ArchError(f"{where}this {model_type} config does not describe a valid model: {first.message}",
                        hint=first.hint, kind="interop") from None


def _check_dropouts(model, config, where: str) -> None:
    """Every mapped dropout key reached the spec: a spec writer that forgets _dropouts would
    otherwise drop one silently."""
    for key, rule in hf_config.table(config.model_type).items():
        for field in rule.fields:
            p = float(getattr(config, key, None) or 0)
            if getattr(model, field) != p:
                raise ArchError(f"{where}{config.model_type} config key {key!r} = {p} did not reach the spec's "
                                f"`{field}` ({getattr(model, field)})", kind="interop")


# ----------------------------------------------------------------------------- models and checkpoints


def _build(config, passes: str | None):
    from archlang.api import compile_spec, load_source
    from archlang.compiler import DEFAULT_PIPELINE

    spec = spec_from_config(config, name=config.model_type.replace("-", "_"))
    compiled = compile_spec(spec, passes=DEFAULT_PIPELINE if passes is None else passes)
    return load_source(compiled.source, compiled.model.name).build()


def hf_to_archlang(hf_model, config=None) -> dict[str, torch.Tensor]:
    """A transformers model's weights under archlang's unfused names."""
    return to_archlang(config or hf_model.config, hf_model.state_dict())


def from_hf(hf_model, *, passes: str | None = None):
    """An archlang model equivalent to a transformers model, with its weights (or a Hugging Face
    checkpoint folder's, given its path)."""
    if isinstance(hf_model, (str, os.PathLike)):
        return load_hf_checkpoint(hf_model, passes=passes)
    config = hf_model.config
    if config.model_type in ENCODER_HEADS and not config.architectures:  # the head follows the class
        config = copy.deepcopy(config)
        config.architectures = [type(hf_model).__name__]
    model = _build(config, passes)
    model.load_unfused_state_dict(hf_to_archlang(hf_model, config), strict=True)
    return model.to(next(hf_model.parameters()).dtype)


def _hf_shapes(config) -> dict[str, torch.Size]:
    """The tensors of a transformers model of this config (built on the meta device), each tied
    tensor under its first name only, as its modules hold them."""
    import transformers

    if config.model_type in ENCODER_HEADS:
        arch = encoder_class(config)
    else:
        arch = (config.architectures or [None])[0]
    cls = getattr(transformers, arch) if arch else None
    with torch.device("meta"):
        if cls is None:
            auto = transformers.AutoModelForSeq2SeqLM if config.model_type == "t5" else transformers.AutoModelForCausalLM
            model = auto.from_config(config)
        else:
            model = cls(config)
    seen: set[int] = set()
    shapes: dict[str, torch.Size] = {}
    from .hf_weights import DETERMINED_BY_CONFIG

    for name, tensor in model.state_dict(keep_vars=True).items():
        if name.endswith(DETERMINED_BY_CONFIG):  # buffers the config alone gives (MiniMax's decays)
            continue
        if id(tensor) not in seen:
            seen.add(id(tensor))
            shapes[name] = tensor.shape
    return shapes


def check_weights_fit_config(state: dict[str, torch.Tensor], config) -> None:
    """Refuse unless `state` (archlang's unfused names) is exactly the weights of a transformers
    model of `config`: every HF tensor produced, at its shape, and every archlang tensor used."""
    from .hf_weights import rules_for

    expected = _hf_shapes(config)
    problems: list[str] = []
    used: set[str] = set()
    produced: dict[str, torch.Size] = {}
    reported: set[str] = set()
    for rule in rules_for(config, set(expected)):
        missing = [k for k in rule.ours if k not in state]
        if missing:
            reported.update(rule.theirs)
            problems.append(f"the config has {', '.join(rule.theirs)} but the model has no {', '.join(missing)}")
            continue
        used.update(rule.ours)
        try:
            tensors = rule.to_theirs([state[k] for k in rule.ours])
        except RuntimeError as exc:  # a split or a reshape that the shapes do not allow
            problems.append(f"the model's {', '.join(rule.ours)} cannot form {', '.join(rule.theirs)}: {exc}")
            continue
        produced.update((name, t.shape) for name, t in zip(rule.theirs, tensors))
    problems += [f"the config has {name} {tuple(shape)} but nothing in the model maps to it"
                 for name, shape in expected.items() if name not in produced and name not in reported]
    problems += [f"the model's {name} {tuple(state[name].shape)} has no place in this {config.model_type} config"
                 for name in state if name not in used]
    problems += [f"{name}: the config says {tuple(expected[name])}, the model has {tuple(shape)}"
                 for name, shape in produced.items() if name in expected and shape != expected[name]]
    if problems:
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise ArchError(f"the config does not describe this model's weights ({len(problems)} differences)",
                        notes=shown, hint="pass the config the model was imported from, or one written for its spec",
                        kind="interop")


def _read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    files = [directory / "model.safetensors"]
    try:
        if index.exists():
            weight_map = hf_config.read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ArchError(f"{index} has no 'weight_map' object", kind="interop")
            files = [directory / shard for shard in sorted(set(map(str, weight_map.values())))]
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(file))
        return state
    except (OSError, SafetensorError) as exc:
        raise ArchError(f"cannot read the weights in {directory}: {exc}", kind="interop") from None


def load_hf_checkpoint(directory: str | os.PathLike, *, passes: str | None = None):
    """An archlang model from a Hugging Face checkpoint folder (config.json + safetensors): every
    config key and every tensor is mapped or the load is refused."""
    directory = Path(directory)
    path = directory / "config.json"
    config = config_from_dict(hf_config.read_config(path), str(path))
    model = _build(config, passes)
    state = to_archlang(config, _read_safetensors(directory))
    if model.config["tie_embeddings"]:  # the head is the embedding (nemotron_h never ties, whatever its config says)
        state.pop("lm_head.weight", None)
    try:
        model.load_unfused_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing or unexpected tensors, or shapes that differ from the config's
        detail = str(exc).split("\n\t")
        raise ArchError(f"the weights in {directory} do not fit its config.json", notes=detail[1:6] or detail,
                        kind="interop") from None
    return model


def save_hf_checkpoint(model, config, directory: str | os.PathLike) -> None:
    """Write config.json and model.safetensors under Hugging Face's names, for `from_pretrained`.
    The config must describe exactly the model's weights (else ArchError, nothing written); each
    file appears whole or not at all (temporary file + rename)."""
    from safetensors.torch import save_file

    hf_config.check_keys(config.to_dict())
    # a shared block's weights once, under its first use's names (a checkpoint holds one copy)
    repeats = tuple(f"{name}." for name in model.repeated_modules())
    unfused = {k: v.detach().cpu() for k, v in model.unfuse_state_dict().items() if not k.startswith(repeats)}
    check_weights_fit_config(unfused, config)
    state = to_hf(config, unfused, set(_hf_shapes(config)))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp_weights = directory / f".model.safetensors.tmp-{os.getpid()}"
    tmp_config = directory / f".config.json.tmp-{os.getpid()}"
    try:
        save_file(state, str(tmp_weights), metadata={"format": "pt"})
        config.to_json_file(tmp_config, use_diff=True)
        os.replace(tmp_weights, directory / "model.safetensors")
        os.replace(tmp_config, directory / "config.json")
    finally:
        tmp_weights.unlink(missing_ok=True)
        tmp_config.unlink(missing_ok=True)
