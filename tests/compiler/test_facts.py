"""Facts: parameter totals equal the real models' (counted independently from Hugging Face
models built on the meta device), active parameters, KV-cache bytes and FLOPs."""

import pytest
import torch

from archlang.api import compile_spec
from archlang.compiler import compute_facts

from ..conftest import EXAMPLES, SPECS, build_tiny

transformers = pytest.importorskip("transformers")

# Published totals, for the record; the test compares with the HF count below as well.
PUBLISHED = {
    "gpt2": 124_439_808, "llama3_8b": 8_030_261_248, "mistral_7b": 7_241_732_096, "mixtral_8x7b": 46_702_792_704,
    "gemma2_2b": 2_614_341_888, "bert_base": 109_482_240, "t5_small": 60_506_624,
    "deepseek_v3": 671_026_404_352,  # without the multi-token-prediction module, as transformers builds it
    "lfm2_1_2b": 1_170_340_608,
    "modernbert_base": 149_655_232,  # ModernBertForMaskedLM: 149,014,272 in the encoder
}


def hf_model(name: str):
    T = transformers
    if name == "gpt2":
        return T.GPT2Model, T.GPT2Config()
    if name == "llama3_8b":
        return T.LlamaForCausalLM, T.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
    if name == "mistral_7b":
        return T.MistralForCausalLM, T.MistralConfig()
    if name == "mixtral_8x7b":
        return T.MixtralForCausalLM, T.MixtralConfig()
    if name == "gemma2_2b":
        return T.Gemma2ForCausalLM, T.Gemma2Config(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                                   num_attention_heads=8, num_key_value_heads=4, head_dim=256)
    if name == "bert_base":
        return T.BertModel, T.BertConfig()
    if name == "albert_base":  # albert/albert-base-v2, with its masked-LM head
        return T.AlbertForMaskedLM, T.AlbertConfig(vocab_size=30000, embedding_size=128, hidden_size=768,
                                                   num_hidden_layers=12, num_attention_heads=12,
                                                   intermediate_size=3072, hidden_act="gelu_new")
    if name == "deberta_v3_base":  # microsoft/deberta-v3-base's config.json: 183,831,552 in DebertaV2Model
        return T.DebertaV2Model, T.DebertaV2Config(
            vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            max_position_embeddings=512, type_vocab_size=0, layer_norm_eps=1e-7, relative_attention=True,
            max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
            pos_att_type="p2c|c2p", position_biased_input=False)
    if name == "t5_small":
        return T.T5ForConditionalGeneration, T.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048,
                                                        num_layers=6, num_heads=8)
    if name == "deepseek_v2_lite":
        return T.DeepseekV2ForCausalLM, T.DeepseekV2Config(
            vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
            num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16, n_shared_experts=2,
            n_routed_experts=64, num_experts_per_tok=6, kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64,
            v_head_dim=128, qk_nope_head_dim=128, first_k_dense_replace=1)
    if name == "deepseek_v3":  # deepseek-ai/DeepSeek-V3's config.json (its rope_scaling changes no count)
        return T.DeepseekV3ForCausalLM, T.DeepseekV3Config(
            vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
            num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
            n_routed_experts=256, num_experts_per_tok=8, n_group=8, topk_group=4, routed_scaling_factor=2.5,
            kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128,
            first_k_dense_replace=3, norm_topk_prob=True, max_position_embeddings=163840, rms_norm_eps=1e-6,
            tie_word_embeddings=False, num_nextn_predict_layers=1)
    if name == "jamba":
        return T.JambaForCausalLM, T.JambaConfig()
    if name == "gemma3_27b":  # google/gemma-3-27b-it's text_config
        return T.Gemma3ForCausalLM, T.Gemma3TextConfig(
            vocab_size=262208, hidden_size=5376, intermediate_size=21504, num_hidden_layers=62, num_attention_heads=32,
            num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=168, sliding_window=1024,
            max_position_embeddings=131072, rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}})
    if name == "olmo2_7b":  # allenai/OLMo-2-1124-7B
        return T.Olmo2ForCausalLM, T.Olmo2Config(
            vocab_size=100352, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    if name == "mamba2_2_7b":  # state-spaces/mamba2-2.7b in transformers' terms
        return T.Mamba2ForCausalLM, T.Mamba2Config(
            vocab_size=50288, hidden_size=2560, num_hidden_layers=64, num_heads=80, head_dim=64, state_size=128,
            n_groups=1, expand=2, conv_kernel=4, tie_word_embeddings=True)
    if name == "gpt_oss_20b":  # openai/gpt-oss-20b's config.json
        return T.GptOssForCausalLM, T.GptOssConfig(
            vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64,
            num_key_value_heads=8, head_dim=64, sliding_window=128, num_local_experts=32, num_experts_per_tok=4,
            max_position_embeddings=131072, rope_parameters={
                "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 4096, "rope_theta": 150000.0})
    if name == "llama4_scout":  # meta-llama/Llama-4-Scout-17B-16E-Instruct's text_config
        return T.Llama4ForCausalLM, T.Llama4TextConfig(
            vocab_size=202048, hidden_size=5120, intermediate_size=8192, intermediate_size_mlp=16384,
            num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8, head_dim=128, num_local_experts=16,
            num_experts_per_tok=1, interleave_moe_layer_step=1, max_position_embeddings=10485760,
            rope_parameters={"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_theta": 500000.0})
    if name == "qwen3_30b_a3b":  # Qwen/Qwen3-30B-A3B's config.json
        return T.Qwen3MoeForCausalLM, T.Qwen3MoeConfig(
            vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
            num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
            norm_topk_prob=True, max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    if name == "qwen3_next_80b_a3b":  # Qwen/Qwen3-Next-80B-A3B-Instruct's config.json
        return T.Qwen3NextForCausalLM, T.Qwen3NextConfig(
            vocab_size=151936, hidden_size=2048, intermediate_size=5120, num_hidden_layers=48, num_attention_heads=16,
            num_key_value_heads=2, head_dim=256, linear_num_key_heads=16, linear_num_value_heads=32,
            linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4, num_experts=512,
            num_experts_per_tok=10, moe_intermediate_size=512, shared_expert_intermediate_size=512,
            norm_topk_prob=True, max_position_embeddings=262144, rms_norm_eps=1e-6, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25})
    if name == "nemotron_h_8b":  # nvidia/Nemotron-H-8B-Base-8K's config.json
        return T.NemotronHForCausalLM, T.NemotronHConfig(
            vocab_size=131072, hidden_size=4096, intermediate_size=21504, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, max_position_embeddings=8192, mlp_hidden_act="relu2",
            ssm_state_size=128, mamba_num_heads=128, mamba_head_dim=64, n_groups=8, conv_kernel=4, chunk_size=128,
            time_step_min=0.001, layer_norm_epsilon=1e-5, tie_word_embeddings=False,
            hybrid_override_pattern="M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-")
    if name == "lfm2_1_2b":  # LiquidAI/LFM2-1.2B's config.json (block_ff_dim is intermediate_size)
        return T.Lfm2ForCausalLM, T.Lfm2Config(
            vocab_size=65536, hidden_size=2048, intermediate_size=12288, num_hidden_layers=16, num_attention_heads=32,
            num_key_value_heads=8, full_attn_idxs=[2, 5, 8, 10, 12, 14], conv_L_cache=3, conv_bias=False,
            block_multiple_of=256, block_ffn_dim_multiplier=1.0, block_auto_adjust_ff_dim=True,
            max_position_embeddings=128000, norm_eps=1e-5, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    if name == "xlstm_7b":  # NX-AI/xLSTM-7b's config.json (transformers' xLSTMConfig defaults are its values)
        return T.xLSTMForCausalLM, T.xLSTMConfig(
            vocab_size=50304, hidden_size=4096, num_hidden_layers=32, num_heads=8, qk_dim_factor=0.5, v_dim_factor=1.0,
            ffn_proj_factor=2.667, ffn_round_up_to_multiple_of=64, gate_soft_cap=15.0, output_logit_soft_cap=30.0,
            norm_eps=1e-6, eps=1e-6, chunk_size=64, tie_word_embeddings=False)
    if name == "falcon_h1_7b":  # tiiuae/Falcon-H1-7B-Base's config.json (the multipliers add no weights)
        return T.FalconH1ForCausalLM, T.FalconH1Config(
            vocab_size=130049, hidden_size=3072, intermediate_size=12288, num_hidden_layers=44, num_attention_heads=12,
            num_key_value_heads=2, head_dim=128, max_position_embeddings=262144, mamba_d_ssm=3072, mamba_n_heads=24,
            mamba_d_head=128, mamba_n_groups=1, mamba_d_state=256, mamba_d_conv=4, mamba_chunk_size=256,
            mamba_rms_norm=True, mamba_norm_before_gate=False, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e11})
    if name == "kimi_linear_48b_a3b":  # moonshotai/Kimi-Linear-48B-A3B-Instruct's config.json (its linear_attn_config)
        full = [4, 8, 12, 16, 20, 24, 27]  # 1-based
        return T.KimiLinearForCausalLM, T.KimiLinearConfig(
            vocab_size=163840, hidden_size=2304, intermediate_size=9216, moe_intermediate_size=1024,
            num_hidden_layers=27, num_attention_heads=32, num_key_value_heads=32, kv_lora_rank=512, q_lora_rank=None,
            qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, num_local_experts=256, num_experts_per_tok=8,
            n_shared_experts=1, routed_scaling_factor=2.446, linear_num_heads=32, linear_head_dim=128,
            linear_conv_kernel_dim=4, max_position_embeddings=1048576, tie_word_embeddings=False,
            layer_types=["full_attention" if i + 1 in full else "linear_attention" for i in range(27)],
            mlp_layer_types=["dense"] + ["sparse"] * 26)
    if name == "zamba2_2_7b":  # Zyphra/Zamba2-2.7B's config.json (the class's defaults are its layer pattern)
        return T.Zamba2ForCausalLM, T.Zamba2Config(
            vocab_size=32000, hidden_size=2560, intermediate_size=10240, num_hidden_layers=54, mamba_d_state=64,
            mamba_expand=2, n_mamba_heads=80, num_attention_heads=32, num_mem_blocks=2, adapter_rank=128,
            use_shared_attention_adapter=False, use_mem_rope=False, tie_word_embeddings=True)
    if name == "modernbert_base":  # answerdotai/ModernBERT-base, with the masked-LM head its config names
        return T.ModernBertForMaskedLM, T.ModernBertConfig(
            vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12,
            max_position_embeddings=8192, local_attention=128, norm_bias=False, decoder_bias=True)
    if name == "blt_1b":  # facebook/blt-1b as transformers' converter writes it (FFNs 8/3 · width up to 256)
        def stack(hidden, layers, heads, ffn, theta, **extra):
            return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                    "intermediate_size": ffn, "rope_parameters": {"rope_type": "default", "rope_theta": theta}, **extra}

        return T.BltForCausalLM, T.BltConfig(
            vocab_size=260, max_position_embeddings=4096, patching_mode="entropy", patch_in_forward=True,
            patching_threshold=1.335442066192627, local_attention_window_len=512, cross_attn_k=2,
            encoder_hash_byte_group_size=[3, 4, 5, 6, 7, 8], encoder_hash_byte_group_vocab=500002,
            encoder_hash_byte_group_nb_functions=1,
            patcher_config=stack(768, 14, 12, 2048, 10000.0, sliding_window=512, max_position_embeddings=8192),
            encoder_config=stack(1024, 1, 16, 2816, 500000.0, cross_attn_all_layers=False, hidden_size_global=2048),
            global_config=stack(2048, 25, 16, 5632, 500000.0),
            decoder_config=stack(1024, 9, 16, 2816, 500000.0, cross_attn_all_layers=True, hidden_size_global=2048))
    raise KeyError(name)


def hf_param_count(name: str) -> int:
    cls, config = hf_model(name)
    with torch.device("meta"):
        model = cls(config)
    # Tied weights are one tensor: count unique storage, as the published totals do.
    return sum(p.numel() for p in model.parameters())


# Examples no Hugging Face model implements: their own tests check the count against a formula.
WITHOUT_HF = {"gau_base"}  # tests/runtime/test_gau.py


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.arch") if p.stem not in WITHOUT_HF))
def test_params_total_equals_the_real_model(name):
    facts = compute_facts(compile_spec(EXAMPLES / f"{name}.arch").graph)
    assert facts.params_total == hf_param_count(name)
    if name in PUBLISHED:
        assert facts.params_total == PUBLISHED[name]


def test_active_params_count_routed_top_k_and_shared_experts():
    f = compute_facts(compile_spec(EXAMPLES / "mixtral_8x7b.arch").graph)
    expert = 3 * 4096 * 14336
    assert f.params_total - f.params_active == 32 * (8 - 2) * expert
    d = compute_facts(compile_spec(EXAMPLES / "deepseek_v2_lite.arch").graph)
    assert d.params_total - d.params_active == 26 * (64 - 6) * 3 * 2048 * 1408
    v3 = compute_facts(compile_spec(EXAMPLES / "deepseek_v3.arch").graph)
    assert v3.params_total - v3.params_active == 58 * (256 - 8) * 3 * 7168 * 2048


def test_kv_cache_bytes():
    f = compute_facts(compile_spec(EXAMPLES / "llama3_8b.arch").graph)
    assert f.kv_cache_bytes_per_token == 32 * 2 * 8 * 128 * 2  # layers * (k, v) * kv_heads * head_dim * bf16
    assert compute_facts(compile_spec(EXAMPLES / "llama3_8b.arch").graph, dtype="fp32").kv_cache_bytes_per_token == 32 * 2 * 8 * 128 * 4
    mla = compute_facts(compile_spec(EXAMPLES / "deepseek_v2_lite.arch").graph)
    assert mla.kv_cache_bytes_per_token == 27 * (512 + 64) * 2
    jamba = compute_facts(compile_spec(EXAMPLES / "jamba.arch").graph)
    assert jamba.kv_cache_bytes_per_token == 4 * 2 * 8 * 128 * 2  # only the 4 attention layers
    assert jamba.ssm_state_bytes_per_sequence == 28 * (8192 * 16 + 8192 * 3) * 2
    assert compute_facts(compile_spec(EXAMPLES / "bert_base.arch").graph).kv_cache_bytes_per_token == 0


@pytest.mark.parametrize("spec,name,tokens", [
    ("tiny_llama.arch", "tiny_llama", 9), ("tiny_deepseek.arch", "tiny_deepseek", 9), ("tiny_jamba.arch", "tiny_jamba", 9),
])
def test_cache_allocates_what_stats_reports(spec, name, tokens):
    from archlang.runtime import Cache

    facts = compute_facts(compile_spec(SPECS / spec, model=name).graph, dtype="fp32")
    model = build_tiny(SPECS / spec, name).eval()
    cache = Cache()
    with torch.no_grad():
        model(torch.randint(0, 97, (1, tokens)), cache=cache)
    kv = sum(t.numel() * t.element_size() for s in cache.layers.values() for k, t in s.items() if k in ("k", "v", "latent", "k_pe"))
    state = sum(t.numel() * t.element_size() for s in cache.layers.values() for k, t in s.items() if k in ("conv", "ssm"))
    assert kv == tokens * facts.kv_cache_bytes_per_token
    assert state == facts.ssm_state_bytes_per_sequence


def test_flops_per_token_dense():
    g = compile_spec(EXAMPLES / "llama3_8b.arch").graph
    f = compute_facts(g, context=1)
    non_embedding = f.params_total - 128256 * 4096  # embedding lookups cost no FLOPs
    norms = 65 * 4096
    attention = 32 * 2 * 32 * 256 * 1  # one key of width 128 for scores and values
    assert f.flops_per_token == 2 * (non_embedding - norms) + attention
    assert compute_facts(g, context=4096).flops_per_token > f.flops_per_token


def test_kv_cache_at_context_caps_sliding_window_layers():
    """Mistral keeps 4096 tokens per layer however long the context; Llama keeps them all."""
    mistral = compute_facts(compile_spec(EXAMPLES / "mistral_7b.arch").graph)
    assert mistral.kv_cache_bytes_per_token == 32 * 2 * 8 * 128 * 2
    assert mistral.kv_cache_bytes_at_context == mistral.kv_cache_bytes_per_token * 4096
    assert compute_facts(compile_spec(EXAMPLES / "mistral_7b.arch").graph, context=1000).kv_cache_bytes_at_context \
        == mistral.kv_cache_bytes_per_token * 1000
    llama = compute_facts(compile_spec(EXAMPLES / "llama3_8b.arch").graph)
    assert llama.kv_cache_bytes_at_context == llama.kv_cache_bytes_per_token * 8192


@pytest.mark.parametrize("tokens", [4, 20])  # below and above tiny_mixtral's window of 6
def test_windowed_cache_holds_what_stats_reports(tokens):
    from archlang.runtime import Cache

    facts = compute_facts(compile_spec(SPECS / "tiny_mixtral.arch").graph, context=tokens, dtype="fp32")
    model = build_tiny(SPECS / "tiny_mixtral.arch", "tiny_mixtral").eval()
    cache = Cache()
    with torch.no_grad():
        model(torch.randint(0, 97, (1, tokens)), cache=cache)
    kv = sum(t.numel() * t.element_size() for s in cache.layers.values() for k, t in s.items() if k in ("k", "v"))
    assert kv == facts.kv_cache_bytes_at_context
