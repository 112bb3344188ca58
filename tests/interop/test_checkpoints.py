"""safetensors checkpoints: HF checkpoints load into archlang models, archlang models write
checkpoints that transformers' from_pretrained loads, and archlang's own files round-trip
across pass pipelines."""

import warnings

import pytest
import torch

import archlang
from archlang.interop.hf import from_hf
from archlang.spec.errors import ArchError

from ..conftest import SPECS, build_tiny
from .test_hf_parity import CASES, hf_model

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")


def _logits(model, ids, t5=False):
    with torch.no_grad():
        if t5:
            dec = ids[:, :5]
            out = model(input_ids=ids, decoder_input_ids=dec) if hasattr(model, "get_encoder") else model(dec, ids)
        else:
            out = model(ids)
    if isinstance(out, tuple):
        return out[0]
    return getattr(out, "logits", None) if hasattr(out, "logits") else getattr(out, "last_hidden_state", out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_checkpoint_round_trip(case, tmp_path):
    model_cls = CASES[case][1]
    hf = hf_model(case)
    ids = torch.randint(0, 97, (2, 9))
    t5 = case.startswith("t5")
    # saved before any forward: transformers' RWKV rescales its weights in place at its first
    # inference forward (rescale_every), and would save them rescaled
    hf.save_pretrained(tmp_path / "hf")  # HF writes safetensors; archlang reads them
    ref = _logits(hf, ids, t5)

    ours = archlang.load_hf_checkpoint(tmp_path / "hf").eval()
    torch.testing.assert_close(_logits(ours, ids, t5), ref, atol=1e-4, rtol=1e-4)

    archlang.save_hf_checkpoint(ours, hf.config, tmp_path / "ours")  # archlang writes; HF reads
    again = model_cls.from_pretrained(tmp_path / "ours").eval()
    torch.testing.assert_close(_logits(again, ids, t5), ref, atol=1e-4, rtol=1e-4)


def test_own_checkpoint_loads_across_pipelines(tmp_path):
    fused = build_tiny(SPECS / "tiny_jamba.arch", "tiny_jamba").eval()
    archlang.save(fused, tmp_path / "w.safetensors")
    unfused = build_tiny(SPECS / "tiny_jamba.arch", "tiny_jamba", passes="").eval()
    archlang.load(unfused, tmp_path / "w.safetensors")
    ids = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids), unfused(ids))
    assert not list(tmp_path.glob(".*tmp*"))


def test_from_hf_keeps_dtype():
    config = T.LlamaConfig(**CASES["llama"][2])
    hf = T.LlamaForCausalLM(config).to(torch.bfloat16)
    assert next(from_hf(hf).parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("model_case,config", [
    ("llama", T.LlamaConfig(**dict(CASES["llama"][2], num_hidden_layers=3))),  # 2-layer weights, 3-layer config
    ("qwen2", T.LlamaConfig(**CASES["llama"][2])),  # q/k/v biases that a LlamaConfig has no place for
    ("llama", T.LlamaConfig(**dict(CASES["llama"][2], intermediate_size=40))),  # FFN widths differ
    ("llama", T.LlamaConfig(**dict(CASES["llama"][2], tie_word_embeddings=True))),  # an LM head the config ties
])
def test_save_hf_checkpoint_refuses_a_config_that_does_not_fit(model_case, config, tmp_path):
    ours = from_hf(hf_model(model_case))
    with pytest.raises(ArchError) as err:
        archlang.save_hf_checkpoint(ours, config, tmp_path / "out")
    assert "does not describe this model's weights" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder


def test_checkpoint_folders_that_do_not_fit_are_arch_errors(tmp_path):
    biased = hf_model("llama-biases")
    biased.save_pretrained(tmp_path / "ok")
    T.LlamaConfig(**CASES["llama"][2]).save_pretrained(tmp_path / "no_bias")  # a config without the biases ...
    (tmp_path / "no_bias" / "model.safetensors").write_bytes((tmp_path / "ok" / "model.safetensors").read_bytes())
    with pytest.raises(ArchError, match="do not fit its config.json"):  # ... whose weights have them
        from_hf(tmp_path / "no_bias")
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "ok" / "model.safetensors")
    save_file({**state, "model.layers.0.self_attn.extra.weight": torch.ones(2)}, tmp_path / "ok" / "model.safetensors")
    with pytest.raises(ArchError, match="1 Hugging Face tensors have no place"):  # none may be dropped
        from_hf(tmp_path / "ok")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[]")
    with pytest.raises(ArchError, match="must hold a JSON object"):
        from_hf(tmp_path / "list")
    (tmp_path / "ok" / "model.safetensors").unlink()
    with pytest.raises(ArchError, match="cannot read the weights"):
        from_hf(str(tmp_path / "ok"))
