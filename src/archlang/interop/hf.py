"""Hugging Face transformers ⇄ archlang: a spec from an HF config, and HF weights under
archlang's names. Each supported family has one spec writer and one weight-name table.

Verified by logit parity tests (tests/interop): llama, mistral, qwen2, mixtral, qwen2_moe,
deepseek_v2, gemma2, gpt2, bert, jamba, t5.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from archlang.spec.errors import ArchError


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


def _rope(c, rotary_dim: int | None = None) -> Raw:
    params = dict(getattr(c, "rope_parameters", None) or {})
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
                       mscale=float(params.get("mscale") or 1), mscale_all_dim=float(params.get("mscale_all_dim") or 0))
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


def _act(name: str) -> str:
    return {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
            "relu": "relu", "gelu_fast": "gelu_tanh"}.get(name) or _unsupported(f"activation {name!r}")


def _unsupported(what: str):
    raise ArchError(f"{what} has no archlang equivalent yet", kind="interop")


def _attention(c, *, window=None, bias=False, softcap=None, scale=None, head_dim=None) -> Raw:
    heads, kv = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    hd = head_dim or getattr(c, "head_dim", None)
    if hd == c.hidden_size // heads:
        hd = None
    kind = "mha" if kv == heads else "mqa" if kv == 1 else "gqa"
    return call(kind, heads=heads, kv_heads=kv if kind == "gqa" else None, head_dim=hd, bias=bias or None,
                window=window, softcap=softcap, scale=scale)


def _decoder_fields(c, **extra) -> dict[str, Any]:
    fields = {"family": "decoder", "vocab": c.vocab_size, "d_model": c.hidden_size,
              "context": c.max_position_embeddings, "dtype": "fp32",
              "tie_embeddings": bool(getattr(c, "tie_word_embeddings", False)) or None}
    fields.update(extra)
    return fields


def _llama_like(c, name: str) -> str:
    eps = c.rms_norm_eps
    layer_types = getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers
    window = getattr(c, "sliding_window", None)
    if c.model_type == "qwen2" and not getattr(c, "use_sliding_window", False):
        window = None
    bias = bool(getattr(c, "attention_bias", c.model_type == "qwen2"))
    ffn = call("swiglu", hidden=c.intermediate_size, bias=bool(getattr(c, "mlp_bias", False)) or None) \
        if _act(c.hidden_act) == "silu" else call("geglu", hidden=c.intermediate_size, act=_act(c.hidden_act))
    blocks, kinds = {}, []
    for t in layer_types:
        sliding = t == "sliding_attention" or (c.model_type == "mistral" and window)
        kind = "sliding" if sliding and window else "layer"
        kinds.append(kind)
        if kind not in blocks:
            blocks[kind] = {"norm": call("rmsnorm", eps=eps),
                            "attention": _attention(c, window=window if kind == "sliding" else None, bias=bias),
                            "ffn": ffn}
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
        attention = _attention(c, bias=True)
        kinds = []
        for i in range(c.num_hidden_layers):
            sparse = i not in (c.mlp_only_layers or []) and (i + 1) % c.decoder_sparse_step == 0
            kinds.append("moe_layer" if sparse else "dense_layer")
        blocks = {}
        if "dense_layer" in kinds:
            blocks["dense_layer"] = {"norm": call("rmsnorm", eps=eps), "attention": attention,
                                     "ffn": call("swiglu", hidden=c.intermediate_size)}
        if "moe_layer" in kinds:
            blocks["moe_layer"] = {"norm": call("rmsnorm", eps=eps), "attention": attention, "ffn": moe}
    fields = _decoder_fields(c, position=_rope(c), final_norm=call("rmsnorm", eps=eps))
    return write_spec(name, fields, blocks, {"layers": _layout(kinds)}, f"Imported from a Hugging Face {c.model_type} config.")


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


def _gpt2(c, name: str) -> str:
    eps = c.layer_norm_epsilon
    fields = {"family": "decoder", "vocab": c.vocab_size, "d_model": c.n_embd, "context": c.n_positions,
              "dtype": "fp32", "tie_embeddings": True, "position": call("learned"),
              "final_norm": call("layernorm", eps=eps)}
    block = {"norm": call("layernorm", eps=eps), "attention": call("mha", heads=c.n_head, bias=True, out_bias=True),
             "ffn": call("mlp", hidden=c.n_inner or 4 * c.n_embd, act=_act(c.activation_function), bias=True)}
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.n_layer}"}, "Imported from a Hugging Face gpt2 config.")


def _bert(c, name: str) -> str:
    eps = c.layer_norm_eps
    fields = {"family": "encoder", "vocab": c.vocab_size, "d_model": c.hidden_size,
              "context": c.max_position_embeddings, "dtype": "fp32", "type_vocab": c.type_vocab_size,
              "pooler": True, "position": call("learned"), "embedding_norm": call("layernorm", eps=eps)}
    block = {"norm": call("layernorm", eps=eps, placement="post"),
             "attention": call("mha", heads=c.num_attention_heads, bias=True, out_bias=True),
             "ffn": call("mlp", hidden=c.intermediate_size, act=_act(c.hidden_act), bias=True)}
    return write_spec(name, fields, {"layer": block}, {"layers": f"layer * {c.num_hidden_layers}"}, "Imported from a Hugging Face bert config.")


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


def _deepseek_v2(c, name: str) -> str:
    eps = c.rms_norm_eps
    if c.topk_method != "greedy":
        _unsupported(f"DeepSeek routing {c.topk_method!r}")
    if c.attention_bias:
        _unsupported("DeepSeek attention_bias")
    mla = call("mla", heads=c.num_attention_heads, kv_lora_rank=c.kv_lora_rank, q_lora_rank=c.q_lora_rank,
               rope_head_dim=c.qk_rope_head_dim, nope_head_dim=c.qk_nope_head_dim, v_head_dim=c.v_head_dim)
    moe = call("moe", experts=c.n_routed_experts, top_k=c.num_experts_per_tok, shared_experts=c.n_shared_experts or None,
               expert=call("swiglu", hidden=c.moe_intermediate_size), normalize_top_k=bool(c.norm_topk_prob),
               routed_scale=float(c.routed_scaling_factor) if c.routed_scaling_factor != 1 else None)
    kinds = ["dense" if i < c.first_k_dense_replace else "sparse" for i in range(c.num_hidden_layers)]
    blocks = {}
    if "dense" in kinds:
        blocks["dense"] = {"norm": call("rmsnorm", eps=eps), "attention": mla, "ffn": call("swiglu", hidden=c.intermediate_size)}
    if "sparse" in kinds:
        blocks["sparse"] = {"norm": call("rmsnorm", eps=eps), "attention": mla, "ffn": moe}
    fields = _decoder_fields(c, position=_rope(c, rotary_dim=c.qk_rope_head_dim), final_norm=call("rmsnorm", eps=eps))
    layers = " + ".join(_layout([k]) if n == 1 else f"{k} * {n}" for k, n in _runs(kinds))
    return write_spec(name, fields, blocks, {"layers": layers}, "Imported from a Hugging Face deepseek_v2 config.")


def _t5(c, name: str) -> str:
    eps = c.layer_norm_epsilon
    attention = call("mha", heads=c.num_heads, head_dim=c.d_kv, scale=1)
    if c.is_gated_act:
        ffn = call("geglu", hidden=c.d_ff, act=_act(c.dense_act_fn))
    else:
        ffn = call("mlp", hidden=c.d_ff, act=_act(c.dense_act_fn), bias=False)
    norm = call("rmsnorm", eps=eps)
    fields = {"family": "encoder_decoder", "vocab": c.vocab_size, "d_model": c.d_model,
              "context": getattr(c, "n_positions", None) or 512, "dtype": "fp32", "tie_embeddings": True,
              "logit_scale": Raw("d_model ** -0.5") if getattr(c, "scale_decoder_outputs", True) else None,
              "position": call("relative", buckets=c.relative_attention_num_buckets,
                               max_distance=c.relative_attention_max_distance),
              "final_norm": norm}
    blocks = {"encoder": {"norm": norm, "attention": attention, "ffn": ffn},
              "decoder": {"norm": norm, "attention": attention, "cross_attention": attention, "ffn": ffn}}
    layers = {"encoder_layers": f"encoder * {c.num_layers}",
              "decoder_layers": f"decoder * {c.num_decoder_layers or c.num_layers}"}
    return write_spec(name, fields, blocks, layers, "Imported from a Hugging Face t5 config.")


def _t5_weights(c, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"embed.weight": sd["shared.weight"],
           "encoder_rel_bias.weight": sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
           "decoder_rel_bias.weight": sd["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
           "encoder_final_norm.weight": sd["encoder.final_layer_norm.weight"],
           "decoder_final_norm.weight": sd["decoder.final_layer_norm.weight"]}

    def attention(ours: str, theirs: str) -> None:
        for n in ("q", "k", "v", "o"):
            out[f"{ours}{n}_proj.weight"] = sd[f"{theirs}.{n}.weight"]

    def ffn(ours: str, theirs: str) -> None:
        if f"{theirs}.wi.weight" in sd:
            out[f"{ours}up_proj.weight"] = sd[f"{theirs}.wi.weight"]
        else:
            out[f"{ours}gate_proj.weight"] = sd[f"{theirs}.wi_0.weight"]
            out[f"{ours}up_proj.weight"] = sd[f"{theirs}.wi_1.weight"]
        out[f"{ours}down_proj.weight"] = sd[f"{theirs}.wo.weight"]

    for i in range(c.num_layers):
        p, q = f"encoder.{i}.", f"encoder.block.{i}.layer."
        attention(p, f"{q}0.SelfAttention")
        out[f"{p}attn_norm.weight"] = sd[f"{q}0.layer_norm.weight"]
        ffn(p, f"{q}1.DenseReluDense")
        out[f"{p}ffn_norm.weight"] = sd[f"{q}1.layer_norm.weight"]
    for i in range(c.num_decoder_layers or c.num_layers):
        p, q = f"decoder.{i}.", f"decoder.block.{i}.layer."
        attention(p, f"{q}0.SelfAttention")
        out[f"{p}attn_norm.weight"] = sd[f"{q}0.layer_norm.weight"]
        attention(f"{p}cross_", f"{q}1.EncDecAttention")
        out[f"{p}cross_norm.weight"] = sd[f"{q}1.layer_norm.weight"]
        ffn(p, f"{q}2.DenseReluDense")
        out[f"{p}ffn_norm.weight"] = sd[f"{q}2.layer_norm.weight"]
    return out


def _runs(kinds: list[str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for k in kinds:
        if out and out[-1][0] == k:
            out[-1] = (k, out[-1][1] + 1)
        else:
            out.append((k, 1))
    return out


SPEC_WRITERS: dict[str, Callable] = {
    "llama": _llama_like, "mistral": _llama_like, "qwen2": _llama_like, "mixtral": _moe_like,
    "qwen2_moe": _moe_like, "gemma2": _gemma2, "gpt2": _gpt2, "bert": _bert, "jamba": _jamba,
    "deepseek_v2": _deepseek_v2, "t5": _t5,
}


def spec_from_config(config, name: str | None = None) -> str:
    """The .arch text of a transformers config (a PretrainedConfig or its dict)."""
    if isinstance(config, dict):
        import transformers

        model_type = config.get("model_type")
        if model_type not in SPEC_WRITERS:
            raise ArchError(f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(SPEC_WRITERS))}",
                            kind="interop")
        config = transformers.AutoConfig.for_model(**config)
    model_type = config.model_type
    if model_type not in SPEC_WRITERS:
        raise ArchError(f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(SPEC_WRITERS))}",
                        kind="interop")
    return SPEC_WRITERS[model_type](config, name or model_type)


# ----------------------------------------------------------------------------- weights


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def hf_to_archlang(hf_model) -> dict[str, torch.Tensor]:
    """HF weights under archlang's unfused names (q_proj, gate_proj, ...)."""
    c = hf_model.config
    sd = hf_model.state_dict()
    out: dict[str, torch.Tensor] = {}
    t = c.model_type

    def put(ours: str, theirs: str, transform=None):
        if theirs in sd:
            out[ours] = transform(sd[theirs]) if transform else sd[theirs]

    if t in ("llama", "mistral", "qwen2", "mixtral", "qwen2_moe", "gemma2", "jamba"):
        put("embed.weight", "model.embed_tokens.weight")
        put("final_norm.weight", "model.final_layernorm.weight" if t == "jamba" else "model.norm.weight")
        if not getattr(c, "tie_word_embeddings", False):
            put("lm_head.weight", "lm_head.weight")
        for i in range(c.num_hidden_layers):
            p, q = f"layers.{i}.", f"model.layers.{i}."
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                for w in ("weight", "bias"):
                    put(f"{p}{n}.{w}", f"{q}self_attn.{n}.{w}")
            mixer_norm = "attn_norm"
            if t == "jamba" and f"{q}mamba.in_proj.weight" in sd:
                mixer_norm = "ssm_norm"
                for ours, theirs in (("in_proj", "in_proj.weight"), ("conv_weight", "conv1d.weight"),
                                     ("conv_bias", "conv1d.bias"), ("x_proj", "x_proj.weight"),
                                     ("dt_proj_weight", "dt_proj.weight"), ("dt_proj_bias", "dt_proj.bias"),
                                     ("A_log", "A_log"), ("D", "D"), ("out_proj", "out_proj.weight"),
                                     ("dt_norm", "dt_layernorm.weight"), ("b_norm", "b_layernorm.weight"),
                                     ("c_norm", "c_layernorm.weight"), ("in_proj_bias", "in_proj.bias"),
                                     ("out_proj_bias", "out_proj.bias")):
                    put(f"{p}ssm.{ours}", f"{q}mamba.{theirs}")
            put(f"{p}{mixer_norm}.weight", f"{q}input_layernorm.weight")
            if t == "gemma2":
                put(f"{p}attn_post_norm.weight", f"{q}post_attention_layernorm.weight")
                put(f"{p}ffn_norm.weight", f"{q}pre_feedforward_layernorm.weight")
                put(f"{p}ffn_post_norm.weight", f"{q}post_feedforward_layernorm.weight")
            elif t == "jamba":
                put(f"{p}ffn_norm.weight", f"{q}pre_ff_layernorm.weight")
            else:
                put(f"{p}ffn_norm.weight", f"{q}post_attention_layernorm.weight")
            mlp = f"{q}feed_forward." if t == "jamba" else f"{q}mlp."
            for n in ("gate_proj", "up_proj", "down_proj"):
                for w in ("weight", "bias"):
                    put(f"{p}{n}.{w}", f"{mlp}{n}.{w}")
            # MoE: router and the experts' stacked weights
            router = f"{mlp}router.weight" if t == "jamba" else f"{mlp}gate.weight"
            put(f"{p}moe.router", router)
            put(f"{p}moe.experts_gate_up", f"{mlp}experts.gate_up_proj")
            put(f"{p}moe.experts_down", f"{mlp}experts.down_proj")
            if f"{mlp}shared_expert.gate_proj.weight" in sd:
                out[f"{p}moe.shared_gate_up"] = torch.cat(
                    [sd[f"{mlp}shared_expert.gate_proj.weight"], sd[f"{mlp}shared_expert.up_proj.weight"]])
                put(f"{p}moe.shared_down", f"{mlp}shared_expert.down_proj.weight")
                put(f"{p}moe.shared_gate", f"{mlp}shared_expert_gate.weight")
        return out
    if t == "deepseek_v2":
        return _deepseek_v2_weights(c, sd)
    if t == "t5":
        return _t5_weights(c, sd)
    if t == "gpt2":
        put("embed.weight", "transformer.wte.weight")
        put("pos_embed.weight", "transformer.wpe.weight")
        put("final_norm.weight", "transformer.ln_f.weight")
        put("final_norm.bias", "transformer.ln_f.bias")
        d = c.n_embd
        for i in range(c.n_layer):
            p, q = f"layers.{i}.", f"transformer.h.{i}."
            for w in ("weight", "bias"):
                put(f"{p}attn_norm.{w}", f"{q}ln_1.{w}")
                put(f"{p}ffn_norm.{w}", f"{q}ln_2.{w}")
            # GPT-2's Conv1D stores (in, out): transpose to Linear's (out, in); c_attn stacks q, k, v.
            qkv_w, qkv_b = sd[f"{q}attn.c_attn.weight"].t(), sd[f"{q}attn.c_attn.bias"]
            for j, n in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{p}{n}.weight"] = qkv_w[j * d:(j + 1) * d]
                out[f"{p}{n}.bias"] = qkv_b[j * d:(j + 1) * d]
            put(f"{p}o_proj.weight", f"{q}attn.c_proj.weight", lambda w: w.t())
            put(f"{p}o_proj.bias", f"{q}attn.c_proj.bias")
            put(f"{p}up_proj.weight", f"{q}mlp.c_fc.weight", lambda w: w.t())
            put(f"{p}up_proj.bias", f"{q}mlp.c_fc.bias")
            put(f"{p}down_proj.weight", f"{q}mlp.c_proj.weight", lambda w: w.t())
            put(f"{p}down_proj.bias", f"{q}mlp.c_proj.bias")
        return out
    if t == "bert":
        pre = "bert." if any(k.startswith("bert.") for k in sd) else ""
        put("embed.weight", f"{pre}embeddings.word_embeddings.weight")
        put("pos_embed.weight", f"{pre}embeddings.position_embeddings.weight")
        put("type_embed.weight", f"{pre}embeddings.token_type_embeddings.weight")
        for w in ("weight", "bias"):
            put(f"embed_norm.{w}", f"{pre}embeddings.LayerNorm.{w}")
            put(f"pooler.{w}", f"{pre}pooler.dense.{w}")
        for i in range(c.num_hidden_layers):
            p, q = f"layers.{i}.", f"{pre}encoder.layer.{i}."
            for w in ("weight", "bias"):
                put(f"{p}q_proj.{w}", f"{q}attention.self.query.{w}")
                put(f"{p}k_proj.{w}", f"{q}attention.self.key.{w}")
                put(f"{p}v_proj.{w}", f"{q}attention.self.value.{w}")
                put(f"{p}o_proj.{w}", f"{q}attention.output.dense.{w}")
                put(f"{p}attn_norm.{w}", f"{q}attention.output.LayerNorm.{w}")
                put(f"{p}up_proj.{w}", f"{q}intermediate.dense.{w}")
                put(f"{p}down_proj.{w}", f"{q}output.dense.{w}")
                put(f"{p}ffn_norm.{w}", f"{q}output.LayerNorm.{w}")
        return out
    raise ArchError(f"weights of model_type {t!r} cannot be imported yet", kind="interop")


def _interleaved_to_halves(w: torch.Tensor, rows: slice, rope: int) -> torch.Tensor:
    """DeepSeek rotates channel pairs (2i, 2i+1); archlang rotates halves (i, i + rope/2). The two
    are the same rotation after permuting the rope channels, which changes neither q·k nor the
    output: reorder those output rows of a projection to [0, 2, 4, ..., 1, 3, 5, ...]."""
    w = w.clone()
    order = torch.cat((torch.arange(0, rope, 2), torch.arange(1, rope, 2)))
    block = w[rows]
    w[rows] = block.view(-1, rope, *block.shape[1:])[:, order].reshape(block.shape)
    return w


def _deepseek_v2_weights(c, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"embed.weight": sd["model.embed_tokens.weight"], "final_norm.weight": sd["model.norm.weight"]}
    if "lm_head.weight" in sd and not getattr(c, "tie_word_embeddings", False):
        out["lm_head.weight"] = sd["lm_head.weight"]
    heads, nope, rope = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        a = f"{q}self_attn."
        # q: per head [nope | rope]; permute the rope rows of every head
        qw = sd.get(f"{a}q_proj.weight", sd.get(f"{a}q_b_proj.weight"))
        per_head = qw.view(heads, nope + rope, -1)
        per_head = torch.stack([_interleaved_to_halves(h, slice(nope, nope + rope), rope) for h in per_head])
        qw = per_head.reshape(qw.shape)
        if f"{a}q_proj.weight" in sd:
            out[f"{p}q_proj.weight"] = qw
        else:
            out[f"{p}q_a_proj.weight"] = sd[f"{a}q_a_proj.weight"]
            out[f"{p}q_a_norm.weight"] = sd[f"{a}q_a_layernorm.weight"]
            out[f"{p}q_b_proj.weight"] = qw
        kv = sd[f"{a}kv_a_proj_with_mqa.weight"]
        out[f"{p}kv_a_proj.weight"] = _interleaved_to_halves(kv, slice(c.kv_lora_rank, c.kv_lora_rank + rope), rope)
        out[f"{p}attn.kv_a_norm"] = sd[f"{a}kv_a_layernorm.weight"]
        out[f"{p}attn.kv_b_proj"] = sd[f"{a}kv_b_proj.weight"]
        out[f"{p}o_proj.weight"] = sd[f"{a}o_proj.weight"]
        out[f"{p}attn_norm.weight"] = sd[f"{q}input_layernorm.weight"]
        out[f"{p}ffn_norm.weight"] = sd[f"{q}post_attention_layernorm.weight"]
        m = f"{q}mlp."
        if f"{m}gate.weight" in sd:
            out[f"{p}moe.router"] = sd[f"{m}gate.weight"]
            out[f"{p}moe.experts_gate_up"] = sd[f"{m}experts.gate_up_proj"]
            out[f"{p}moe.experts_down"] = sd[f"{m}experts.down_proj"]
            if f"{m}shared_experts.gate_proj.weight" in sd:
                out[f"{p}moe.shared_gate_up"] = torch.cat(
                    [sd[f"{m}shared_experts.gate_proj.weight"], sd[f"{m}shared_experts.up_proj.weight"]])
                out[f"{p}moe.shared_down"] = sd[f"{m}shared_experts.down_proj.weight"]
        else:
            for n in ("gate_proj", "up_proj", "down_proj"):
                out[f"{p}{n}.weight"] = sd[f"{m}{n}.weight"]
    return out


def from_hf(hf_model, *, passes: str | None = None):
    """An archlang model equivalent to a transformers model, with its weights."""
    from archlang.api import compile_spec, load_source
    from archlang.compiler import DEFAULT_PIPELINE

    spec = spec_from_config(hf_model.config, name=hf_model.config.model_type)
    compiled = compile_spec(spec, passes=DEFAULT_PIPELINE if passes is None else passes)
    model = load_source(compiled.source, compiled.model.name).build()
    state = hf_to_archlang(hf_model)
    model.load_unfused_state_dict(state, strict=True)
    return model.to(next(hf_model.parameters()).dtype)
