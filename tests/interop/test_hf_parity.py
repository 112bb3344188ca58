"""Logit parity with Hugging Face transformers models holding the same (random) weights, float32,
atol 1e-4. The HF models are tiny random configs: nothing is downloaded. Every HF weight is
perturbed first: transformers initialises norms to 1 and biases to 0, which would hide a missing
or misplaced tensor."""

import warnings

import pytest
import torch

from archlang.interop.hf import from_hf, spec_from_config
from archlang.spec import ArchError


T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)

CASES = {
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, SMALL),
    "llama3-scaled-rope": (T.LlamaConfig, T.LlamaForCausalLM, dict(SMALL, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    # biases on q/k/v/o and the FFN, a head_dim other than d_model / heads, tied embeddings
    "llama-biases": (T.LlamaConfig, T.LlamaForCausalLM, dict(SMALL, attention_bias=True, mlp_bias=True, head_dim=16,
                                                             tie_word_embeddings=True)),
    "llama-linear-rope": (T.LlamaConfig, T.LlamaForCausalLM, dict(SMALL, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    # dynamic NTK grows its base only past max_position_embeddings, which is the spec's context: within it
    # this proves the mapping (the growth itself is proven against HF's rotary module in tests/runtime)
    "llama-dynamic-rope": (T.LlamaConfig, T.LlamaForCausalLM, dict(SMALL, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})),
    # LongRoPE with fused qkv and gate_up projections: within the original context (short factors) ...
    "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(SMALL, original_max_position_embeddings=32, pad_token_id=0,
                                                   rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                                    "short_factor": [1.0, 1.25, 1.5, 2.0],
                                                                    "long_factor": [1.0, 2.0, 4.0, 8.0]})),
    # ... and past it (long factors, and the attention factor of factor = 64 / 8)
    "phi3-long": (T.Phi3Config, T.Phi3ForCausalLM, dict(SMALL, original_max_position_embeddings=8, pad_token_id=0,
                                                        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                                         "short_factor": [1.0, 1.25, 1.5, 2.0],
                                                                         "long_factor": [1.0, 2.0, 4.0, 8.0]})),
    "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(SMALL, sliding_window=5)),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, SMALL),
    "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(SMALL, head_dim=16)),
    "qwen3-sliding-biases": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(
        SMALL, num_hidden_layers=3, use_sliding_window=True, sliding_window=5, max_window_layers=1, attention_bias=True)),
    "olmo2": (T.Olmo2Config, T.Olmo2ForCausalLM, SMALL),
    # every fourth layer without RoPE (NoPE)
    "smollm3": (T.SmolLM3Config, T.SmolLM3ForCausalLM, dict(SMALL, num_hidden_layers=4, attention_bias=True,
                                                                   pad_token_id=0)),
    "smollm3-nope-pattern": (T.SmolLM3Config, T.SmolLM3ForCausalLM, dict(SMALL, num_hidden_layers=3,
                                                                         no_rope_layers=[0, 1, 0], pad_token_id=0)),
    "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, dict(SMALL, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM, dict(SMALL, num_experts=4, num_experts_per_tok=2,
                                                                 moe_intermediate_size=16, shared_expert_intermediate_size=24)),
    "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM, dict(SMALL, head_dim=8, sliding_window=5, query_pre_attn_scalar=8)),
    # local and global layers with their own RoPE (the global one scaled), QK-norm with a unit offset
    "gemma3_text": (T.Gemma3TextConfig, T.Gemma3ForCausalLM, dict(
        SMALL, num_hidden_layers=3, head_dim=8, sliding_window=5, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0}})),
    "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    "jamba": (T.JambaConfig, T.JambaForCausalLM, dict(SMALL, num_hidden_layers=4, num_experts=4, attn_layer_period=2,
                                                      attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                                                      mamba_dt_rank=4)),
    "deepseek_v2": (T.DeepseekV2Config, T.DeepseekV2ForCausalLM, dict(
        SMALL, num_hidden_layers=3, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
        moe_intermediate_size=16, first_k_dense_replace=1)),
    "deepseek_v2-yarn-qlora": (T.DeepseekV2Config, T.DeepseekV2ForCausalLM, dict(
        SMALL, num_hidden_layers=3, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=12, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=4, n_shared_experts=2, num_experts_per_tok=2,
        moe_intermediate_size=16, first_k_dense_replace=1, routed_scaling_factor=1.5,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
                         "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32.0, "beta_slow": 1.0})),
    "deepseek_v2-group-limited": (T.DeepseekV2Config, T.DeepseekV2ForCausalLM, dict(
        SMALL, num_hidden_layers=2, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3,
        moe_intermediate_size=16, topk_method="group_limited_greedy", n_group=4, topk_group=2)),
    # MLA, sigmoid routing with the correction bias in 4 groups of 2 (2 kept), dense first layer
    "deepseek_v3": (T.DeepseekV3Config, T.DeepseekV3ForCausalLM, dict(
        SMALL, num_hidden_layers=3, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=12, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3,
        moe_intermediate_size=16, first_k_dense_replace=1, n_group=4, topk_group=2, routed_scaling_factor=2.5)),
    "deepseek_v3-halves-rope": (T.DeepseekV3Config, T.DeepseekV3ForCausalLM, dict(
        SMALL, num_hidden_layers=2, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=4, n_shared_experts=2, num_experts_per_tok=2,
        moe_intermediate_size=16, first_k_dense_replace=0, n_group=1, topk_group=1, norm_topk_prob=False,
        rope_interleave=False)),
    # partial RoPE (half the head), q/k/v biases without an o bias, grouped sigmoid routing
    "glm4_moe": (T.Glm4MoeConfig, T.Glm4MoeForCausalLM, dict(
        SMALL, num_hidden_layers=3, head_dim=16, attention_bias=True, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=3, moe_intermediate_size=16, first_k_dense_replace=1, n_group=4, topk_group=2,
        routed_scaling_factor=1.5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "partial_rotary_factor": 0.5})),
    # sinks, q/k/v/o biases, a head_dim other than d_model / heads, sliding and full layers, YaRN without
    # truncation, clamped-SwiGLU experts (a clamp small enough to act) with biases, a biased router
    "gpt_oss": (T.GptOssConfig, T.GptOssForCausalLM, dict(
        SMALL, num_hidden_layers=3, head_dim=16, sliding_window=4, num_local_experts=4, num_experts_per_tok=2,
        intermediate_size=24, swiglu_limit=0.05, swiglu_alpha=1.5,
        # a base and betas whose ramp bounds (0.42, 1.63) are not whole: truncation would move them
        rope_parameters={"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0, "beta_fast": 2.0,
                         "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 16})),
    # chunked RoPE layers with the L2 QK-norm, a NoPE layer with temperature tuning (a floor scale that acts
    # within the sequence), dense layers between MoE layers (intermediate_size_mlp), biases, llama3 RoPE
    "llama4_text": (T.Llama4TextConfig, T.Llama4ForCausalLM, dict(
        SMALL, num_hidden_layers=4, head_dim=16, intermediate_size=24, intermediate_size_mlp=40, num_local_experts=4,
        num_experts_per_tok=2, interleave_moe_layer_step=2, attention_chunk_size=4, attention_bias=True,
        floor_scale=3, attn_scale=0.5, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    # Scout's shape: every layer MoE with top-1 routing, no QK-norm nor temperature tuning, NoPE every other layer
    "llama4_text-top1-plain": (T.Llama4TextConfig, T.Llama4ForCausalLM, dict(
        SMALL, num_hidden_layers=4, head_dim=8, intermediate_size=24, intermediate_size_mlp=40, num_local_experts=4,
        num_experts_per_tok=1, no_rope_layer_interval=2, attention_chunk_size=5, use_qk_norm=False,
        attn_temperature_tuning=False)),
    "t5": (T.T5Config, T.T5ForConditionalGeneration, dict(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                                        num_heads=4, relative_attention_num_buckets=8,
                                                        relative_attention_max_distance=16, dropout_rate=0.0)),
    "t5-gated": (T.T5Config, T.T5ForConditionalGeneration, dict(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                                              num_decoder_layers=3, num_heads=4,
                                                              feed_forward_proj="gated-gelu", dropout_rate=0.0)),
    "bert": (T.BertConfig, T.BertModel, dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=64)),
    # two groups of B and C, biases on the projections, dt clamped, chunks shorter than the prompt
    "mamba2": (T.Mamba2Config, T.Mamba2ForCausalLM, dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_heads=8, head_dim=8, state_size=8, n_groups=2,
        chunk_size=4, use_bias=True, time_step_limit=(0.001, 0.5), pad_token_id=0)),
    # one group, no conv bias, tied embeddings, another head width, no clamp
    "mamba2-tied": (T.Mamba2Config, T.Mamba2ForCausalLM, dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=3, num_heads=4, head_dim=16, state_size=16, n_groups=1,
        chunk_size=8, use_conv_bias=False, tie_word_embeddings=True, layer_norm_epsilon=1e-6, pad_token_id=0)),
    # per-head QK-norm, a dense layer among the expert layers, renormalised top-k, head_dim != d_model / heads
    "qwen3_moe": (T.Qwen3MoeConfig, T.Qwen3MoeForCausalLM, dict(
        SMALL, num_hidden_layers=3, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        norm_topk_prob=True, mlp_only_layers=[1])),
    # every second layer an expert layer (decoder_sparse_step), all biases, a window on every layer
    "qwen3_moe-sliding-step": (T.Qwen3MoeConfig, T.Qwen3MoeForCausalLM, dict(
        SMALL, num_hidden_layers=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        decoder_sparse_step=2, attention_bias=True, use_sliding_window=True, sliding_window=5)),
    # QK-norm over the whole projections (k's narrower: GQA), biases, renormalised top-k
    "olmoe": (T.OlmoeConfig, T.OlmoeForCausalLM, dict(
        SMALL, num_experts=4, num_experts_per_tok=2, attention_bias=True, norm_topk_prob=True, pad_token_id=0)),
    "olmoe-plain": (T.OlmoeConfig, T.OlmoeForCausalLM, dict(
        SMALL, num_hidden_layers=1, num_key_value_heads=4, num_experts=4, num_experts_per_tok=3, pad_token_id=0)),
    # sliding and full layers with their own RoPE (YaRN on the full ones), biases, GQA
    "olmo3": (T.Olmo3Config, T.Olmo3ForCausalLM, dict(
        SMALL, num_hidden_layers=4, sliding_window=5, attention_bias=True, pad_token_id=0,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0,
                                            "original_max_position_embeddings": 16,
                                            "beta_fast": 32.0, "beta_slow": 1.0}})),
    "olmo3-default-pattern": (T.Olmo3Config, T.Olmo3ForCausalLM, dict(
        SMALL, num_hidden_layers=4, num_key_value_heads=4, sliding_window=4, pad_token_id=0)),
    # sliding layers with RoPE, a global NoPE layer (sliding_window_pattern), per-head QK-norm, output norms
    "exaone4": (T.Exaone4Config, T.Exaone4ForCausalLM, dict(
        SMALL, num_hidden_layers=3, head_dim=16, sliding_window=5, sliding_window_pattern=3, bos_token_id=None,
        eos_token_id=None)),
    # no window: RoPE on every layer
    "exaone4-no-window": (T.Exaone4Config, T.Exaone4ForCausalLM, dict(
        SMALL, sliding_window=None, layer_types=["full_attention"] * 2, bos_token_id=None, eos_token_id=None)),
    # pair-rotating RoPE, correction bias with a floor that acts, 2 shared experts, expert layers every
    # second layer from 1 to 3 (dense 0, 2 and 4)
    "ernie4_5_moe": (T.Ernie4_5_MoeConfig, T.Ernie4_5_MoeForCausalLM, dict(
        SMALL, num_hidden_layers=5, moe_num_experts=4, moe_k=2, moe_intermediate_size=16, moe_num_shared_experts=2,
        moe_layer_start_index=1, moe_layer_end_index=3, moe_layer_interval=2, moe_norm_min=0.5,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=None, eos_token_id=None)),
    "ernie4_5_moe-tied": (T.Ernie4_5_MoeConfig, T.Ernie4_5_MoeForCausalLM, dict(
        SMALL, moe_num_experts=4, moe_k=3, moe_intermediate_size=16, moe_num_shared_experts=0,
        moe_layer_start_index=0, pad_token_id=0, bos_token_id=None, eos_token_id=None)),
    # QK-norm after RoPE, a top-k per layer, biases, the NTK-alpha RoPE of Hunyuan's checkpoints
    "hunyuan_v1_moe": (T.HunYuanMoEV1Config, T.HunYuanMoEV1ForCausalLM, dict(
        SMALL, num_hidden_layers=3, head_dim=16, num_experts=4, moe_topk=[2, 1, 2], attention_bias=True,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "alpha": 100.0, "factor": 1.0},
        pad_token_id=0, bos_token_id=None, eos_token_id=None, eod_token_id=None, sep_token_id=None)),
    "hunyuan_v1_moe-plain": (T.HunYuanMoEV1Config, T.HunYuanMoEV1ForCausalLM, dict(
        SMALL, head_dim=8, num_experts=3, moe_topk=2, pad_token_id=0, bos_token_id=None, eos_token_id=None,
        eod_token_id=None, sep_token_id=None)),
    # Gemma 1: a head_dim other than d_model / heads, biases on q/k/v/o; and multi-query attention (2B)
    "gemma": (T.GemmaConfig, T.GemmaForCausalLM, dict(SMALL, head_dim=16, attention_bias=True)),
    "gemma-mqa": (T.GemmaConfig, T.GemmaForCausalLM, dict(SMALL, num_key_value_heads=1, head_dim=8,
                                                          tie_word_embeddings=False)),
    # LayerNorm with biases, every projection biased, a sliding window on all layers, dropout (off in eval)
    "starcoder2": (T.Starcoder2Config, T.Starcoder2ForCausalLM, dict(
        SMALL, sliding_window=5, residual_dropout=0.1, embedding_dropout=0.1, attention_dropout=0.1,
        bos_token_id=0, eos_token_id=0)),
    "starcoder2-no-bias-untied": (T.Starcoder2Config, T.Starcoder2ForCausalLM, dict(
        SMALL, use_bias=False, tie_word_embeddings=False, hidden_act="gelu", bos_token_id=0, eos_token_id=0)),
    # every multiplier away from 1 (logits divided by 8), biases on the attention and the FFN
    "granite": (T.GraniteConfig, T.GraniteForCausalLM, dict(
        SMALL, embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0078125,
        logits_scaling=8.0, attention_bias=True, mlp_bias=True)),
    "granite-tied": (T.GraniteConfig, T.GraniteForCausalLM, dict(
        SMALL, embedding_multiplier=3.5, residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=3.0,
        tie_word_embeddings=True)),
    "granitemoe": (T.GraniteMoeConfig, T.GraniteMoeForCausalLM, dict(
        SMALL, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2, embedding_multiplier=12.0,
        residual_multiplier=0.22, attention_multiplier=0.125, logits_scaling=6.0, attention_bias=True)),
    # parallel residual, a quarter of each head rotated, the fused per-head query_key_value
    "gpt_neox": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, hidden_dropout=0.1, attention_dropout=0.1,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    "gpt_neox-sequential-tied": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, use_parallel_residual=False, tie_word_embeddings=True, hidden_act="gelu_new")),
    "gpt_neox-no-attention-bias": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, attention_bias=False)),
    # DeepSeek-V3.2: the indexer keeps 4 of up to 16 keys (sparse from the 5th token on), its head
    # wider than the rotated part; YaRN with mscale_all_dim (the softmax scale), grouped routing
    "deepseek_v32": (T.DeepseekV32Config, T.DeepseekV32ForCausalLM, dict(
        SMALL, num_hidden_layers=3, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=12, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3,
        moe_intermediate_size=16, first_k_dense_replace=1, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        index_topk=4, index_n_heads=8, index_head_dim=16, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0})),
    # an MoE layer first, then dense, then MoE (mlp_layer_types); top-k at least the length: dense
    # attention; the indexer head as wide as the rotated part; ungrouped, unnormalised routing
    "deepseek_v32-pattern": (T.DeepseekV32Config, T.DeepseekV32ForCausalLM, dict(
        SMALL, num_hidden_layers=3, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=12, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=4, n_shared_experts=2, num_experts_per_tok=2,
        moe_intermediate_size=16, mlp_layer_types=["sparse", "dense", "sparse"], n_group=1, topk_group=1,
        norm_topk_prob=False, index_topk=64, index_n_heads=4, index_head_dim=8)),
    # Mamba-1: biases on the projections, a dt rank other than ceil(d / 16), a width written as
    # intermediate_size (3 · d: it replaces expand), untied; then no conv bias and tied embeddings
    "mamba": (T.MambaConfig, T.MambaForCausalLM, dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=8, time_step_rank=3, intermediate_size=96,
        use_bias=True, tie_word_embeddings=False, layer_norm_epsilon=1e-6)),
    "mamba-tied": (T.MambaConfig, T.MambaForCausalLM, dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=3, state_size=16, conv_kernel=3, use_conv_bias=False)),
    # Falcon-Mamba: weightless RMSNorms on dt, B and C with an eps large enough to act
    "falcon_mamba": (T.FalconMambaConfig, T.FalconMambaForCausalLM, dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=8, time_step_rank=4, mixer_rms_eps=0.05,
        use_bias=True, tie_word_embeddings=False)),
    "falcon_mamba-tied": (T.FalconMambaConfig, T.FalconMambaForCausalLM, dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=4, expand=16, intermediate_size=64)),
    # Qwen3-Next: three Gated DeltaNet layers (two value heads per key head) and a gated attention
    # layer (QK-norm, a quarter of each head rotated, biases), MoE with a gated shared expert, the
    # second layer dense (mlp_only_layers); 13 tokens run the chunked form over chunks of 64
    "qwen3_next": (T.Qwen3NextConfig, T.Qwen3NextForCausalLM, dict(
        SMALL, num_hidden_layers=4, head_dim=16, attention_bias=True, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=12, linear_conv_kernel_dim=3,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24,
        mlp_only_layers=[1])),
    # attention first, one value head per key head, MoE on every second layer, unnormalised top-k, tied
    "qwen3_next-pattern": (T.Qwen3NextConfig, T.Qwen3NextForCausalLM, dict(
        SMALL, num_hidden_layers=3, head_dim=8, layer_types=["full_attention", "linear_attention", "linear_attention"],
        linear_num_key_heads=4, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24,
        decoder_sparse_step=2, norm_topk_prob=False, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 0.5})),
    # Mamba-2, attention (no positions) and relu² MLP blocks; d_inner = 6 · 8 is no multiple of d_model,
    # two groups, a conv bias, chunks shorter than the prompt, dt clamped below at time_step_min
    "nemotron_h": (T.NemotronHConfig, T.NemotronHForCausalLM, dict(
        SMALL, head_dim=16, layers_block_type=["linear_attention", "mlp", "full_attention", "linear_attention", "mlp"],
        ssm_state_size=8, mamba_num_heads=6, mamba_head_dim=8, n_groups=2, chunk_size=4, time_step_min=0.05)),
    # biases on the mixer's projections and the MLP, no conv bias, tie_word_embeddings (which ties nothing), MQA,
    # a SiLU MLP
    "nemotron_h-biases-tied": (T.NemotronHConfig, T.NemotronHForCausalLM, dict(
        SMALL, num_key_value_heads=1, head_dim=8, layers_block_type=["full_attention", "linear_attention", "mlp"],
        ssm_state_size=16, mamba_num_heads=4, mamba_head_dim=16, n_groups=1, chunk_size=8, use_bias=True,
        mlp_bias=True, use_conv_bias=False, tie_word_embeddings=True, mlp_hidden_act="silu",
        pad_token_id=0)),
    # Nemotron 3's mixture layers: DeepSeek-V3 routing (sigmoid, correction bias, two of four groups, a
    # routed scale) over relu² experts, a relu² shared MLP with biases
    "nemotron_h-moe": (T.NemotronHConfig, T.NemotronHForCausalLM, dict(
        SMALL, head_dim=8, layers_block_type=["linear_attention", "moe", "full_attention", "moe"], ssm_state_size=8,
        mamba_num_heads=4, mamba_head_dim=16, n_groups=2, chunk_size=4, n_routed_experts=8, num_experts_per_tok=3,
        moe_intermediate_size=16, moe_shared_expert_intermediate_size=24, n_group=4, topk_group=2,
        routed_scaling_factor=2.5, norm_topk_prob=True, mlp_bias=True)),
    # Mamba-2 and attention layers with their own SwiGLU FFN, partial RoPE on the attention layers
    # only, two groups of B and C, dt clamped, chunks shorter than the prompt
    "bamba": (T.BambaConfig, T.BambaForCausalLM, dict(
        SMALL, num_hidden_layers=4, attn_layer_indices=[1, 3], mamba_n_heads=8, mamba_d_head=8, mamba_d_state=8,
        mamba_n_groups=2, mamba_chunk_size=4, time_step_limit=(0.001, 0.5), pad_token_id=0)),
    # every bias (attention, FFN, the mixer's projections), no conv bias, tied embeddings, full RoPE
    "bamba-biases-tied": (T.BambaConfig, T.BambaForCausalLM, dict(
        SMALL, num_hidden_layers=3, attn_layer_indices=[0], mamba_n_heads=4, mamba_d_head=16, mamba_d_state=16,
        mamba_n_groups=1, mamba_chunk_size=8, mamba_proj_bias=True, mamba_conv_bias=False, attention_bias=True,
        mlp_bias=True, tie_word_embeddings=True, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 1.0})),
    # Granite 4.0: Granite's four multipliers, experts beside a shared MLP, no positions (Granite 4.0's "nope")
    "granitemoehybrid": (T.GraniteMoeHybridConfig, T.GraniteMoeHybridForCausalLM, dict(
        SMALL, num_hidden_layers=3, layer_types=["mamba", "attention", "mamba"], mamba_n_heads=8, mamba_d_head=8,
        mamba_d_state=8, mamba_n_groups=2, mamba_chunk_size=4, num_local_experts=4, num_experts_per_tok=2,
        shared_intermediate_size=24, embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.3,
        logits_scaling=2.0, position_embedding_type="nope", pad_token_id=0)),
    # no experts (the shared MLP alone), RoPE over whole heads (a partial_rotary_factor transformers' granite
    # never reads), attention biases, the mixer's biases, dt clamped, tied embeddings
    "granitemoehybrid-dense-rope": (T.GraniteMoeHybridConfig, T.GraniteMoeHybridForCausalLM, dict(
        SMALL, num_hidden_layers=3, layer_types=["attention", "mamba", "attention"], mamba_n_heads=4, mamba_d_head=16,
        mamba_d_state=16, mamba_n_groups=1, mamba_chunk_size=8, num_local_experts=0, shared_intermediate_size=40,
        mamba_proj_bias=True, mamba_conv_bias=False, attention_bias=True, time_step_limit=(0.001, 0.5),
        position_embedding_type="rope", embedding_multiplier=2.0, logits_scaling=0.5, tie_word_embeddings=True,
        pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 0.5})),
    # short-conv and attention layers (layer_types), tied embeddings, the FFN width derived as
    # transformers does: int(2 · 50 / 3) = 33, int(1.5 · 33) = 49, rounded up to 16: 64
    "lfm2": (T.Lfm2Config, T.Lfm2ForCausalLM, dict(
        SMALL, intermediate_size=50, num_hidden_layers=4, layer_types=["conv", "full_attention", "conv", "conv"],
        block_ffn_dim_multiplier=1.5, block_multiple_of=16, pad_token_id=0)),
    # conv_bias (on in_proj, the conv and out_proj), a 4-tap conv, untied, the FFN width as written,
    # the attention layers given by full_attn_idxs
    "lfm2-bias-untied": (T.Lfm2Config, T.Lfm2ForCausalLM, dict(
        SMALL, num_hidden_layers=3, full_attn_idxs=[0], conv_bias=True, conv_L_cache=4, tie_word_embeddings=False,
        block_auto_adjust_ff_dim=False, norm_eps=1e-6, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0})),
    # mLSTM blocks (weight_mode single): 13 tokens run the chunkwise kernel on 12, the recurrent one on 1;
    # the FFN width 128 · 1.3 rounded up to 64: 192; gates and logits soft-capped
    "xlstm": (T.xLSTMConfig, T.xLSTMForCausalLM, dict(
        vocab_size=97, hidden_size=128, num_heads=2, num_hidden_layers=2, chunk_size=4, ffn_proj_factor=1.3,
        pad_token_id=0)),
    # value heads wider than d_model / heads, caps that bite, eps and norm_eps of their own (weight_mode
    # fused: tests/interop/test_hf_published_xlstm.py, as transformers cannot initialise it)
    "xlstm-capped": (T.xLSTMConfig, T.xLSTMForCausalLM, dict(
        vocab_size=97, hidden_size=128, num_heads=4, num_hidden_layers=3, chunk_size=8, v_dim_factor=1.5, ffn_proj_factor=2.0, ffn_round_up_to_multiple_of=32, gate_soft_cap=4.0,
        output_logit_soft_cap=2.0, eps=1e-5, norm_eps=1e-5, pad_token_id=0)),
    # RWKV-4 without rescaling, untied
    "rwkv": (T.RwkvConfig, T.RwkvForCausalLM, dict(vocab_size=97, hidden_size=32, num_hidden_layers=3,
                                                    intermediate_size=48, context_length=64, rescale_every=0)),
    # rescale_every = 2 over 5 layers: inference halves the hidden state twice, which archlang matches
    # exactly with the norms' eps times 4 per halving; tied embeddings, a layer_norm_epsilon that is
    # not ln_out's 1e-5
    "rwkv-rescaled-tied": (T.RwkvConfig, T.RwkvForCausalLM, dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=5, intermediate_size=40, context_length=64,
        rescale_every=2, tie_word_embeddings=True, layer_norm_epsilon=1e-3)),
    # a time mixing narrower than hidden_size (transformers then runs only without its cache)
    "rwkv-narrow": (T.RwkvConfig, T.RwkvForCausalLM, dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, attention_hidden_size=16, intermediate_size=48,
        context_length=64, rescale_every=1, layer_norm_epsilon=1e-6, use_cache=False)),
    # recurrent (RG-LRU wider than d_model) and local GQA layers cycled from block_types, a 5-token
    # window (generation runs past it), partial RoPE, q/k/v biases beside the always-biased o_proj,
    # a 3-tap conv, tied embeddings scaled by sqrt(32) as bfloat16, soft-capped logits
    "recurrent_gemma": (T.RecurrentGemmaConfig, T.RecurrentGemmaForCausalLM, dict(
        SMALL, num_hidden_layers=4, lru_width=48, attention_window_size=5, conv1d_width=3, attention_bias=True,
        block_types=["recurrent", "attention", "recurrent"], logits_soft_cap=5.0, pad_token_id=0)),
    # Griffin's MQA, lru_width = hidden_size, the default 4-tap conv and block pattern, untied, a
    # silu activation (the MLP's gate and the recurrent block's gate branch), full RoPE
    "recurrent_gemma-mqa-untied": (T.RecurrentGemmaConfig, T.RecurrentGemmaForCausalLM, dict(
        SMALL, num_hidden_layers=3, num_key_value_heads=1, attention_window_size=4, tie_word_embeddings=False,
        hidden_activation="silu", pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 1.0})),
    # lightning-attention and GQA layers (a window, a head_dim of its own), Mixtral-style experts, every
    # residual add weighed by its own alpha and beta, prefill across 4-token lightning blocks
    "minimax": (T.MiniMaxConfig, T.MiniMaxForCausalLM, dict(
        SMALL, num_hidden_layers=4, head_dim=16, num_local_experts=4, num_experts_per_tok=2, block_size=4,
        layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"],
        full_attn_alpha_factor=2.0, full_attn_beta_factor=0.5, linear_attn_alpha_factor=1.5,
        linear_attn_beta_factor=1.2, mlp_alpha_factor=3.0, mlp_beta_factor=0.7, sliding_window=5)),
    # the default layer pattern (full, linear, ...), unit factors, MHA, tied embeddings, top-1 routing
    "minimax-default-pattern-tied": (T.MiniMaxConfig, T.MiniMaxForCausalLM, dict(
        SMALL, num_hidden_layers=3, num_key_value_heads=4, num_local_experts=3, num_experts_per_tok=1,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # Falcon-H1: attention beside Mamba-2 in every layer, every µP multiplier away from 1, a mixer
    # width (mamba_d_ssm) unrelated to mamba_expand, two groups, the gated RMSNorm after the gate
    "falcon_h1": (T.FalconH1Config, T.FalconH1ForCausalLM, dict(
        SMALL, mamba_d_ssm=48, mamba_n_heads=6, mamba_d_state=8, mamba_n_groups=2, mamba_chunk_size=4,
        mamba_rms_norm=True, mamba_norm_before_gate=False, key_multiplier=0.7, attention_in_multiplier=0.6,
        attention_out_multiplier=1.3, ssm_in_multiplier=0.8, ssm_out_multiplier=1.2, mlp_multipliers=[0.9, 1.1],
        ssm_multipliers=[1.1, 0.9, 1.2, 0.8, 1.3], embedding_multiplier=2.0, lm_head_multiplier=0.5,
        pad_token_id=0)),
    # the gated RMSNorm before the gate, every bias (attention, FFN, the mixer's in/out projections),
    # no conv bias, tied embeddings, the width from mamba_expand, other multipliers
    "falcon_h1-norm-before-gate-biases-tied": (T.FalconH1Config, T.FalconH1ForCausalLM, dict(
        SMALL, num_hidden_layers=3, mamba_d_ssm=None, mamba_expand=2, mamba_n_heads=4, mamba_d_state=16,
        mamba_n_groups=1, mamba_chunk_size=8, mamba_rms_norm=True, mamba_norm_before_gate=True,
        mamba_proj_bias=True, projectors_bias=True, mamba_conv_bias=False, attention_bias=True, mlp_bias=True,
        tie_word_embeddings=True, key_multiplier=1.5, attention_out_multiplier=0.5, ssm_in_multiplier=1.25,
        mlp_multipliers=[1.2, 0.75], ssm_multipliers=[0.5, 1.5, 0.75, 1.25, 2.0], embedding_multiplier=0.5,
        lm_head_multiplier=3.0, pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 1000.0})),
    # no gated norm (y · silu(z)), dt clamped, no multiplier (transformers' defaults)
    "falcon_h1-plain-dt-clamp": (T.FalconH1Config, T.FalconH1ForCausalLM, dict(
        SMALL, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_state=8, mamba_n_groups=2, mamba_chunk_size=4,
        time_step_limit=(0.001, 0.5), pad_token_id=0)),
    # Kimi Linear: KDA layers (a decay per key channel, a 3-tap conv) around an MLA layer without
    # RoPE, a dense first layer, DeepSeek-V3's routing (sigmoid, correction bias, one of two groups)
    # with a shared expert; 13 tokens run the chunked form (chunks of 64)
    "kimi_linear": (T.KimiLinearConfig, T.KimiLinearForCausalLM, dict(
        SMALL, num_hidden_layers=4, num_key_value_heads=4, layer_types=["linear_attention", "linear_attention",
                                                                        "full_attention", "linear_attention"],
        mlp_layer_types=["dense", "sparse", "sparse", "sparse"], linear_num_heads=2, linear_head_dim=16,
        linear_conv_kernel_dim=3, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8,
        v_head_dim=8, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
        n_group=2, topk_group=1, routed_scaling_factor=2.5, pad_token_id=0)),
    # attention first with a query latent (q_lora_rank), KDA heads wider than d_model (4 x 16), every
    # layer MoE with two shared experts, unnormalised top-k, tie_word_embeddings (which ties nothing)
    "kimi_linear-q-lora": (T.KimiLinearConfig, T.KimiLinearForCausalLM, dict(
        SMALL, num_hidden_layers=3, num_key_value_heads=4, layer_types=["full_attention", "linear_attention",
                                                                        "linear_attention"],
        mlp_layer_types=["sparse"] * 3, linear_num_heads=4, linear_head_dim=16, kv_lora_rank=16, q_lora_rank=12,
        qk_rope_head_dim=4, qk_nope_head_dim=12, v_head_dim=8, num_local_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=16, n_shared_experts=2, n_group=1, topk_group=1, norm_topk_prob=False,
        routed_scaling_factor=1.0, tie_word_embeddings=True, pad_token_id=0)),
}


@torch.no_grad()
def perturb(hf_model, std: float = 0.1):
    """Add N(0, std) noise to every learnable weight of an HF model (tied weights once), so no
    norm stays at 1 and no bias at 0."""
    gen = torch.Generator().manual_seed(0)
    for p in hf_model.parameters():
        p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    for name, b in hf_model.named_buffers():
        if name.endswith("e_score_correction_bias"):  # DeepSeek-V3's router state, zero at init
            b.add_(torch.randn(b.shape, generator=gen, dtype=b.dtype) * std)
    return hf_model


def hf_model(case):
    config_cls, model_cls, kwargs = CASES[case]
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return perturb(model_cls(config)).eval()


def _pair(case):
    hf = hf_model(case)
    return hf, from_hf(hf).eval()


def test_perturbation_touches_every_weight():
    for case in ("llama-biases", "gemma2", "jamba", "bert", "t5-gated", "mamba2"):
        config_cls, model_cls, kwargs = CASES[case]
        torch.manual_seed(0)
        fresh = model_cls(config_cls(**kwargs))
        before = {k: v.clone() for k, v in fresh.named_parameters()}
        perturb(fresh)
        for name, p in fresh.named_parameters():
            assert (p != before[name]).all(), f"{case}: {name} kept its initial value somewhere"


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match(case):
    hf, ours = _pair(case)
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        if case.startswith("t5"):
            dec = torch.randint(0, 97, (2, 7))
            ref, got = hf(input_ids=ids, decoder_input_ids=dec), ours(dec, ids)
        else:
            ref, got = hf(ids), ours(ids)
    if case == "bert":
        torch.testing.assert_close(got[0], ref.last_hidden_state, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[1], ref.pooler_output, atol=1e-4, rtol=1e-4)
    else:
        torch.testing.assert_close(got, ref.logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["llama", "llama-biases", "mistral", "gemma2", "deepseek_v2", "deepseek_v3", "glm4_moe",
                                  "t5", "qwen3", "olmo2", "gemma3_text", "smollm3", "phi3", "phi3-long", "mamba2",
                                  "mamba2-tied", "gpt_oss", "llama4_text", "llama4_text-top1-plain",
                                  "gemma", "gemma-mqa", "starcoder2", "starcoder2-no-bias-untied",
                                  "granite", "granite-tied", "granitemoe", "gpt_neox", "gpt_neox-sequential-tied",
                                  "deepseek_v32", "mamba", "mamba-tied", "falcon_mamba", "falcon_mamba-tied",
                                  "lfm2", "lfm2-bias-untied", "xlstm", "xlstm-capped",
                                  "recurrent_gemma", "recurrent_gemma-mqa-untied", "minimax",
                                  "minimax-default-pattern-tied"])
def test_greedy_generation_matches(case):
    hf, ours = _pair(case)
    prompt = torch.randint(1, 97, (1, 6))
    extra = {"decoder_start_token_id": 0} if case == "t5" else {}
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=None, **extra)
    got = ours.generate(prompt, 10, decoder_start_token_id=0)
    assert torch.equal(got, ref)


def test_imported_spec_is_a_readable_spec():
    config = T.MixtralConfig(**CASES["mixtral"][2])
    text = spec_from_config(config, name="tiny_mixtral")
    assert "ffn = moe(experts = 4, top_k = 2, expert = swiglu(hidden = 48))" in text
    assert "layers = layer * 2" in text


@pytest.mark.parametrize("case,knob", [
    ("deepseek_v3", "e_score_correction_bias"), ("deepseek_v3", "n_group"), ("deepseek_v2-group-limited", "n_group"),
    ("glm4_moe", "e_score_correction_bias"), ("glm4_moe", "n_group"),
])
def test_deepseek_routing_parity_is_not_vacuous(case, knob):
    """The perturbed correction bias and the expert groups change which experts these tiny
    models choose, so the parity above depends on importing them right."""
    hf, ours = _pair(case)
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        ref = hf(ids).logits
        for layer in ours.layers:
            moe = getattr(layer, "moe", None)
            if moe is not None and knob == "n_group":
                moe.n_group = 1
            elif moe is not None:
                moe.e_score_correction_bias.zero_()
        assert not torch.allclose(ours(ids), ref, atol=1e-3)


def test_deepseek_v3_spec_states_the_routing():
    text = spec_from_config(T.DeepseekV3Config(**CASES["deepseek_v3"][2]), name="tiny_v3")
    assert ("router = sigmoid, correction_bias = true, groups = 4, topk_groups = 2" in text
            and "routed_scale = 2.5" in text and "layers = dense + sparse * 2" in text)


def test_smollm3_nope_layers_are_blocks_without_position():
    text = spec_from_config(T.SmolLM3Config(**CASES["smollm3-nope-pattern"][2]), name="tiny_smollm3")
    assert "position = none" in text and "layers = [layer_nope, layer, layer_nope]" in text
    short = dict(CASES["smollm3-nope-pattern"][2], no_rope_layers=[0, 1], model_type="smollm3")
    with pytest.raises(ArchError, match="transformers rejects"):  # it indexes past the list
        spec_from_config(short)
    with pytest.raises(ArchError, match="one entry per layer"):
        spec_from_config(dict(short, layer_types=["full_attention"] * 3))
