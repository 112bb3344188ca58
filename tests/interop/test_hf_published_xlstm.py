"""xLSTM from published Hugging Face configs: archlang's parameter count and recurrent state of the
imported NX-AI/xLSTM-7b equal transformers' (meta device, nothing downloaded), in either weight
mode; weight_mode "fused" (which transformers cannot initialise itself) against xLSTMForCausalLM,
logits and greedy decoding; the widths transformers derives; the config values archlang cannot
compute are refused naming the key; spec values xlstm lacks are refused on export."""

import json
import warnings

import pytest
import torch

from archlang.api import compile_spec, load_model
from archlang.compiler.facts import compute_facts
from archlang.interop.hf import from_hf, spec_from_config
from archlang.interop.hf_export import export_config
from archlang.spec.errors import ArchError

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

# NX-AI/xLSTM-7b's hyper-parameters, as its config.json gives them (the kernel names are those of
# transformers' native kernels, which compute the same function as the Triton ones it names).
XLSTM_7B = {
    "model_type": "xlstm", "vocab_size": 50304, "embedding_dim": 4096, "hidden_size": 4096, "num_blocks": 32,
    "num_hidden_layers": 32, "num_heads": 8, "use_bias": False, "add_out_norm": True, "norm_eps": 1e-06,
    "norm_reduction_force_float32": True, "qk_dim_factor": 0.5, "v_dim_factor": 1.0,
    "chunkwise_kernel": "chunkwise--native_autograd", "sequence_kernel": "native_sequence__native",
    "step_kernel": "native", "mode": "inference", "chunk_size": 64, "return_last_states": True,
    "autocast_kernel_dtype": "bfloat16", "eps": 1e-06, "inference_state_dtype": "float32",
    "ffn_proj_factor": 2.667, "ffn_round_up_to_multiple_of": 64, "gate_soft_cap": 15.0,
    "output_logit_soft_cap": 30.0, "weight_mode": "single", "tie_word_embeddings": False, "dtype": "bfloat16",
    "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
}


def _config(values: dict):
    return T.xLSTMConfig(**{k: v for k, v in values.items() if k != "model_type"})


def hf_count(config) -> int:
    with torch.device("meta"):
        model = T.xLSTMForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_xlstm_7b_parameter_count_and_state(tmp_path, weight_mode):
    values = dict(XLSTM_7B, weight_mode=weight_mode)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    text = spec_from_config(path, name="xlstm_7b")
    # q/k 4096 · 0.5 over 8 heads, v 4096 over 8; the FFN 4096 · 2.667 = 10924.03 rounded up to 64
    assert "ssm = mlstm(heads = 8, key_dim = 256, value_dim = 512, gate_softcap = 15" in text
    assert "ffn = swiglu(hidden = 10944)" in text and "logit_softcap = 30" in text
    facts = compute_facts(compile_spec(text).graph)
    assert facts.params_total == hf_count(_config(values)) == 6_865_424_896
    # per layer and head: C (256 x 512), n (256) and m (1), float32
    assert facts.ssm_state_bytes_per_sequence == 32 * 8 * (256 * 512 + 256 + 1) * 4
    assert facts.kv_cache_bytes_per_token == 0


@pytest.mark.parametrize("hidden,factor,multiple", [(4096, 2.667, 64), (128, 1.3, 64), (96, 2.0, 32), (100, 1.5, 7)])
def test_ffn_width_is_the_one_transformers_builds(hidden, factor, multiple):
    values = dict(model_type="xlstm", vocab_size=97, hidden_size=hidden, num_heads=2, num_hidden_layers=1,
                  ffn_proj_factor=factor, ffn_round_up_to_multiple_of=multiple)
    with torch.device("meta"):
        want = T.models.xlstm.modeling_xlstm.xLSTMFeedForward(_config(values)).up_proj_dim
    assert f"ffn = swiglu(hidden = {want})" in spec_from_config(values)


# ----------------------------------------------------------------------------- weight_mode fused

FUSED = dict(vocab_size=97, hidden_size=128, num_heads=4, num_hidden_layers=2, chunk_size=4, weight_mode="fused",
             v_dim_factor=1.5, gate_soft_cap=4.0, output_logit_soft_cap=3.0, pad_token_id=0)


def fused_model(monkeypatch, tie=False):
    """transformers' _init_weights fails on weight_mode fused (it slices the gates' bias by heads
    and adds a tensor of twice that): build without it, then draw every weight at random."""
    monkeypatch.setattr(T.xLSTMPreTrainedModel, "_init_weights", lambda self, module: None)
    torch.manual_seed(0)
    model = T.xLSTMForCausalLM(T.xLSTMConfig(**FUSED, tie_word_embeddings=tie)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.dim() >= 2 else 1.0) + (p.dim() == 1))
    return model


def test_fused_weights_match_logits(monkeypatch):
    hf = fused_model(monkeypatch)
    assert "backbone.blocks.0.mlstm_layer.qkv_opreact.weight" in dict(hf.named_parameters())
    ours = from_hf(hf).eval()
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_fused_weights_match_greedy_decoding(monkeypatch):
    hf = fused_model(monkeypatch)
    ours = from_hf(hf).eval()
    prompt = torch.randint(1, 97, (1, 6))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    assert torch.equal(ours.generate(prompt, 8), ref)


def test_tie_word_embeddings_ties_nothing_in_transformers(monkeypatch):
    """xLSTMForCausalLM has no _tied_weights_keys: the head stays its own tensor, and the import
    says so (an untied spec) rather than tying what transformers keeps apart."""
    hf = fused_model(monkeypatch, tie=True)
    assert not torch.equal(hf.lm_head.weight, hf.backbone.embeddings.weight)
    assert "tie_embeddings" not in spec_from_config(hf.config)
    ours = from_hf(hf).eval()
    ids = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- refusals

TINY = dict(model_type="xlstm", vocab_size=97, hidden_size=128, num_heads=2, num_hidden_layers=2)


@pytest.mark.parametrize("key,value,words", [
    ("use_bias", True, "biases on its RMSNorms"),
    ("norm_reduction_force_float32", False, "reduce in float32"),
    ("inference_state_dtype", "bfloat16", "state (C, n, m) in float32"),
    ("num_blocks", 3, "num_blocks blocks"),
    ("embedding_dim", 64, "hidden_size wide"),
    ("qk_dim_factor", 0.2, "not a positive multiple of num_heads"),
    ("v_dim_factor", -1.0, "positive number"),
])
def test_inexpressible_values_are_refused_naming_the_key(key, value, words):
    with pytest.raises(ArchError) as err:
        spec_from_config(dict(TINY, **{key: value}))
    assert key in str(err.value) and words in str(err.value)


def test_irrelevant_keys_change_nothing():
    other = dict(TINY, mode="train", chunkwise_kernel="parallel--native_autograd", max_inference_chunksize=8,
                 return_last_states=False, autocast_kernel_dtype="float32", add_out_norm=False)
    assert spec_from_config(other) == spec_from_config(TINY)


HEAD = "vocab = 97\n    d_model = 64\n    context = 64\n    dtype = fp32\n    logit_softcap = 3\n    final_norm = rmsnorm(eps = 1e-5)"
SSM = "mlstm(heads = 2, key_dim = 32, value_dim = 32, norm_eps = 1e-5)"


def _export_error(head=HEAD, ssm=SSM, extra="") -> str:
    text = (f"model m {{\n    {head}\n{extra}    block b {{\n        norm = rmsnorm(eps = 1e-5)\n        ssm = {ssm}\n"
            f"        ffn = swiglu(hidden = 96)\n    }}\n    layers = b * 2\n}}\n")
    with pytest.raises(ArchError) as err:
        export_config(load_model(text), "xlstm")
    return str(err.value)


@pytest.mark.parametrize("head,ssm,extra,words", [
    (HEAD, "mlstm(heads = 2, key_dim = 16, value_dim = 32, norm_eps = 1e-5)", "", "not a multiple of 64"),
    (HEAD, "mlstm(heads = 2, key_dim = 32, value_dim = 32, gate_softcap = none, norm_eps = 1e-5)", "",
     "uncapped gates"),
    (HEAD.replace("    logit_softcap = 3\n", ""), SSM, "", "uncapped logits"),
    (HEAD, SSM, "    tie_embeddings = true\n", "tied embeddings"),
    (HEAD, "mlstm(heads = 2, key_dim = 32, value_dim = 32, norm_eps = 1e-3)", "", "one norm_eps"),
])
def test_export_refuses_what_xlstm_lacks(head, ssm, extra, words):
    assert words in _export_error(head, ssm, extra)


def test_exported_widths_come_back_exactly():
    """d_model 96 and width 64: 64 / 96 is not exact in binary; int(96 · f) must still give 64."""
    text = ("model m {\n    vocab = 97\n    d_model = 96\n    context = 64\n    dtype = fp32\n    logit_softcap = 3\n"
            "    final_norm = rmsnorm(eps = 1e-5)\n    block b {\n        norm = rmsnorm(eps = 1e-5)\n"
            "        ssm = mlstm(heads = 2, key_dim = 32, value_dim = 64, norm_eps = 1e-5)\n"
            "        ffn = swiglu(hidden = 70)\n    }\n    layers = b * 2\n}\n")
    config = export_config(load_model(text), "xlstm")
    assert int(96 * config.qk_dim_factor) == 64 and int(96 * config.v_dim_factor) == 128
    assert "ffn = swiglu(hidden = 70)" in spec_from_config(config)


@pytest.mark.parametrize("ssm,words", [("slstm(heads = 4)", "the sLSTM has no Hugging Face equivalent"),
                                       ("s4d(state = 8)", "S4D has no Hugging Face equivalent")])
def test_mixers_without_a_family_are_refused_by_name(ssm, words):
    text = (f"model m {{\n    vocab = 97\n    d_model = 32\n    context = 64\n    final_norm = rmsnorm()\n"
            f"    block b {{\n        norm = rmsnorm()\n        ssm = {ssm}\n        ffn = swiglu(hidden = 64)\n"
            f"    }}\n    layers = b * 2\n}}\n")
    with pytest.raises(ArchError) as err:
        export_config(load_model(text))
    assert words in str(err.value) and err.value.span.line == 8
