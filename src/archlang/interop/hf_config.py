"""Reading Hugging Face configs, and the one table of what the importer does with every key.

Every key of a supported model type's config is either mapped (a spec writer in hf.py reads it),
irrelevant (listed with the reason: it does not change the function the network computes), or
checked (archlang expresses only some values: any other is refused, naming the key and its
value). A key in none of these is refused too, so a new transformers key is noticed rather than
dropped. tests/interop/test_hf_config.py walks every supported type's defaults against this table.

Dropout keys are mapped to the model's embedding_dropout / attention_dropout / residual_dropout
where the family drops exactly the tensors archlang does (the embeddings, the attention
probabilities, each residual branch before it is added back), so a model trains as it does in
transformers. Where a family drops something archlang does not (inside the FFN, after the final
norm, MLA's probabilities), a non-zero value is refused; zero is the identity everywhere.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from archlang.spec.ast import MAX_LAYERS
from archlang.spec.errors import ArchError, Span

# A check returns None when archlang expresses the value, else what it cannot express.
Check = Callable[[Any, dict], "str | None"]


@dataclass(frozen=True)
class Key:
    how: str  # mapped | irrelevant | checked
    reason: str = ""
    check: Check | None = None
    fields: tuple[str, ...] = ()  # the model fields a mapped dropout key sets
    dropout: bool = False  # a dropout probability: mapped to `fields`, or refused unless zero when there are none


MAPPED = Key("mapped")


def irrelevant(reason: str) -> Key:
    return Key("irrelevant", reason)


def only(*values: Any, reason: str) -> Key:
    """Archlang implements this key only at these values (compared with ==; True == 1 is avoided)."""

    def check(value: Any, config: dict) -> str | None:
        if any(type(value) is type(v) and value == v for v in values):
            return None
        return reason

    return Key("checked", reason, check)


def checked(check: Check, reason: str = "") -> Key:
    """Mapped, but only some values are expressible: `check` says which."""
    return Key("checked", reason, check)


def _same_as(other: str, reason: str) -> Key:
    return checked(lambda v, c: None if v == c.get(other) else reason, reason)


# ----------------------------------------------------------------------------- rope_parameters

# rope_type → the keys archlang's rope(scaling = ...) expresses; partial_rotary_factor is rope(dim = ...).
_ROPE_KEYS = {
    "default": {"rope_type", "rope_theta", "partial_rotary_factor"},
    "linear": {"rope_type", "rope_theta", "partial_rotary_factor", "factor"},
    "llama3": {"rope_type", "rope_theta", "partial_rotary_factor", "factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"},
    "yarn": {"rope_type", "rope_theta", "partial_rotary_factor", "factor", "original_max_position_embeddings",
             "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"},
    "longrope": {"rope_type", "rope_theta", "partial_rotary_factor", "short_factor", "long_factor", "factor",
                 "attention_factor", "original_max_position_embeddings"},
    "dynamic": {"rope_type", "rope_theta", "partial_rotary_factor", "factor"},
}
_ROPE_LISTS = {"short_factor", "long_factor"}
_ROPE_REQUIRED = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                                   "original_max_position_embeddings"), "yarn": ("factor",),
                  "longrope": ("short_factor", "long_factor"), "dynamic": ("factor",)}


def _rope_problem(value: Any, config: dict) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return "rope_parameters must be an object (one RoPE setting for all layers)"
    kind = value.get("rope_type", value.get("type", "default"))
    if kind not in _ROPE_KEYS:
        return f"RoPE type {kind!r} has no archlang equivalent (archlang has: {', '.join(sorted(_ROPE_KEYS))})"
    for k, v in value.items():
        if k in ("rope_type", "type"):
            continue
        if k == "truncate" and v is True or k == "attention_factor" and v is None:
            continue  # the values archlang's YaRN computes with
        if k not in _ROPE_KEYS[kind]:
            return f"rope_parameters[{k!r}] = {v!r} has no archlang equivalent for RoPE type {kind!r}"
        if k == "truncate":  # yarn(truncate = ...)
            if not isinstance(v, bool):
                return f"rope_parameters['truncate'] must be true or false, not {v!r}"
            continue
        if k in _ROPE_LISTS:
            if not isinstance(v, list) or not v or not all(type(x) in (int, float) and x > 0 for x in v):
                return f"rope_parameters[{k!r}] must be a list of positive numbers"
            continue
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"rope_parameters[{k!r}] must be a number, not {v!r}"
    for k in _ROPE_REQUIRED.get(kind, ()):
        if value.get(k) is None:
            return f"RoPE type {kind!r} needs rope_parameters[{k!r}]"
    if "rope_theta" not in value:
        return "rope_parameters needs rope_theta"
    return None


ROPE = checked(_rope_problem)


def _rope_per_layer_type(value: Any, config: dict) -> str | None:
    """Gemma 3: one RoPE setting per layer type, each checked as a whole rope_parameters."""
    if not isinstance(value, dict):
        return "rope_parameters must map each layer type to its RoPE setting"
    types = set(config.get("layer_types") or ())
    if set(value) != types:
        return f"rope_parameters must have one entry per layer type ({', '.join(sorted(types))})"
    for layer_type, params in value.items():
        problem = _rope_problem(params, config)
        if problem:
            return f"{layer_type}: {problem}"
    return None

# ----------------------------------------------------------------------------- the tables

# transformers' activation names → archlang's (gelu_fast is the tanh approximation, written out).
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
               "relu2": "relu2"}
ACTIVATION = checked(lambda v, c: None if v in ACTIVATIONS else
                     f"archlang's activations are {', '.join(sorted(set(ACTIVATIONS.values())))}")


def _t5_ffn(value: Any, config: dict) -> str | None:
    act = str(value).removeprefix("gated-")
    return None if act in ACTIVATIONS else f"activation {act!r} has no archlang equivalent"


_DTYPES = {None: "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def spec_dtype(value: Any) -> str:
    """The spec's dtype for a config's `dtype` (transformers builds float32 when it is unset)."""
    return _DTYPES[str(value).removeprefix("torch.") if value is not None else None]


DTYPE = checked(lambda v, c: None if (str(v).removeprefix("torch.") if v is not None else None) in _DTYPES
                else "archlang has float32, bfloat16 and float16")


def dropout_into(*fields: str) -> Key:
    """A dropout probability this family applies exactly where archlang's model `fields` do."""
    return Key("mapped", fields=fields, dropout=True)


def no_dropout(reason: str) -> Key:
    """A dropout this family applies where archlang has none: only 0 (or unset) is expressible."""
    return Key("checked", reason, lambda v, c: None if not v else reason, dropout=True)


# A dropout the importer has not placed: refused unless zero, so training never silently differs.
DROPOUT = no_dropout("archlang has no dropout at the place this family applies it")
HEAD_DROPOUT = irrelevant("dropout of a classification or summary head, which the importer does not build")
ATTENTION_DROPOUT = dropout_into("attention_dropout")  # on the softmax probabilities, in training
TOKEN_ID = irrelevant("a tokenizer id: data, not architecture")
INIT = irrelevant("initialisation of fresh weights; imported weights are loaded")
OUTPUTS = irrelevant("what transformers' forward returns, not what it computes")
HEAD_LABELS = irrelevant("labels of a classification head, which the importer does not build")
NO_AUX_LOSS = only(False, reason="archlang maps the router's load-balancing loss for mixtral only")

SHARED: dict[str, Key] = {
    "model_type": MAPPED, "vocab_size": MAPPED, "dtype": DTYPE,
    "_name_or_path": irrelevant("where the config was loaded from"),
    "architectures": irrelevant("names transformers classes, not the architecture"),
    "transformers_version": irrelevant("the version that wrote the file"),
    "use_cache": irrelevant("a generation option: archlang decides caching per call"),
    "output_attentions": OUTPUTS, "output_hidden_states": OUTPUTS, "return_dict": OUTPUTS,
    "id2label": HEAD_LABELS, "label2id": HEAD_LABELS, "problem_type": HEAD_LABELS, "finetuning_task": HEAD_LABELS,
    "chunk_size_feed_forward": irrelevant("computes the FFN in chunks along the sequence: the same result"),
    "bos_token_id": TOKEN_ID, "eos_token_id": TOKEN_ID, "pad_token_id": TOKEN_ID, "sep_token_id": TOKEN_ID,
    "decoder_start_token_id": TOKEN_ID, "tokenizer_class": TOKEN_ID, "prefix": TOKEN_ID,
    "initializer_range": INIT, "initializer_factor": INIT,
    "task_specific_params": irrelevant("generation defaults of transformers pipelines"),
    "cache_implementation": irrelevant("how transformers stores the KV cache while generating"),
    "output_past": irrelevant("an old name of use_cache"),
    "gradient_checkpointing": irrelevant("recomputes activations in training: the same function"),
    "auto_map": irrelevant("points at remote modeling code; archlang maps the native transformers class"),
    "is_encoder_decoder": only(False, reason="only t5 is an encoder-decoder model here"),
}

_LLAMA_CORE = {k: MAPPED for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                   "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                                   "tie_word_embeddings", "head_dim")}
_LLAMA_CORE.update(rope_parameters=ROPE, attention_dropout=ATTENTION_DROPOUT, hidden_act=ACTIVATION)
_MLA_DROPOUT = no_dropout("archlang's MLA attention has no dropout on its probabilities")
_OLD_TP = irrelevant("kept for old checkpoints; transformers' modeling code no longer reads it")
_SILU = only("silu", "swish", reason="archlang maps this family's experts with silu (swiglu) only")

# Granite's scales are spec values that must be positive (archlang scales, it never flips a sign).
_GRANITE_MULTIPLIERS = {k: checked(lambda v, c: None if isinstance(v, (int, float)) and v > 0 else
                                   "archlang expresses positive multipliers only")
                        for k in ("embedding_multiplier", "residual_multiplier", "attention_multiplier",
                                  "logits_scaling")}


def _mamba1_width_problem(value: Any, config: dict) -> str | None:
    """transformers' Mamba computes intermediate_size from expand, but a value written in the
    config replaces it (tiiuae/falcon-mamba-7b writes expand 16 beside intermediate_size 8192);
    archlang's mamba is expand · d_model wide, so the width must be a multiple of hidden_size."""
    hidden = config.get("hidden_size", 768)
    if value is None or isinstance(value, int) and value > 0 and value % hidden == 0:
        return None
    return f"archlang's mamba is a whole multiple (expand) of hidden_size ({hidden}) wide"


# Mamba-1 and Falcon-Mamba (which adds mixer_rms_eps, its weightless inner norms' eps).
_MAMBA1: dict[str, Key] = {
    **{k: MAPPED for k in ("hidden_size", "num_hidden_layers", "state_size", "conv_kernel", "use_bias",
                           "use_conv_bias", "layer_norm_epsilon", "tie_word_embeddings", "time_step_rank")},
    "expand": irrelevant("read only to compute intermediate_size, which is mapped"),
    # not read by transformers' Mamba: export writes the spec's context there, import reads it back
    "max_position_embeddings": MAPPED,
    "intermediate_size": checked(_mamba1_width_problem),
    "hidden_act": only("silu", "swish", reason="archlang's mamba applies silu after the conv and on the gate"),
    "use_mambapy": irrelevant("which training fallback scan transformers runs without CUDA kernels: the same "
                              "function"),
    "use_associative_scan": irrelevant("a parallel form of the same scan under torch.compile: the same function"),
    **{k: INIT for k in ("rescale_prenorm_residual", "time_step_min", "time_step_max", "time_step_floor",
                         "time_step_init_scheme", "time_step_scale")},
    # keys mamba_ssm's configs carry (state-spaces/mamba-2.8b-hf has them) and transformers never reads
    "n_layer": irrelevant("mamba_ssm's name for num_hidden_layers; transformers reads num_hidden_layers"),
    "rms_norm": irrelevant("never read: transformers' Mamba always uses RMSNorm"),
    "fused_add_norm": irrelevant("a kernel fusion of the residual add and the norm: the same function"),
    # By decision, as for mamba2: a float32 residual stream changes the rounding of 16-bit runs
    # only; in float32 (where parity is proven) it is the identity.
    "residual_in_fp32": irrelevant("rounding of 16-bit runs only (the residual sum kept in float32); "
                                   "archlang adds residuals in the model's dtype"),
}


# Bamba's and GraniteMoeHybrid's shared keys: Llama's attention and SwiGLU, Mamba-2's mixer (one
# hidden_act for the FFN and the mixer's conv, which archlang runs with silu).
_BAMBA_CORE = {**_LLAMA_CORE, "hidden_act": only("silu", "swish", reason="archlang's mamba2 applies silu after "
                                                  "the conv, and this family's FFN and conv share hidden_act"),
               "attention_bias": MAPPED, "mlp_bias": MAPPED,
               **{k: MAPPED for k in ("mamba_n_heads", "mamba_d_head", "mamba_d_state", "mamba_d_conv", "mamba_expand",
                                      "mamba_n_groups", "mamba_chunk_size", "mamba_conv_bias", "mamba_proj_bias")},
               "time_step_limit": checked(lambda v, c: _dt_limit_problem(v)),
               "num_logits_to_keep": OUTPUTS}

TABLES: dict[str, dict[str, Key]] = {
    "llama": {**_LLAMA_CORE, "attention_bias": MAPPED, "mlp_bias": MAPPED, "pretraining_tp": _OLD_TP},
    "mistral": {**_LLAMA_CORE, "sliding_window": MAPPED},
    "qwen2": {**_LLAMA_CORE, "use_sliding_window": MAPPED, "sliding_window": MAPPED, "max_window_layers": MAPPED,
              "layer_types": MAPPED},
    "qwen3": {**_LLAMA_CORE, "attention_bias": MAPPED, "use_sliding_window": MAPPED, "sliding_window": MAPPED,
              "max_window_layers": MAPPED, "layer_types": MAPPED},
    "olmo2": {**_LLAMA_CORE, "attention_bias": MAPPED, "pretraining_tp": _OLD_TP},
    "smollm3": {**_LLAMA_CORE, "attention_bias": MAPPED, "mlp_bias": MAPPED, "use_sliding_window": MAPPED,
                "sliding_window": MAPPED, "layer_types": MAPPED,
                "no_rope_layers": checked(lambda v, c: None if v is None or len(v) == c.get("num_hidden_layers") else
                                          "it needs one entry per layer (num_hidden_layers)"),
                "no_rope_layer_interval": irrelevant("used only to fill no_rope_layers, which is read")},
    "mixtral": {**_LLAMA_CORE, "hidden_act": _SILU, "sliding_window": MAPPED, "num_experts_per_tok": MAPPED,
                "num_local_experts": MAPPED, "output_router_logits": MAPPED, "router_aux_loss_coef": MAPPED,
                "router_jitter_noise": only(0.0, 0, reason="router jitter (training-time noise on the router input) "
                                                             "is not in archlang")},
    "qwen2_moe": {**_LLAMA_CORE, "hidden_act": _SILU, "qkv_bias": MAPPED, "decoder_sparse_step": MAPPED,
                  "moe_intermediate_size": MAPPED, "shared_expert_intermediate_size": MAPPED,
                  "num_experts_per_tok": MAPPED, "num_experts": MAPPED, "norm_topk_prob": MAPPED,
                  "mlp_only_layers": MAPPED, "output_router_logits": NO_AUX_LOSS,
                  "router_aux_loss_coef": irrelevant("used only with output_router_logits, which is checked"),
                  "use_sliding_window": only(False, reason="sliding-window layers are not mapped for qwen2_moe"),
                  "sliding_window": irrelevant("used only with use_sliding_window, which is checked"),
                  "max_window_layers": irrelevant("used only with use_sliding_window, which is checked"),
                  "layer_types": checked(lambda v, c: None if all(t == "full_attention" for t in v or [])
                                         else "qwen2_moe layers other than full_attention are not mapped")},
    "gemma2": {**_LLAMA_CORE, "hidden_activation": ACTIVATION,
               "hidden_act": irrelevant("gemma2's modeling code reads hidden_activation"), "query_pre_attn_scalar": MAPPED, "sliding_window": MAPPED,
               "layer_types": MAPPED, "final_logit_softcapping": MAPPED, "attn_logit_softcapping": MAPPED,
               "attention_bias": only(False, reason="attention biases are not mapped for gemma2"),
               "use_bidirectional_attention": only(None, False, reason="archlang's gemma2 attention is causal")},
    "phi3": {**_LLAMA_CORE, "sliding_window": MAPPED, "resid_pdrop": dropout_into("residual_dropout"),
             "embd_pdrop": irrelevant("Phi-3's modeling code never reads it: its embeddings are not dropped"),
             "original_max_position_embeddings": MAPPED},
    "gemma3_text": {**_LLAMA_CORE, "hidden_activation": ACTIVATION, "rope_parameters": checked(_rope_per_layer_type),
                    "hidden_act": irrelevant("gemma3's modeling code reads hidden_activation"),
                    "query_pre_attn_scalar": MAPPED, "sliding_window": MAPPED, "layer_types": MAPPED,
                    "final_logit_softcapping": MAPPED, "attn_logit_softcapping": MAPPED,
                    "_sliding_window_pattern": irrelevant("an older spelling of layer_types, which is read"),
                    "attention_bias": only(False, reason="attention biases are not mapped for gemma3_text"),
                    "use_bidirectional_attention": only(None, False, reason="archlang's gemma3 attention is causal")},
    "gpt2": {**{k: MAPPED for k in ("n_positions", "n_embd", "n_layer", "n_head", "n_inner", "layer_norm_epsilon")},
             "activation_function": ACTIVATION,
             "resid_pdrop": dropout_into("residual_dropout"), "embd_pdrop": dropout_into("embedding_dropout"),
             "attn_pdrop": ATTENTION_DROPOUT, "summary_first_dropout": HEAD_DROPOUT,
             **{k: irrelevant("the sequence-summary head of GPT2DoubleHeadsModel, which the importer does not build")
                for k in ("summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels")},
             "n_ctx": irrelevant("an old alias of n_positions that the modeling code does not read"),
             "scale_attn_weights": only(True, reason="archlang scales scores by 1/sqrt(head_dim)"),
             "scale_attn_by_inverse_layer_idx": only(False, reason="per-layer score scaling is not in archlang"),
             "reorder_and_upcast_attn": only(False, reason="a float32 upcast inside attention is not in archlang"),
             "add_cross_attention": only(False, reason="gpt2 with cross-attention is not mapped"),
             "tie_word_embeddings": only(True, reason="an untied gpt2 LM head is not mapped")},
    "bert": {**{k: MAPPED for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                    "max_position_embeddings", "type_vocab_size", "layer_norm_eps")},
             "hidden_act": ACTIVATION,
             # BERT drops the normalised embeddings and each sublayer's output before its residual add
             "hidden_dropout_prob": dropout_into("embedding_dropout", "residual_dropout"),
             "attention_probs_dropout_prob": ATTENTION_DROPOUT,
             # the head follows the class: BertModel (none), BertForMaskedLM (mlm), BertForSequenceClassification
             "architectures": MAPPED, "classifier_dropout": MAPPED, "num_labels": MAPPED,
             "problem_type": only(None, "single_label_classification", "regression",
                                  reason="archlang's classifier loss is single-label cross-entropy or, with one "
                                         "label, regression"),
             "is_decoder": only(False, reason="bert as a decoder is not mapped"),
             "add_cross_attention": only(False, reason="bert with cross-attention is not mapped"),
             "position_embedding_type": only("absolute", reason="archlang's bert has learned absolute positions"),
             "tie_word_embeddings": MAPPED},
    "albert": {**{k: MAPPED for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                      "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "embedding_size",
                                      "architectures", "classifier_dropout_prob", "num_labels", "tie_word_embeddings")},
               "hidden_act": ACTIVATION,
               "hidden_dropout_prob": dropout_into("embedding_dropout", "residual_dropout"),
               "attention_probs_dropout_prob": ATTENTION_DROPOUT,
               "num_hidden_groups": only(1, reason="archlang maps one group of shared layers"),
               "inner_group_num": only(1, reason="archlang maps one layer per group"),
               "problem_type": only(None, "single_label_classification", "regression",
                                    reason="archlang's classifier loss is single-label cross-entropy or, with one "
                                           "label, regression"),
               "is_encoder_decoder": only(False, reason="albert is an encoder")},
    "jamba": {**_LLAMA_CORE, "hidden_act": _SILU, "output_router_logits": NO_AUX_LOSS,
              "router_aux_loss_coef": irrelevant("used only with output_router_logits, which is checked"),
              **{k: MAPPED for k in ("num_experts_per_tok", "num_experts", "expert_layer_period", "expert_layer_offset",
                                     "attn_layer_period", "attn_layer_offset", "mamba_d_state", "mamba_d_conv",
                                     "mamba_expand", "mamba_dt_rank", "mamba_conv_bias", "mamba_proj_bias")},
              **{k: irrelevant("chooses which transformers implementation computes the same scan")
                 for k in ("use_mamba_kernels", "use_mambapy", "use_associative_scan")}},
    "deepseek_v2": {**_LLAMA_CORE, "hidden_act": _SILU, "pretraining_tp": _OLD_TP, "attention_dropout": _MLA_DROPOUT,
                    "attention_bias": only(False, reason="attention biases are not mapped for deepseek_v2"),
                    "mlp_bias": only(False, reason="FFN biases are not mapped for deepseek_v2"),
                    "num_key_value_heads": _same_as("num_attention_heads", "MLA has one key/value head per query head"),
                    "head_dim": _same_as("qk_rope_head_dim", "transformers sets it to qk_rope_head_dim"),
                    "qk_head_dim": checked(lambda v, c: None if v == (c.get("qk_nope_head_dim") or 0)
                                           + (c.get("qk_rope_head_dim") or 0) else
                                           "it must be qk_nope_head_dim + qk_rope_head_dim"),
                    "topk_method": only("greedy", "group_limited_greedy",
                                        reason="archlang has DeepSeek-V2's greedy and group_limited_greedy routing"),
                    # read by group_limited_greedy only; checked then, since a spec cannot state them otherwise
                    "n_group": checked(lambda v, c: _groups_problem(c) if c.get("topk_method") == "group_limited_greedy"
                                       else None),
                    "topk_group": MAPPED,  # checked with n_group
                    "output_router_logits": NO_AUX_LOSS,
                    "norm_topk_prob": irrelevant("transformers' deepseek_v2 never renormalises the top-k weights"),
                    **{k: MAPPED for k in ("first_k_dense_replace", "kv_lora_rank", "q_lora_rank", "n_routed_experts",
                                           "n_shared_experts", "qk_nope_head_dim", "qk_rope_head_dim",
                                           "routed_scaling_factor", "v_head_dim",
                                           "num_experts_per_tok", "moe_intermediate_size")}},
    "deepseek_v3": {**_LLAMA_CORE, "hidden_act": _SILU, "pretraining_tp": _OLD_TP, "attention_dropout": _MLA_DROPOUT,
                    "attention_bias": only(False, reason="attention biases are not mapped for deepseek_v3"),
                    "num_key_value_heads": _same_as("num_attention_heads", "MLA has one key/value head per query head"),
                    "head_dim": _same_as("qk_rope_head_dim", "transformers sets it to qk_rope_head_dim"),
                    "qk_head_dim": checked(lambda v, c: None if v == (c.get("qk_nope_head_dim") or 0)
                                           + (c.get("qk_rope_head_dim") or 0) else
                                           "it must be qk_nope_head_dim + qk_rope_head_dim"),
                    "n_group": checked(lambda v, c: _groups_problem(c)), "topk_group": MAPPED,  # checked with n_group
                    "output_router_logits": NO_AUX_LOSS,
                    # chooses interleaved or half-split RoPE channels: mapped by the weight rules
                    "rope_interleave": MAPPED,
                    **{k: irrelevant("the multi-token-prediction module is not part of the function HF computes: "
                                     "DeepseekV3ForCausalLM never builds it and drops its weights on load")
                       for k in ("num_nextn_predict_layers", "num_mtp_layers")},
                    **{k: MAPPED for k in ("first_k_dense_replace", "kv_lora_rank", "q_lora_rank", "n_routed_experts",
                                           "n_shared_experts", "qk_nope_head_dim", "qk_rope_head_dim",
                                           "routed_scaling_factor", "norm_topk_prob", "v_head_dim",
                                           "num_experts_per_tok", "moe_intermediate_size")}},
    "deepseek_v32": {**_LLAMA_CORE, "hidden_act": _SILU,
                     "attention_bias": only(False, reason="attention biases are not mapped for deepseek_v32"),
                     "mlp_bias": irrelevant("DeepseekV32MLP builds its linears without a bias whatever it says"),
                     "num_key_value_heads": _same_as("num_attention_heads", "MLA has one key/value head per query head"),
                     "head_dim": _same_as("qk_rope_head_dim", "transformers sets it to qk_rope_head_dim"),
                     "qk_head_dim": checked(lambda v, c: None if v == (c.get("qk_nope_head_dim") or 0)
                                            + (c.get("qk_rope_head_dim") or 0) else
                                            "it must be qk_nope_head_dim + qk_rope_head_dim"),
                     "q_lora_rank": checked(lambda v, c: None if v else "the lightning indexer reads the query "
                                            "latent, so DeepSeek-V3.2 needs a q_lora_rank"),
                     "n_group": checked(lambda v, c: _groups_problem(c)), "topk_group": MAPPED,  # checked with n_group
                     "output_router_logits": NO_AUX_LOSS,
                     "mlp_layer_types": checked(lambda v, c: None if isinstance(v, list) and len(v) == c.get(
                         "num_hidden_layers") and all(t in ("dense", "sparse") for t in v) else
                         "it needs one of dense / sparse per layer (num_hidden_layers)"),
                     "first_k_dense_replace": irrelevant("used only to fill mlp_layer_types, which is read"),
                     # keys of DeepSeek's own config.json that the config class does not define
                     "num_nextn_predict_layers": irrelevant(
                         "the multi-token-prediction module is not part of the function HF computes: "
                         "DeepseekV32ForCausalLM never builds it and drops its weights on load"),
                     "ep_size": irrelevant("the expert-parallel degree: where experts run, not what they compute"),
                     "moe_layer_freq": only(1, reason="transformers' deepseek_v32 places experts by mlp_layer_types "
                                                      "only, which is every layer after the dense ones"),
                     "scoring_func": only("sigmoid", reason="transformers' deepseek_v32 scores experts with a sigmoid"),
                     "topk_method": only("noaux_tc", reason="transformers' deepseek_v32 routes by noaux_tc "
                                                            "(correction bias, grouped top-k)"),
                     "layer_types": checked(lambda v, c: None if v is None or all(t == "indexed_attention" for t in v)
                                            else "every deepseek_v32 layer is indexed_attention"),
                     **{k: MAPPED for k in ("kv_lora_rank", "n_routed_experts", "n_shared_experts", "qk_nope_head_dim",
                                            "qk_rope_head_dim", "routed_scaling_factor", "norm_topk_prob", "v_head_dim",
                                            "num_experts_per_tok", "moe_intermediate_size", "index_topk",
                                            "index_head_dim", "index_n_heads")}},
    "glm4_moe": {**_LLAMA_CORE, "hidden_act": _SILU, "attention_bias": MAPPED,
                 "use_qk_norm": only(False, reason="GLM-4 MoE's per-head q/k norms are not mapped"),
                 "n_group": checked(lambda v, c: _groups_problem(c)), "topk_group": MAPPED,  # checked with n_group
                 "output_router_logits": NO_AUX_LOSS,
                 **{k: irrelevant("the multi-token-prediction layers are not part of the function HF computes: "
                                  "Glm4MoeForCausalLM never builds them and drops their weights on load")
                    for k in ("num_nextn_predict_layers", "num_mtp_layers")},
                 **{k: MAPPED for k in ("first_k_dense_replace", "n_routed_experts", "n_shared_experts",
                                        "routed_scaling_factor", "norm_topk_prob", "num_experts_per_tok",
                                        "moe_intermediate_size")}},
    "gpt_oss": {**_LLAMA_CORE, "attention_bias": MAPPED, "num_local_experts": MAPPED, "num_experts_per_tok": MAPPED,
                "hidden_act": irrelevant("gpt-oss's experts compute the clamped SwiGLU whatever hidden_act says"),
                "layer_types": checked(lambda v, c: _layer_types_problem(v, c, ("sliding_attention", "full_attention"))),
                "sliding_window": checked(lambda v, c: None if v is not None or "sliding_attention" not in
                                          (c.get("layer_types") or ()) else "sliding layers need a sliding_window"),
                "swiglu_limit": checked(lambda v, c: _positive(v, "the experts' clamp")),
                "swiglu_alpha": checked(lambda v, c: _positive(v, "the experts' sigmoid slope")),
                "output_router_logits": NO_AUX_LOSS,
                "router_aux_loss_coef": irrelevant("used only with output_router_logits, which is checked"),
                # keys of the original implementation that openai/gpt-oss-* config.json files still carry
                "experts_per_token": irrelevant("the original implementation's num_experts_per_tok, which is read"),
                "initial_context_length": irrelevant("the original implementation's pre-training context; "
                                                     "transformers reads rope_parameters instead"),
                # published checkpoints store the experts in MXFP4; transformers then runs other arithmetic
                "quantization_config": only(None, reason="quantized weights are not mapped: use a dequantized "
                                            "(bf16) checkpoint and remove quantization_config")},
    "llama4_text": {**_LLAMA_CORE, "hidden_act": _SILU, "attention_bias": MAPPED, "use_qk_norm": MAPPED,
                    "intermediate_size_mlp": MAPPED, "num_local_experts": MAPPED, "num_experts_per_tok": MAPPED,
                    "moe_layers": checked(lambda v, c: None if all(type(i) is int for i in v or ()) else
                                          "it must be a list of layer indices"),
                    "interleave_moe_layer_step": irrelevant("used only to fill moe_layers, which is read"),
                    "no_rope_layers": checked(lambda v, c: None if v is not None and len(v) == c.get("num_hidden_layers")
                                              else "it needs one entry per layer (num_hidden_layers)"),
                    "no_rope_layer_interval": irrelevant("used only to fill no_rope_layers, which is read"),
                    "layer_types": checked(lambda v, c: _layer_types_problem(v, c, ("chunked_attention", "full_attention"))),
                    "attention_chunk_size": checked(lambda v, c: None if v is not None or "chunked_attention" not in
                                                    (c.get("layer_types") or ()) else
                                                    "chunked layers need an attention_chunk_size"),
                    "attn_temperature_tuning": MAPPED,
                    "floor_scale": checked(lambda v, c: _positive(v, "temperature tuning's floor scale")
                                           if c.get("attn_temperature_tuning") else None),
                    "attn_scale": checked(lambda v, c: _positive(v, "temperature tuning's scale")
                                          if c.get("attn_temperature_tuning") else None),
                    "output_router_logits": NO_AUX_LOSS,
                    "router_aux_loss_coef": irrelevant("used only with output_router_logits, which is checked"),
                    "router_jitter_noise": irrelevant("Llama 4's router adds no jitter: transformers never reads it"),
                    "for_llm_compressor": irrelevant("a flag for quantisation tooling; the modeling code never reads it")},
    "qwen3_moe": {**_LLAMA_CORE, "hidden_act": _SILU, "attention_bias": MAPPED, "use_sliding_window": MAPPED,
                  "sliding_window": MAPPED, "decoder_sparse_step": MAPPED, "moe_intermediate_size": MAPPED,
                  "num_experts_per_tok": MAPPED, "num_local_experts": MAPPED, "norm_topk_prob": MAPPED,
                  "mlp_only_layers": MAPPED, "output_router_logits": NO_AUX_LOSS,
                  "num_experts": MAPPED,  # config.json's name of num_local_experts (an attribute_map alias)
                  "max_window_layers": irrelevant("published configs carry it, but transformers' qwen3_moe never "
                                                  "reads it: use_sliding_window puts the window on every layer"),
                  "router_aux_loss_coef": irrelevant("used only with output_router_logits, which is checked")},
    "olmoe": {**_LLAMA_CORE, "hidden_act": _SILU, "attention_bias": MAPPED, "num_experts_per_tok": MAPPED,
              "num_experts": MAPPED, "norm_topk_prob": MAPPED, "output_router_logits": NO_AUX_LOSS,
              "router_aux_loss_coef": irrelevant("used only with output_router_logits, which is checked"),
              "clip_qkv": only(None, reason="archlang does not clamp q, k and v"),
              # OlmoeAttention sizes its q/k norms by hidden_size // heads, whatever head_dim says
              "head_dim": checked(lambda v, c: None if v is None or v * c.get("num_attention_heads", 0)
                                  == c.get("hidden_size") else "olmoe's QK-norms need head_dim = hidden_size / heads")},
    "olmo3": {**_LLAMA_CORE, "hidden_act": _SILU, "attention_bias": MAPPED, "sliding_window": MAPPED,
              "rope_parameters": checked(lambda v, c: _rope_per_layer_type(
                  v, {"layer_types": ["sliding_attention", "full_attention"]})),
              "layer_types": checked(lambda v, c: None if v is None or set(v) <= {"sliding_attention", "full_attention"}
                                     else "olmo3 layers are sliding_attention or full_attention")},
    "exaone4": {**_LLAMA_CORE, "sliding_window": MAPPED,
                "sliding_window_pattern": irrelevant("used only to fill layer_types, which is read"),
                "layer_types": checked(lambda v, c: None if v is None or set(v) <= {"full_attention"} or
                                       set(v) <= {"sliding_attention", "full_attention"} and c.get("sliding_window")
                                       else "exaone4 layers are full_attention, or sliding_attention with a "
                                            "sliding_window")},
    "ernie4_5_moe": {**_LLAMA_CORE, "hidden_act": _SILU,
                     "use_bias": only(False, reason="use_bias also biases the LM head, which archlang lacks"), "output_router_logits": NO_AUX_LOSS,
                     "router_aux_loss_coef": irrelevant("used only with output_router_logits, which is checked"),
                     # config.json's names of moe_num_experts and moe_k (attribute_map aliases)
                     "num_experts": MAPPED, "num_experts_per_tok": MAPPED,
                     **{k: MAPPED for k in ("moe_intermediate_size", "moe_k", "moe_num_experts",
                                            "moe_num_shared_experts", "moe_layer_start_index", "moe_layer_end_index",
                                            "moe_layer_interval", "moe_norm_min")}},
    "hunyuan_v1_moe": {**_LLAMA_CORE, "hidden_act": _SILU, "attention_bias": MAPPED, "pretraining_tp": _OLD_TP,
                       "eod_token_id": TOKEN_ID, "output_router_logits": NO_AUX_LOSS,
                       "rope_parameters": checked(lambda v, c: _hunyuan_rope_problem(v, c)),
                       # HunYuanMoEV1Attention computes head_dim ** -0.5: transformers builds no model without it
                       "head_dim": checked(lambda v, c: None if isinstance(v, int) else
                                           "transformers' hunyuan_v1_moe needs head_dim (it builds no model without)"),
                       # the experts' stack takes one count for all layers; the router one top-k per layer
                       "num_experts": checked(lambda v, c: None if type(v) is int else
                                              "one expert count for every layer (transformers' experts take one)"),
                       "num_local_experts": MAPPED, "num_experts_per_tok": MAPPED,  # attribute_map aliases
                       "moe_topk": checked(lambda v, c: None if type(v) is int or isinstance(v, list) and
                                           len(v) == c.get("num_hidden_layers") and all(type(k) is int for k in v)
                                           else "an integer, or one integer per layer (num_hidden_layers)")},
    "t5": {**{k: MAPPED for k in ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                                  "relative_attention_num_buckets", "relative_attention_max_distance",
                                  "layer_norm_epsilon", "is_gated_act",
                                  "scale_decoder_outputs", "n_positions")},
           "feed_forward_proj": checked(_t5_ffn), "dense_act_fn": ACTIVATION,
           "dropout_rate": no_dropout("t5 also drops inside each FFN (after the activation) and after the final "
                                      "norm, where archlang has no dropout"),
           "classifier_dropout": HEAD_DROPOUT,
           "is_encoder_decoder": only(True, reason="t5 is an encoder-decoder model"),
           "is_decoder": only(False, reason="a decoder-only t5 stack is not mapped"),
           "tie_word_embeddings": only(True, reason="an untied t5 LM head (t5 v1.1) is not mapped")},
    "mamba2": {**{k: MAPPED for k in ("hidden_size", "num_hidden_layers", "num_heads", "head_dim", "state_size",
                                      "expand", "conv_kernel", "n_groups", "use_bias", "use_conv_bias", "chunk_size",
                                      "layer_norm_epsilon", "tie_word_embeddings")},
               # not read by transformers' Mamba2: export writes the spec's context there, import reads it back
               "max_position_embeddings": MAPPED,
               "hidden_act": only("silu", "swish", reason="archlang's mamba2 applies silu after the conv"),
               "time_step_limit": checked(lambda v, c: _dt_limit_problem(v)),
               # By decision: a float32 residual stream changes the rounding of 16-bit runs only; the
               # function is the same, and in float32 (where parity is proven) it is the identity.
               "residual_in_fp32": irrelevant("rounding of 16-bit runs only (the residual sum kept in float32); "
                                              "archlang adds residuals in the model's dtype"),
               "time_step_rank": irrelevant("transformers' Mamba2 reads no weight or step from it: dt comes "
                                            "from in_proj"),
               **{k: INIT for k in ("rescale_prenorm_residual", "time_step_min", "time_step_max", "time_step_floor",
                                    "time_step_init_scheme", "time_step_scale")},
               # keys that transformers 4.44 wrote (Mamba-Codestral's config has them) and never read: its
               # Mamba2 always gates before the grouped RMSNorm (mamba_ssm's norm_before_gate = False)
               "rms_norm": irrelevant("never read: transformers' Mamba2 always applies the gated RMSNorm"),
               "norm_before_gate": irrelevant("never read: transformers' Mamba2 always gates before its norm")},
    "gemma": {**_LLAMA_CORE, "attention_bias": MAPPED,
              "hidden_activation": irrelevant("an older key that transformers' gemma no longer reads: it reads "
                                              "hidden_act (and takes its legacy 'gelu' as the tanh approximation)"),
              "use_bidirectional_attention": only(None, False, reason="archlang's gemma attention is causal")},
    # Starcoder2 drops out the embeddings, the attention probabilities and each residual branch
    # before its add: where archlang's model fields do, so they are mapped, not dropped.
    "starcoder2": {**{k: MAPPED for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                          "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                          "norm_epsilon", "tie_word_embeddings", "sliding_window", "use_bias")},
                   **{k: dropout_into(k) for k in ("attention_dropout", "residual_dropout", "embedding_dropout")},
                   "hidden_act": ACTIVATION, "rope_parameters": ROPE,
                   # written by the original training code into the published configs; transformers'
                   # starcoder2 reads none of them (it always builds LayerNorm and the c_fc/c_proj MLP)
                   **{k: irrelevant("not read by transformers' starcoder2, which computes the same without it")
                      for k in ("layer_norm_epsilon", "mlp_type", "norm_type")}},
    "granite": {**_LLAMA_CORE, "attention_bias": MAPPED, "mlp_bias": MAPPED, **_GRANITE_MULTIPLIERS},
    "granitemoe": {**_LLAMA_CORE, "attention_bias": MAPPED, **_GRANITE_MULTIPLIERS, "num_local_experts": MAPPED,
                   "num_experts_per_tok": MAPPED, "output_router_logits": NO_AUX_LOSS,
                   "router_aux_loss_coef": irrelevant("used only with output_router_logits, which is checked")},
    "gpt_neox": {**{k: MAPPED for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                        "num_attention_heads", "max_position_embeddings", "layer_norm_eps",
                                        "tie_word_embeddings", "attention_bias", "use_parallel_residual")},
                 "attention_dropout": ATTENTION_DROPOUT,
                 "hidden_dropout": dropout_into("residual_dropout", "embedding_dropout"),
                 "hidden_act": ACTIVATION, "rope_parameters": ROPE,
                 "classifier_dropout": irrelevant("the dropout of a classification head, which the importer "
                                                  "does not build"),
                 "is_decoder": irrelevant("transformers' gpt_neox does not read it: the model is causal either way")},
    "mamba": dict(_MAMBA1),
    "falcon_mamba": {**_MAMBA1, "mixer_rms_eps": MAPPED,
                     "use_falcon_mambapy": irrelevant("the old name of use_mambapy: the same function")},
    "qwen3_next": {**_LLAMA_CORE, "hidden_act": _SILU, "attention_bias": MAPPED, "decoder_sparse_step": MAPPED,
                   "moe_intermediate_size": MAPPED, "shared_expert_intermediate_size": MAPPED,
                   "num_experts_per_tok": MAPPED, "num_experts": MAPPED, "norm_topk_prob": MAPPED,
                   "mlp_only_layers": MAPPED, "output_router_logits": NO_AUX_LOSS,
                   "router_aux_loss_coef": irrelevant("used only with output_router_logits, which is checked"),
                   **{k: MAPPED for k in ("linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim",
                                          "linear_num_key_heads", "linear_num_value_heads")},
                   "layer_types": checked(lambda v, c: _layer_types_problem(v, c, ("linear_attention",
                                                                                  "full_attention"))),
                   "full_attention_interval": irrelevant("used only to fill layer_types, which is read"),
                   "partial_rotary_factor": irrelevant("transformers moves it into rope_parameters, which is read"),
                   "use_sliding_window": irrelevant("published configs carry it, but transformers' qwen3_next has "
                                                    "no sliding window and never reads it")},
    "nemotron_h": {**{k: MAPPED for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                          "num_key_value_heads", "head_dim", "max_position_embeddings",
                                          "mlp_bias", "ssm_state_size", "mamba_num_heads",
                                          "mamba_head_dim", "n_groups", "conv_kernel", "use_conv_bias", "chunk_size",
                                          "use_bias", "layer_norm_epsilon")},
                   "layers_block_type": checked(lambda v, c: _layer_types_problem(
                       v, dict(c, num_hidden_layers=len(v or ())), ("linear_attention", "full_attention", "mlp",
                                                                    "moe"))),
                   # config.json's older spellings, which transformers reads into the keys above
                   "hybrid_override_pattern": irrelevant("used only to fill layers_block_type, which is read"),
                   "mtp_hybrid_override_pattern": irrelevant("used only to fill mtp_layers_block_type"),
                   "num_hidden_layers": irrelevant("transformers ignores it: the layers are layers_block_type's"),
                   **{old: irrelevant(f"an older name of {new}, which transformers reads it into")
                      for old, new in (("mamba_n_groups", "n_groups"), ("mamba_d_conv", "conv_kernel"),
                                       ("mamba_expand", "expand"), ("mamba_dt_min", "time_step_min"),
                                       ("mamba_dt_max", "time_step_max"), ("mamba_dt_limit", "time_step_limit"),
                                       ("mamba_dt_init_floor", "time_step_floor"),
                                       ("mamba_conv_bias", "use_conv_bias"), ("mamba_chunk_size", "chunk_size"))},
                   "mlp_hidden_act": ACTIVATION, "attention_dropout": ATTENTION_DROPOUT,
                   "mamba_hidden_act": only("silu", "swish", reason="archlang's mamba2 applies silu after the conv"),
                   # the mixer clamps dt below at time_step_min (mapped), above at nothing
                   "time_step_min": checked(lambda v, c: _positive(v, "time_step_min") if v else None),
                   **{k: irrelevant("never read by transformers' nemotron_h modeling code")
                      for k in ("attention_bias", "sliding_window", "mamba_proj_bias", "hidden_dropout",
                                "residual_in_fp32", "mamba_ssm_cache_dtype", "use_mamba_kernels")},
                   "expand": irrelevant("never read: the mixer's d_inner is mamba_num_heads · mamba_head_dim"),
                   "tie_word_embeddings": irrelevant("transformers' NemotronHForCausalLM ties nothing (its "
                                                     "_tied_weights_keys is empty): the LM head is its own tensor"),
                   "time_step_limit": irrelevant("never read: the mixer clamps dt to [time_step_min, inf)"),
                   **{k: INIT for k in ("time_step_max", "time_step_floor", "rescale_prenorm_residual")},
                   "num_logits_to_keep": OUTPUTS,
                   # the multi-token-prediction layers are not built by transformers (their weights are skipped)
                   "num_nextn_predict_layers": irrelevant("transformers builds no MTP layers (it skips their weights)"),
                   "mtp_layers_block_type": irrelevant("transformers builds no MTP layers (it skips their weights)"),
                   # the moe layers: DeepSeek-V3's routing, relu² experts, one shared MLP
                   **{k: MAPPED for k in ("n_routed_experts", "moe_intermediate_size", "num_experts_per_tok",
                                          "moe_shared_expert_intermediate_size", "routed_scaling_factor",
                                          "norm_topk_prob", "topk_group")},
                   "num_local_experts": MAPPED,  # an attribute_map alias of n_routed_experts
                   "n_group": checked(lambda v, c: _groups_problem(c) if "moe" in (c.get("layers_block_type") or ())
                                      else None),
                   "moe_latent_size": only(None, reason="the experts' latent down/up projections are not mapped"),
                   "output_router_logits": NO_AUX_LOSS,
                   **{k: irrelevant("never read by transformers' nemotron_h modeling code (one shared MLP of "
                                    "moe_shared_expert_intermediate_size, added to the experts' sum)")
                      for k in ("n_shared_experts", "moe_shared_expert_overlap")}},
    "bamba": {**_BAMBA_CORE, "attn_layer_indices": MAPPED,
              "z_loss_coefficient": only(0.0, 0, reason="archlang's loss has no z-loss term (logsumexp² of the "
                                                         "logits)")},
    "granitemoehybrid": {**_BAMBA_CORE, **_GRANITE_MULTIPLIERS, "num_local_experts": MAPPED,
                         "num_experts_per_tok": MAPPED, "shared_intermediate_size": MAPPED,
                         "output_router_logits": NO_AUX_LOSS,
                         "router_aux_loss_coef": irrelevant("used only with output_router_logits, which is checked"),
                         # transformers renames mamba / attention to linear_attention / full_attention; any other
                         # name would silently become an attention layer there
                         "layer_types": checked(lambda v, c: _layer_types_problem(
                             [{"mamba": "linear_attention", "attention": "full_attention"}.get(t, t) for t in v or ()]
                             if v is not None else None, c, ("linear_attention", "full_attention"))),
                         # transformers builds RoPE only for "rope"; "nope" (Granite 4.0) and none build none
                         "position_embedding_type": only(None, "rope", "nope", reason="transformers' "
                                                         "granitemoehybrid knows rope and no position only")},
    "lfm2": {**{k: MAPPED for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                    "num_key_value_heads", "max_position_embeddings", "norm_eps", "tie_word_embeddings",
                                    "conv_bias", "conv_L_cache", "block_multiple_of", "block_auto_adjust_ff_dim")},
             "rope_parameters": ROPE,
             "block_ffn_dim_multiplier": checked(lambda v, c: _positive(v, "it")),
             # transformers builds a conv layer for "conv" and attention for any other type, and masks
             # only "full_attention" and "conv" layers
             "layer_types": checked(lambda v, c: _layer_types_problem(v, c, ("conv", "full_attention"))),
             "full_attn_idxs": irrelevant("read only to fill layer_types when it is absent; layer_types is read"),
             # written into the published configs by Liquid AI's training code; transformers' lfm2
             # reads none of them (its layers take hidden_size, intermediate_size and norm_eps)
             **{k: irrelevant("not read by transformers' lfm2: it computes the same without it")
                for k in ("block_dim", "block_norm_eps", "block_use_swiglu", "block_use_xavier_init",
                          "block_mlp_init_scale", "block_out_init_scale", "conv_dim", "conv_dim_out",
                          "conv_use_xavier_init", "num_heads", "theta", "use_pos_enc")}},
    "xlstm": {**{k: MAPPED for k in ("hidden_size", "num_hidden_layers", "num_heads", "norm_eps", "eps",
                                     "chunk_size", "ffn_proj_factor", "ffn_round_up_to_multiple_of")},
              # not read by transformers' xlstm: export writes the spec's context there, import reads it back
              "max_position_embeddings": MAPPED,
              "qk_dim_factor": checked(lambda v, c: _xlstm_width_problem(v, c, "qk_dim_factor")),
              "v_dim_factor": checked(lambda v, c: _xlstm_width_problem(v, c, "v_dim_factor")),
              "gate_soft_cap": checked(lambda v, c: None if v is None else _positive(v, "gate_soft_cap")),
              "output_logit_soft_cap": checked(lambda v, c: None if v is None else _positive(v, "it")),
              "weight_mode": only("single", "fused", reason="transformers' xlstm lays its weights out single or "
                                                            "fused only"),
              "embedding_dim": _same_as("hidden_size", "the embeddings must be hidden_size wide (the blocks read "
                                                       "hidden_size)"),
              "num_blocks": _same_as("num_hidden_layers", "xLSTMModel builds num_blocks blocks and its cache "
                                                          "num_hidden_layers states: they must agree"),
              "tie_word_embeddings": irrelevant("transformers' xLSTMForCausalLM ties nothing (it has no "
                                                "_tied_weights_keys): the LM head is its own tensor"),
              "add_out_norm": irrelevant("never read: transformers' xLSTMModel always applies its out_norm"),
              "use_bias": only(False, reason="xLSTM's use_bias also puts biases on its RMSNorms, which archlang's "
                                             "rmsnorm has not"),
              "norm_reduction_force_float32": only(True, reason="archlang's norms reduce in float32; a reduction "
                                                               "in a 16-bit input dtype rounds differently"),
              "inference_state_dtype": only("float32", reason="archlang keeps the mLSTM state (C, n, m) in float32"),
              "autocast_kernel_dtype": irrelevant("never read by transformers' native mLSTM kernels"),
              "mode": irrelevant("train, train_with_padding and inference run one function (chunked, padded, or "
                                 "chunked then recurrent); archlang picks its form per call"),
              **{k: irrelevant("names the kernel of one form; every form computes the same function (transformers "
                               "runs its native ones)")
                 for k in ("chunkwise_kernel", "sequence_kernel", "step_kernel")},
              "return_last_states": irrelevant("whether the kernels hand back the state: a caching option"),
              "max_inference_chunksize": irrelevant("splits long inputs into pieces that carry the state: the same "
                                                    "function")},
    "rwkv": {**{k: MAPPED for k in ("hidden_size", "num_hidden_layers", "attention_hidden_size", "intermediate_size",
                                    "layer_norm_epsilon", "tie_word_embeddings", "context_length")},
             # inference halves the hidden state every rescale_every layers: folded into the norms' eps
             # exactly (hf.rwkv_rescale_groups)
             "rescale_every": checked(lambda v, c: None if isinstance(v, int) and not isinstance(v, bool) else
                                      "rescale_every must be an integer (<= 0: no rescaling)")},
    "recurrent_gemma": {**{k: MAPPED for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "num_key_value_heads", "lru_width",
                                               "attention_window_size", "conv1d_width", "rms_norm_eps",
                                               "attention_bias", "tie_word_embeddings")},
                        "rope_parameters": ROPE, "hidden_activation": ACTIVATION,
                        "attention_dropout": ATTENTION_DROPOUT,
                        "logits_soft_cap": checked(lambda v, c: _positive(v, "it")),
                        # transformers turns "recurrent" into an RG-LRU layer and any other name into attention
                        "block_types": checked(lambda v, c: None if isinstance(v, (list, tuple)) and v and set(v) <= {
                            "recurrent", "attention"} else "block_types must be a non-empty list of 'recurrent' "
                            "and 'attention' (cycled over the layers)"),
                        "partial_rotary_factor": irrelevant("transformers moves it into rope_parameters, which is "
                                                            "read"),
                        "head_dim": irrelevant("transformers sets it to hidden_size // num_attention_heads "
                                               "whatever the config writes"),
                        "embeddings_scale_by_sqrt_dim": only(True, reason="transformers never reads it and always "
                                                             "scales the embeddings by sqrt(hidden_size)"),
                        **{k: INIT for k in ("w_init_variance_scale", "final_w_init_variance_scale")},
                        # not read by transformers' recurrent_gemma: export writes the spec's context there
                        "max_position_embeddings": MAPPED},
    "minimax": {**_LLAMA_CORE, "hidden_act": only("silu", "swish", reason="archlang maps minimax's experts with "
                                                 "silu (swiglu), and its lightning attention shares hidden_act"),
                "sliding_window": MAPPED, "num_experts_per_tok": MAPPED, "num_local_experts": MAPPED,
                "block_size": MAPPED, "output_router_logits": NO_AUX_LOSS,
                "router_aux_loss_coef": irrelevant("used only with output_router_logits, which is checked"),
                "router_jitter_noise": only(0.0, 0, reason="router jitter (training-time noise on the router input) "
                                                             "is not in archlang"),
                "layer_types": checked(lambda v, c: _layer_types_problem(v, c, ("linear_attention",
                                                                                "full_attention"))),
                **{k: checked(lambda v, c: _positive(v, "it"))
                   for k in ("full_attn_alpha_factor", "full_attn_beta_factor", "linear_attn_alpha_factor",
                             "linear_attn_beta_factor", "mlp_alpha_factor", "mlp_beta_factor")}},
    "falcon_h1": {**_LLAMA_CORE, "hidden_act": only("silu", "swish", reason="archlang's mamba2 applies silu after "
                                                    "the conv, and falcon_h1's FFN and conv share hidden_act"),
                  "attention_bias": MAPPED, "mlp_bias": MAPPED,
                  **{k: MAPPED for k in ("mamba_d_ssm", "mamba_n_heads", "mamba_d_state", "mamba_d_conv",
                                         "mamba_n_groups", "mamba_chunk_size", "mamba_conv_bias", "mamba_rms_norm",
                                         "mamba_norm_before_gate", "projectors_bias")},
                  "mamba_expand": MAPPED,  # the mixer's width when mamba_d_ssm is none
                  "mamba_d_head": MAPPED,  # "auto": transformers derives it from the width and mamba_n_heads
                  # archlang's mamba2 has one bias switch for its in- and out-projections
                  "mamba_proj_bias": _same_as("projectors_bias", "archlang's mamba2 biases its in_proj (mamba_proj_bias) "
                                              "and out_proj (projectors_bias) together: they must be equal"),
                  "time_step_limit": checked(lambda v, c: _dt_limit_problem(v)),
                  "num_logits_to_keep": OUTPUTS,
                  **{k: checked(lambda v, c: _positive(v, "a µP multiplier"), "archlang scales by positive factors")
                     for k in ("embedding_multiplier", "lm_head_multiplier", "key_multiplier",
                               "attention_in_multiplier", "attention_out_multiplier", "ssm_in_multiplier",
                               "ssm_out_multiplier")},
                  "mlp_multipliers": checked(lambda v, c: _multipliers_problem(v, 2)),
                  "ssm_multipliers": checked(lambda v, c: _multipliers_problem(v, 5)),
                  # written into the published configs by TII's training code; transformers' falcon_h1 reads none
                  **{k: irrelevant("not read by transformers' falcon_h1: every layer has attention, mamba2 and an MLP")
                     for k in ("attn_layer_indices", "mamba_use_mlp", "mlp_expansion_factor")}},
    # Kimi Linear: KDA layers and MLA layers without RoPE, DeepSeek-V3's experts. transformers' config
    # keeps DeepSeek-V3's names behind an attribute_map: its dict (and the published config.json)
    # says model_max_length, moe_renormalize, num_expert_group, num_experts, num_experts_per_token and
    # num_shared_experts; either spelling is classified.
    "kimi_linear": {**{k: MAPPED for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                           "rms_norm_eps", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim",
                                           "qk_rope_head_dim", "v_head_dim", "routed_scaling_factor",
                                           "moe_intermediate_size", "linear_head_dim", "linear_num_heads",
                                           "linear_conv_kernel_dim", "model_max_length", "max_position_embeddings",
                                           "moe_renormalize", "norm_topk_prob", "num_experts", "num_local_experts",
                                           "num_experts_per_token", "num_experts_per_tok", "num_shared_experts",
                                           "n_shared_experts", "topk_group")},
                    # silu is also the short conv's activation in the KDA layers
                    "hidden_act": only("silu", "swish", reason="archlang maps kimi_linear with silu (the experts' "
                                                               "swiglu and KDA's conv) only"),
                    "attention_bias": only(False, reason="archlang's mla has no biases"),
                    "attention_dropout": _MLA_DROPOUT, "pretraining_tp": _OLD_TP, "output_router_logits": NO_AUX_LOSS,
                    "num_key_value_heads": _same_as("num_attention_heads", "MLA has one key/value head per query "
                                                    "head (transformers' kimi_linear fails otherwise)"),
                    **{k: checked(lambda v, c: _groups_problem(_kimi_as_deepseek_v3(c)))
                       for k in ("num_expert_group", "n_group")},
                    "layer_types": checked(lambda v, c: _layer_types_problem(v, c, ("linear_attention",
                                                                                   "full_attention"))),
                    "mlp_layer_types": checked(lambda v, c: None if isinstance(v, list) and len(v) == c.get(
                        "num_hidden_layers") and all(t in ("dense", "sparse") for t in v) else
                        "it needs one of dense / sparse per layer (num_hidden_layers)"),
                    "linear_attn_config": checked(lambda v, c: _kimi_linear_attn_problem(v, c)),
                    "first_k_dense_replace": irrelevant("used only to fill mlp_layer_types, which is read"),
                    "mla_use_nope": only(True, reason="transformers' kimi_linear applies no RoPE in its MLA layers"),
                    "moe_layer_freq": only(1, reason="transformers' kimi_linear places experts by mlp_layer_types "
                                                     "only, which is every layer after the dense ones"),
                    "moe_router_activation_func": only("sigmoid", reason="transformers' kimi_linear scores experts "
                                                                         "with a sigmoid"),
                    "is_linear_attn": irrelevant("a flag of Moonshot's own code: layer_types says which layers are "
                                                 "linear"),
                    "num_nextn_predict_layers": irrelevant(
                        "the multi-token-prediction module is not part of the function HF computes: "
                        "KimiLinearForCausalLM never builds it"),
                    **{k: irrelevant("kimi_linear's attention has no RoPE (NoPE): transformers never reads it")
                       for k in ("rope_theta", "rope_scaling", "rope_parameters")},
                    "head_dim": irrelevant("transformers' kimi_linear never reads it: MLA's widths are "
                                           "qk_nope/qk_rope/v_head_dim, KDA's linear_head_dim"),
                    "qk_head_dim": irrelevant("derived from qk_nope_head_dim + qk_rope_head_dim; the modeling code "
                                              "computes it again itself"),
                    "tie_word_embeddings": irrelevant("transformers' KimiLinearForCausalLM ties nothing (its "
                                                      "_tied_weights_keys is empty): the LM head is its own tensor")},
    "electra": {**{k: MAPPED for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                       "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "embedding_size",
                                       "architectures", "classifier_dropout", "num_labels", "tie_word_embeddings")},
                "hidden_act": ACTIVATION,
                # the normalised embeddings (before their projection) and each sublayer's output
                "hidden_dropout_prob": dropout_into("embedding_dropout", "residual_dropout"),
                "attention_probs_dropout_prob": ATTENTION_DROPOUT,
                **{k: irrelevant("the sequence summary of ElectraForMultipleChoice, which the importer does not build")
                   for k in ("summary_type", "summary_use_proj", "summary_activation", "summary_last_dropout")},
                "problem_type": only(None, "single_label_classification", "regression",
                                     reason="archlang's classifier loss is single-label cross-entropy or, with one "
                                            "label, regression"),
                "is_decoder": only(False, reason="electra as a decoder (ElectraForCausalLM) is not mapped"),
                "add_cross_attention": only(False, reason="electra with cross-attention is not mapped")},
    "zamba2": {**{k: MAPPED for k in ("hidden_size", "intermediate_size", "num_attention_heads", "mamba_d_state",
                                      "mamba_d_conv", "mamba_expand", "mamba_ngroups", "n_mamba_heads", "chunk_size",
                                      "add_bias_linear", "num_mem_blocks", "use_shared_attention_adapter",
                                      "adapter_rank", "use_mem_rope", "rms_norm_eps", "max_position_embeddings",
                                      )},
               # transformers 5.23 ties weights all or nothing: untied, every hybrid layer gets its own
               # transformer, holding the adapters of the other uses of its block as dead weights
               "tie_word_embeddings": checked(lambda v, c: None if v or (c.get("num_mem_blocks") or 1) >= list(
                   c.get("layers_block_type") or ()).count("hybrid") else
                   "untied, transformers' zamba2 ties no shared block either, and each hybrid layer holds adapters "
                   "it never uses, which archlang has no place for (unless num_mem_blocks >= the hybrid layers)"),
               "rope_parameters": ROPE, "hidden_act": ACTIVATION, "attention_dropout": ATTENTION_DROPOUT,
               "layers_block_type": checked(lambda v, c: _layer_types_problem(
                   [{"mamba": "linear_attention"}.get(t, t) for t in v] if v is not None else None,
                   dict(c, num_hidden_layers=len(v or ())), ("linear_attention", "hybrid"))),
               "num_hidden_layers": irrelevant("transformers requires it to be the length of layers_block_type, "
                                                "whose layers it builds (read)"),
               # the adapters add 2·hidden_size channels to k and v: transformers computes them for mha only
               "num_key_value_heads": checked(lambda v, c: None if v in (None, c.get("num_attention_heads"))
                                              or not c.get("use_shared_attention_adapter") else
                                              "the shared attention adapters of k and v are 2 · hidden_size wide, "
                                              "which needs num_key_value_heads = num_attention_heads"),
               # the mixer clamps dt below at time_step_min (mapped), above at nothing
               "time_step_min": checked(lambda v, c: _positive(v, "time_step_min") if v else None),
               "use_long_context": irrelevant("transformers reads it only to raise max_position_embeddings, "
                                              "which is read"),
               "use_conv_bias": irrelevant("never read: transformers' zamba2 conv always has a bias"),
               "use_mamba_kernels": irrelevant("which implementation of the same mixer transformers runs"),
               "use_mem_eff_path": irrelevant("a fused kernel of the same mixer (training only)"),
               **{k: INIT for k in ("time_step_max", "time_step_floor")},
               "num_logits_to_keep": OUTPUTS,
               **{k: irrelevant("derived by transformers from the keys above (a written value is replaced)")
                  for k in ("attention_hidden_size", "attention_head_dim", "mamba_headdim", "kv_channels",
                            "num_query_groups", "hybrid_layer_ids")},
               # keys of Zyphra's config.json that transformers' zamba2 never reads
               "ffn_hidden_size": irrelevant("never read: the shared MLP is intermediate_size wide"),
               "use_shared_mlp_adapter": irrelevant("never read: transformers' zamba2 always builds the gate_up "
                                                    "adapters"),
               "time_step_limit": irrelevant("never read: the mixer clamps dt to [time_step_min, inf)")},
    "modernbert": {**{k: MAPPED for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                          "max_position_embeddings", "norm_eps", "norm_bias", "attention_bias",
                                          "mlp_bias", "decoder_bias", "classifier_bias", "local_attention",
                                          "architectures", "num_labels", "classifier_dropout", "tie_word_embeddings")},
                   "hidden_activation": ACTIVATION, "classifier_activation": ACTIVATION,
                   "classifier_pooling": only("cls", "mean", reason="ModernBERT pools the first token or the mean"),
                   "layer_types": checked(lambda v, c: _layer_types_problem(v, c, ("full_attention",
                                                                                    "sliding_attention"))),
                   "rope_parameters": checked(_rope_per_layer_type),
                   "embedding_dropout": dropout_into("embedding_dropout"),
                   # on the probabilities and again on Wo's output, where archlang drops only the former
                   "attention_dropout": no_dropout("ModernBERT drops the attention probabilities and the attention "
                                                   "output both; archlang's attention_dropout is the former only"),
                   "mlp_dropout": no_dropout("ModernBERT drops inside the GeGLU, before Wo"),
                   "problem_type": only(None, "single_label_classification", "regression",
                                        reason="archlang's classifier loss is single-label cross-entropy or, with "
                                               "one label, regression"),
                   "cls_token_id": TOKEN_ID, "initializer_cutoff_factor": INIT,
                   "deterministic_flash_attn": irrelevant("chooses a deterministic flash-attention kernel: the same "
                                                          "function"),
                   "sparse_prediction": irrelevant("with labels, ForMaskedLM returns the labelled tokens' logits "
                                                   "only; the loss is the same"),
                   "sparse_pred_ignore_index": irrelevant("the label ignored by sparse_prediction, a training option"),
                   # read by ModernBertConfig when it is built, into layer_types and rope_parameters (which are mapped)
                   **{k: irrelevant("folded into layer_types / rope_parameters when transformers builds the config")
                      for k in ("global_attn_every_n_layers", "global_rope_theta", "local_rope_theta")},
                   **{k: irrelevant("kept in published config.json files; ModernBERT's modeling code never reads it")
                      for k in ("layer_norm_eps", "position_embedding_type", "reference_compile",
                                "repad_logits_with_grad")}},
    # The Byte Latent Transformer: four sub-configs (patcher, local encoder, global transformer,
    # local decoder), each classified key by key in BLT_SUBCONFIGS.
    "blt": {"max_position_embeddings": MAPPED, "encoder_hash_byte_group_vocab": MAPPED,
            "encoder_hash_byte_group_nb_functions": MAPPED,
            "encoder_hash_byte_group_size": checked(lambda v, c: None if v is None or isinstance(v, list) and v and all(
                type(n) is int and n > 0 for n in v) else "it must be a non-empty list of positive n-gram lengths"),
            "cross_attn_k": checked(lambda v, c: _positive(v, "cross_attn_k")),
            "local_attention_window_len": checked(lambda v, c: None if v is None else _positive(v, "the window")),
            "max_patch_length": checked(lambda v, c: None if v is None else _positive(v, "max_patch_length")),
            "patching_mode": only("entropy", "byte", reason="transformers' blt patches by entropy, and every other "
                                                           "mode one byte per patch; archlang reads entropy and byte"),
            "patch_in_forward": checked(lambda v, c: None if v is False or c.get("patching_mode") == "entropy" else
                                        "with patching_mode other than entropy transformers builds an entropy model "
                                        "it never runs: set patch_in_forward to false"),
            # the patcher thresholds entropies only when given a patch_size (its value is not read)
            "patch_size": checked(lambda v, c: None if v is not None or not _blt_entropy(c) else
                                  "with patch_size none transformers runs the entropy model and then makes every byte "
                                  "a patch: set patching_mode to byte"),
            "patching_threshold": checked(lambda v, c: None if not _blt_entropy(c) or isinstance(v, (int, float))
                                          and not isinstance(v, bool) else "entropy patching needs a threshold"),
            "patching_batch_size": irrelevant("how many rows the entropy model runs at once: the same patches"),
            "tie_word_embeddings": only(False, reason="tied, transformers' blt makes the LM head the byte embedding "
                                                      "of the local encoder, which archlang's byte_latent has not"),
            "rope_parameters": irrelevant("no module reads the top-level one: each stack has its own"),
            **{name: checked(lambda v, c, name=name: _blt_sub_problem(name, v, c))
               for name in ("patcher_config", "encoder_config", "global_config", "decoder_config")}},
}

# The keys of blt's sub-configs, classified as TABLES classifies top-level keys.
_BLT_STACK = {**{k: MAPPED for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                     "intermediate_size", "rms_norm_eps")},
              "model_type": irrelevant("the sub-config's class"),
              "dtype": irrelevant("the model's dtype is the top-level dtype"),
              "vocab_size": _same_as("vocab_size", "one byte vocabulary is shared by every stack"),
              "rope_parameters": checked(lambda v, c: None if v is None or v.get("rope_type", "default") == "default"
                                         and set(v) <= {"rope_type", "rope_theta"} else
                                         "byte_latent stacks rotate with plain rope(theta = ...) only"),
              "hidden_act": only("silu", "swish", reason="archlang's byte_latent layers use SwiGLU"),
              "dropout": no_dropout("archlang's byte_latent runtime has no dropout"),
              "max_position_embeddings": irrelevant("read only by RoPE scalings, which are refused"),
              "head_dim": checked(lambda v, c: None if v is None or v == c.get("hidden_size", 0) // max(
                  c.get("num_attention_heads") or 1, 1) else "blt's attention is hidden_size // num_attention_heads "
                  "wide per head, and a different head_dim would change only its RoPE"),
              "tie_word_embeddings": irrelevant("transformers sets it to false in every blt sub-config"),
              "cross_attn_all_layers": MAPPED,
              "cross_attn_k": _same_as("cross_attn_k", "the cross-attention masks read the top-level cross_attn_k"),
              "sliding_window": MAPPED}
BLT_SUBCONFIGS: dict[str, dict[str, Key]] = {
    "patcher_config": _BLT_STACK,
    "encoder_config": {**_BLT_STACK, "hidden_size_global": irrelevant("not read by the local encoder"),
                       "sliding_window": irrelevant("BltConfig sets it to local_attention_window_len")},
    "decoder_config": {**_BLT_STACK, "hidden_size_global": MAPPED},
    "global_config": {**_BLT_STACK, "encoder_cross_output_size": irrelevant("BltConfig derives it from the encoder's "
                                                                            "width and cross_attn_k")},
}


def _blt_entropy(config: dict) -> bool:
    return config.get("patching_mode") == "entropy" and config.get("patch_in_forward") is not False


def _blt_sub_problem(name: str, value: Any, config: dict) -> str | None:
    """The first key of a blt sub-config that is unknown, or at a value archlang lacks."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return "it must be an object"
    keys = {**SHARED, **BLT_SUBCONFIGS[name]}
    for key, v in value.items():
        rule = keys.get(key)
        if rule is None:
            return f"its key {key!r} is not known to archlang's importer"
        # a sub-config's cross_attn_k and vocab_size are compared with the top level's
        problem = rule.check(v, config if key in ("cross_attn_k", "vocab_size") else value) if rule.check else None
        if problem:
            return f"{key} = {_shown(v)}: {problem}"
    if name == "decoder_config":
        enc, glob = config.get("encoder_config") or {}, config.get("global_config") or {}
        for key, other, what in (("hidden_size", enc, "the encoder's"), ("hidden_size_global", glob, "the global")):
            want = other.get("hidden_size") if other is glob else other.get(key)
            if want is not None and value.get(key) is not None and value[key] != want:
                return f"{key} = {value[key]} must be {what} hidden_size ({want})"
    return None


def _xlstm_width_problem(value: Any, config: dict, key: str) -> str | None:
    """transformers' xLSTMLayer takes int(hidden_size · factor) channels and splits them over num_heads."""
    hidden, heads = config.get("hidden_size"), config.get("num_heads")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return f"{key} must be a positive number"
    if not isinstance(hidden, int) or not isinstance(heads, int) or heads <= 0:
        return None  # their own checks report them
    width = int(hidden * value)
    if width == 0 or width % heads:
        return f"int(hidden_size · {key}) = {width} is not a positive multiple of num_heads ({heads})"
    return None


def _multipliers_problem(value: Any, n: int) -> str | None:
    """A list of n positive µP multipliers (Falcon-H1's mlp_multipliers, ssm_multipliers)."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == n
                         and all(_positive(v, "") is None for v in value)):
        return None
    return f"it must be a list of {n} positive numbers"


def _dt_limit_problem(value: Any) -> str | None:
    """(0, inf) is no clamp, (lo, inf) archlang's dt_limit = [lo, none]; else [lo, hi] needs a
    non-empty range."""
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            type(x) in (int, float) for x in value):
        return "time_step_limit must be two numbers, [low, high]"
    low, high = (float(x) for x in value)
    if not (0 <= low < high and low < float("inf")):
        return "archlang's dt_limit is a range [low, high] with 0 <= low < high (high may be inf)"
    return None


def _hunyuan_rope_problem(value: Any, config: dict) -> str | None:
    """Hunyuan's checkpoints label a fixed NTK base stretch `dynamic` with an `alpha`, which
    transformers computes as ntk_alpha, ignoring the type's other keys; anything else is a
    rope_parameters like any other."""
    if isinstance(value, dict) and value.get("rope_type", value.get("type")) == "dynamic" and value.get("alpha"):
        alpha = value["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 1:
            return f"rope_parameters['alpha'] must be a number >= 1, not {alpha!r}"
        unread = {"rope_type", "type", "rope_theta", "alpha", "factor", "beta_fast", "beta_slow", "mscale",
                  "mscale_all_dim", "original_max_position_embeddings", "partial_rotary_factor"}
        extra = sorted(set(value) - unread)
        if extra:
            return f"rope_parameters[{extra[0]!r}] has no archlang equivalent with an NTK alpha"
        if value.get("partial_rotary_factor") not in (None, 1, 1.0):
            return "partial RoPE with an NTK alpha is not mapped"
        return None
    return _rope_problem(value, config)


def _groups_problem(config: dict) -> str | None:
    """DeepSeek's expert groups as archlang's moe(groups, topk_groups) states them (transformers
    would fail or route differently otherwise)."""
    groups, kept, experts = config.get("n_group"), config.get("topk_group"), config.get("n_routed_experts")
    if not isinstance(groups, int) or not isinstance(kept, int) or groups < 1 or not 1 <= kept <= groups:
        return f"n_group ({groups}) and topk_group ({kept}) must be integers with 1 <= topk_group <= n_group"
    if not isinstance(experts, int) or experts % groups:
        return f"n_group ({groups}) must divide n_routed_experts ({experts})"
    top_k = config.get("num_experts_per_tok")
    if groups > 1 and isinstance(top_k, int) and top_k > kept * (experts // groups):
        return f"num_experts_per_tok ({top_k}) exceeds the {kept * (experts // groups)} experts of the kept groups"
    if groups > 1 and config.get("model_type") in ("deepseek_v3", "glm4_moe", "deepseek_v32") and experts // groups < 2:
        return "DeepSeek-V3's routing scores a group by its two best experts: each group needs at least 2"
    return None


def _kimi_as_deepseek_v3(config: dict) -> dict:
    """A kimi_linear config's routing keys under DeepSeek-V3's names (it routes as DeepSeek-V3 does)."""
    get = lambda *names, default=None: next((config[n] for n in names if n in config), default)  # noqa: E731
    return {"model_type": "deepseek_v3", "n_group": get("num_expert_group", "n_group", default=1),
            "topk_group": get("topk_group", default=1), "n_routed_experts": get("num_experts", "num_local_experts"),
            "num_experts_per_tok": get("num_experts_per_token", "num_experts_per_tok")}


# Moonshot's config.json keeps KDA's settings in linear_attn_config, which transformers reads into
# linear_num_heads, linear_head_dim, linear_conv_kernel_dim and layer_types (1-based layer lists).
_KIMI_LINEAR_ATTN_KEYS = {"num_heads", "head_dim", "short_conv_kernel_size", "full_attn_layers", "kda_layers"}


def _kimi_linear_attn_problem(value: Any, config: dict) -> str | None:
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        return "linear_attn_config must be an object"
    extra = sorted(set(value) - _KIMI_LINEAR_ATTN_KEYS)
    if extra:
        return f"linear_attn_config[{extra[0]!r}] is not read by transformers' kimi_linear"
    layers = config.get("num_hidden_layers")
    full, kda = value.get("full_attn_layers"), value.get("kda_layers")
    if (full is None) != (kda is None):
        return "linear_attn_config needs both full_attn_layers and kda_layers, or neither"
    if full is not None and not all(isinstance(x, list) and all(type(i) is int for i in x) for x in (full, kda)):
        return "full_attn_layers and kda_layers must be lists of layer numbers"
    if full is not None and sorted(full + kda) != list(range(1, (layers or 0) + 1)):
        return "full_attn_layers and kda_layers must number every layer once, from 1 to num_hidden_layers"
    return None


def _layer_types_problem(value: Any, config: dict, known: tuple[str, ...]) -> str | None:
    if value is None or len(value) != config.get("num_hidden_layers"):
        return "it needs one entry per layer (num_hidden_layers)"
    unknown = sorted(set(value) - set(known))
    return f"layer type {unknown[0]!r} is not mapped (this family has {', '.join(known)})" if unknown else None


def _positive(value: Any, what: str) -> str | None:
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else \
        f"{what} must be a positive number"


def _pos_att_type_problem(value: Any, config: dict) -> str | None:
    terms = [t.strip() for t in value.lower().split("|")] if isinstance(value, str) else value or []
    unknown = [t for t in terms if t not in ("c2p", "p2c")]
    return f"relative term {unknown[0]!r} is not mapped (archlang has c2p and p2c)" if unknown else None


def _norm_rel_ebd_problem(value: Any, config: dict) -> str | None:
    kinds = {k.strip() for k in str(value).lower().split("|")} - {"none", "layer_norm"}
    return f"norm_rel_ebd {sorted(kinds)[0]!r} is not mapped (archlang has none and layer_norm)" if kinds else None


# DeBERTa-v2/v3: the modeling code reads several keys that the config class does not declare
# (position_buckets, norm_rel_ebd, share_att_key, conv_*, embedding_size, attention_head_size, cls_dropout).
TABLES["deberta-v2"] = {
    **{k: MAPPED for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "architectures",
                           "num_labels", "tie_word_embeddings", "relative_attention", "max_relative_positions",
                           "position_biased_input", "position_buckets", "share_att_key", "cls_dropout")},
    # the attention output's dense layer reads hidden_size features: other head sizes do not run in transformers
    "attention_head_size": checked(lambda v, c: None if v == c.get("hidden_size", 0) // max(c.get("num_attention_heads")
                                                                                           or 1, 1) else
                                   "DeBERTa's attention output is hidden_size wide: heads · head size must equal it"),
    "hidden_act": ACTIVATION, "pooler_hidden_act": ACTIVATION,
    # DeBERTa drops the embeddings, each sublayer's output before its residual add, and the relative
    # embeddings each layer reads (archlang's disentangled attention drops them at residual_dropout)
    "hidden_dropout_prob": dropout_into("embedding_dropout", "residual_dropout"),
    "attention_probs_dropout_prob": ATTENTION_DROPOUT,
    "pooler_dropout": no_dropout("archlang's pooler has no dropout before its dense layer"),
    "pooler_hidden_size": _same_as("hidden_size", "archlang's pooler keeps the model's width"),
    "embedding_size": _same_as("hidden_size", "a projection of narrower DeBERTa embeddings (before their norm) is "
                                              "not mapped"),
    "legacy": irrelevant("chooses the masked-LM head's module names (cls.predictions or lm_predictions.lm_head); "
                         "both compute dense, activation, norm, the tied embeddings and a bias"),
    "pos_att_type": checked(_pos_att_type_problem),
    "norm_rel_ebd": checked(_norm_rel_ebd_problem),
    "conv_kernel_size": only(0, None, reason="DeBERTa-v2's convolution beside the first layer is not mapped"),
    "conv_groups": irrelevant("read by the convolution only, which conv_kernel_size (checked) leaves out"),
    "conv_act": irrelevant("read by the convolution only, which conv_kernel_size (checked) leaves out"),
    "problem_type": only(None, "single_label_classification", "regression",
                         reason="archlang's classifier loss is single-label cross-entropy or, with one label, "
                                "regression"),
}


def table(model_type: str) -> dict[str, Key]:
    return {**SHARED, **TABLES[model_type]}


def unsupported_model_type(model_type: Any, source: str | None = None) -> ArchError:
    where = f"{source}: " if source else ""
    return ArchError(f"{where}model_type {model_type!r} is not supported", kind="interop",
                     hint=f"supported model types: {', '.join(sorted(TABLES))}")


def check_keys(config: dict, source: str | None = None, text: str | None = None) -> None:
    """Refuse any key the importer would otherwise drop: unknown, or at a value archlang lacks."""
    model_type = config.get("model_type")
    if model_type not in TABLES:
        raise unsupported_model_type(model_type, source)
    keys = table(model_type)
    for name, value in config.items():
        rule = keys.get(name)
        shown = _shown(value)
        if rule is None:
            raise _unknown(model_type, name, value, source, text)
        if rule.check is not None:
            problem = rule.check(value, config)
            if problem:
                hint = (f"dropout acts in training only: set {name!r} to 0 in the config to import the model "
                        "without it (the same function in inference)") if rule.dropout else None
                raise _error(f"{model_type} config key {name!r} = {shown} cannot be expressed in archlang: {problem}",
                             source, text, name, hint=hint)


def _unknown(model_type: str, name: str, value: Any, source: str | None, text: str | None) -> ArchError:
    return _error(f"{model_type} config key {name!r} (= {_shown(value)}) is not known to archlang's importer", source,
                  text, name, hint="if it does not change what the network computes, list it as irrelevant in "
                                   "archlang/interop/hf_config.py; otherwise it needs a mapping")


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------- reading config.json

# Keys whose value may be null although their default is not (transformers fills them in).
_NULLABLE = {"head_dim", "sliding_window", "n_inner", "num_key_value_heads", "q_lora_rank", "num_decoder_layers",
             "final_logit_softcapping", "attn_logit_softcapping", "num_experts_per_tok", "rope_parameters", "dtype",
             "layer_types", "mlp_only_layers", "max_window_layers", "no_rope_layers",
             "mamba_d_ssm",  # falcon_h1: none takes the width from mamba_expand
             "local_attention_window_len"}  # blt: none attends over the whole causal context
# Older names that transformers moves to their current keys when it builds the config.
_LEGACY = {"torch_dtype": "dtype", "rope_theta": "rope_parameters", "rope_scaling": "rope_parameters",
           "rotary_pct": "rope_parameters", "rotary_emb_base": "rope_parameters"}  # the last two: GPT-NeoX
_LAYER_COUNTS = {"num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers"}
# Values transformers accepts besides the default's type.
_ALSO = {"mamba_dt_rank": ("auto",), "time_step_rank": ("auto",)}
# Integer keys that may also be one value per layer.
_PER_LAYER = {"moe_topk"}
# Keys whose default is a whole number but whose type is any number (MiniMax's residual factors).
_ANY_NUMBER = {"full_attn_alpha_factor", "full_attn_beta_factor", "linear_attn_alpha_factor",
               "linear_attn_beta_factor", "mlp_alpha_factor", "mlp_beta_factor"}


def _expected_type(default: Any) -> tuple[type, ...] | None:
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (int, float)
    if isinstance(default, str):
        return (str,)
    if isinstance(default, list):
        return (list,)
    if isinstance(default, dict):
        return (dict,)
    return None


def _type_name(types: tuple[type, ...]) -> str:
    return {(bool,): "true or false", (int,): "an integer", (int, float): "a number", (str,): "a string",
            (list,): "a list", (dict,): "an object"}[types]


_DEFAULTS: dict[str, dict] = {}


def defaults(model_type: str) -> dict:
    """The config class's own defaults, as to_dict() gives them."""
    if model_type not in _DEFAULTS:
        import transformers

        _DEFAULTS[model_type] = transformers.AutoConfig.for_model(model_type).to_dict()
    return _DEFAULTS[model_type]


def check_types(config: dict, source: str | None = None, text: str | None = None) -> None:
    """Each key archlang reads has the JSON type of its default (an integer for an integer, no
    `true` for a number, no "64" for 64), so a spec never receives a value of the wrong kind."""
    model_type = config.get("model_type")
    if model_type not in TABLES:
        raise unsupported_model_type(model_type, source)
    keys, base = table(model_type), defaults(model_type)
    for name, value in config.items():
        rule = keys.get(name)
        if rule is None and name not in _LEGACY:
            raise _unknown(model_type, name, value, source, text)  # before transformers trips over it
        if rule is None or rule.how == "irrelevant" or name not in base:
            continue
        types = (int, float) if name in _ANY_NUMBER else _expected_type(base[name])
        if types is None or value in _ALSO.get(name, ()) or (value is None and name in _NULLABLE):
            continue
        if name in _PER_LAYER and isinstance(value, list):  # its table's check reads the entries
            continue
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise _error(f"{model_type} config key {name!r} must be {_type_name(types)}, not {_shown(value)}",
                         source, text, name)
        if name in _LAYER_COUNTS and value > MAX_LAYERS:  # before transformers builds per-layer lists
            raise _error(f"{model_type} config key {name!r} = {value} is over archlang's {MAX_LAYERS} layers",
                         source, text, name)
        if name == "layer_types" and not all(isinstance(t, str) for t in value):
            raise _error("config key 'layer_types' must be a list of strings", source, text, name)
        if name == "mlp_only_layers" and not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise _error("config key 'mlp_only_layers' must be a list of integers", source, text, name)
        if name == "no_rope_layers" and not all(type(i) is int and i in (0, 1) for i in value):
            raise _error("config key 'no_rope_layers' must be a list of 0 (NoPE) and 1 (RoPE)", source, text, name)


def _error(message: str, source: str | None, text: str | None, key: str | None = None, hint: str | None = None):
    span = _locate(source, text, key) if key else None
    where = f"{source}: " if source and span is None else ""
    return ArchError(f"{where}{message}", span=span, hint=hint, kind="interop")


def _locate(source: str | None, text: str | None, key: str) -> Span | None:
    """Where a top-level key is written in the JSON text (its first occurrence), for the error."""
    if not source or not text:
        return None
    m = re.search(rf'"{re.escape(key)}"\s*:', text)
    if not m:
        return None
    line = text.count("\n", 0, m.start()) + 1
    column = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
    return Span(source, line, column, line, column + len(key) + 2)


def read_config(path: str | os.PathLike) -> dict:
    """A config.json as a dict, checked: a JSON object of UTF-8 text with a supported model_type
    and values of the right types. Every problem is an ArchError naming the file (and the key, or
    the line and column of a JSON syntax error)."""
    config, text = _read_object(path)
    config = _special_floats(config)
    source = str(path)
    if "model_type" not in config:
        raise ArchError(f"{source} has no 'model_type' key", kind="interop",
                        hint=f"a Hugging Face config names its model_type, one of: {', '.join(sorted(TABLES))}")
    check_types(config, source, text)
    return config


# transformers writes the floats JSON lacks as {"__float__": "Infinity"} (Mamba-2's time_step_limit).
_FLOAT_TAGS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def _special_floats(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"} and value["__float__"] in _FLOAT_TAGS:
            return _FLOAT_TAGS[value["__float__"]]
        return {k: _special_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_special_floats(v) for v in value]
    return value


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from a file (a checkpoint index), every problem an ArchError naming it."""
    return _read_object(path)[0]


def _read_object(path: str | os.PathLike) -> tuple[dict, str]:
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ArchError(f"cannot read {source}: {exc.strerror or exc}", kind="interop") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ArchError(f"{source} is not UTF-8 text (byte {data[exc.start]:#04x})", span=Span(source, line, column),
                        hint="a Hugging Face config.json is UTF-8 JSON", kind="interop") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchError(f"{source} is not valid JSON: {exc.msg}", span=Span(source, exc.lineno, exc.colno),
                        kind="interop") from None
    except RecursionError:
        raise ArchError(f"{source} is nested too deeply to be a Hugging Face config", kind="interop") from None
    if not isinstance(config, dict):
        raise ArchError(f"{source} must hold a JSON object, not a {type(config).__name__}",
                        span=Span(source, 1, 1), kind="interop")
    return config, text
