"""The blt family: a Hugging Face BltForCausalLM imported through its config and weights gives
its logits (every weight perturbed), every key of its config and sub-configs is classified, and
what archlang cannot compute is refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from archlang.interop import hf_config
from archlang.interop.hf import from_hf, spec_from_config
from archlang.spec.errors import ArchError

from tests.runtime.test_blt import TOKENS, _threshold_between, hf_config as tiny_config, hf_pair

T = pytest.importorskip("transformers")


def _imported(config):
    from transformers import BltForCausalLM

    from tests.interop.test_hf_parity import perturb

    torch.manual_seed(0)
    hf = perturb(BltForCausalLM(config).eval())
    return hf, from_hf(hf).eval()


@pytest.mark.parametrize("patching", ["entropy", "byte"])
def test_from_hf_gives_hf_logits(patching):
    config = tiny_config(patching=patching, encoder_all=patching == "byte", decoder_all=patching == "entropy")
    if patching == "entropy":  # a threshold away from every entropy, so rounding moves no boundary
        hf, _ = hf_pair(config)
        config = tiny_config(patching=patching, encoder_all=False, decoder_all=True,
                             threshold=_threshold_between(hf, TOKENS))
    hf, ours = _imported(config)
    with torch.no_grad():
        torch.testing.assert_close(ours(TOKENS), hf(TOKENS, use_cache=False).logits, atol=1e-4, rtol=0)
    if patching == "entropy":
        assert 2 < ours.blt.patch_lengths(TOKENS).shape[1] < TOKENS.shape[1]


def test_imported_spec_says_what_the_config_says():
    text = spec_from_config(tiny_config(threshold=1.5, max_patch_length=8))
    for line in ("family = byte_latent", "global_d_model = 48", "ngrams = [3, 4, 5]", "hash_vocab = 97",
                 "hash_functions = 2", "threshold = 1.5", "entropy_window = 5", "max_patch = 8", "window = 6",
                 "encoder_cross = all", "entropy_layers = entropy * 2", "global_layers = latent * 2",
                 "attention = mha(heads = 4, head_dim = 12)", "position = rope(theta = 20000)"):
        assert line in text, line
    assert "entropy" not in spec_from_config(tiny_config(patching="byte")).split("patching = bytes")[1]
    # config.json's null window (attend over the whole causal context) is a value, not a type error
    assert "window = none" in spec_from_config(tiny_config(window=None).to_dict())


@pytest.mark.parametrize("sub", sorted(hf_config.BLT_SUBCONFIGS))
def test_every_sub_config_key_is_classified(sub):
    keys = T.AutoConfig.for_model("blt").to_dict()[sub]
    table = {**hf_config.SHARED, **hf_config.BLT_SUBCONFIGS[sub]}
    assert not set(keys) - set(table), sorted(set(keys) - set(table))
    for name, rule in hf_config.BLT_SUBCONFIGS[sub].items():
        assert rule.how != "irrelevant" or rule.reason, f"{sub}.{name}"


def _refused(**overrides) -> str:
    config = tiny_config(**overrides).to_dict()
    with pytest.raises(ArchError) as err:
        spec_from_config(config)
    return str(err.value)


def _with_sub(sub: str, **values):
    config = tiny_config().to_dict()
    config[sub] = {**config[sub], **values}
    with pytest.raises(ArchError) as err:
        spec_from_config(config)
    return str(err.value)


@pytest.mark.parametrize("overrides,needle", [
    (dict(patching_mode="space", patch_in_forward=False), "'patching_mode'"),
    (dict(tie_word_embeddings=True), "'tie_word_embeddings'"),
    (dict(patching="byte", patch_in_forward=True), "'patch_in_forward'"),  # an entropy model built, never run
    (dict(patch_size=None), "'patch_size'"),
])
def test_values_archlang_lacks_are_refused(overrides, needle):
    assert needle in _refused(**overrides)


@pytest.mark.parametrize("sub,values,needle", [
    ("encoder_config", dict(hidden_act="gelu"), "hidden_act"),
    ("global_config", dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}), "rope_parameters"),
    ("decoder_config", dict(dropout=0.1), "dropout"),
    ("decoder_config", dict(hidden_size_global=64), "hidden_size_global"),
    ("encoder_config", dict(cross_attn_k=3), "cross_attn_k"),
    ("patcher_config", dict(vocab_size=300), "vocab_size"),
    ("patcher_config", dict(some_new_switch=1), "'some_new_switch'"),
])
def test_sub_config_values_archlang_lacks_are_refused(sub, values, needle):
    message = _with_sub(sub, **values)
    assert f"'{sub}'" in message and needle in message, message


def test_published_blt_1b_count_equals_transformers():
    """facebook/blt-1b's hyper-parameters (written out in tests/compiler/test_facts.py): the
    imported spec's params_total equals transformers' meta-device count, and is the example's."""
    from pathlib import Path

    from archlang.api import compile_spec
    from archlang.compiler.facts import compute_facts

    from tests.compiler.test_facts import hf_model, hf_param_count

    _, config = hf_model("blt_1b")
    facts = compute_facts(compile_spec(spec_from_config(config, name="blt_1b")).graph)
    assert facts.params_total == hf_param_count("blt_1b") == 4_633_391_872
    example = Path(__file__).parents[2] / "examples" / "blt_1b.arch"
    assert compute_facts(compile_spec(example).graph).params_total == facts.params_total


def test_stats_table_shows_flops_per_patch(capsys):
    from pathlib import Path

    from archlang.cli import main

    assert main(["stats", str(Path(__file__).parents[2] / "examples" / "blt_1b.arch")]) == 0
    assert "FLOPs / patch (forward, 4.5 bytes)" in capsys.readouterr().out


# ---------------------------------------------------------------------------- export
SPEC = (Path(__file__).parents[1] / "specs" / "byte_latent" / "blt_tiny.arch").read_text()
# threshold 0: every byte starts a patch whatever the (perturbed) entropy model predicts, so a
# rounding difference cannot move a boundary; the entropy model is still exported and run
EXPORTED = {
    "entropy": SPEC.replace("threshold = 1.3", "threshold = 0.0"),
    "bytes": SPEC.replace("patching = entropy,", "patching = bytes,").replace("threshold = 1.3,", "")
    .replace("entropy_d_model = 32,", "").replace("entropy_window = 5,", "")
    .replace("entropy_layers = entropy * 2", "").replace("encoder_cross = all", "encoder_cross = last")
    .replace("window = 6", "window = none, max_patch = 3"),
}


@pytest.mark.parametrize("case", sorted(EXPORTED))
def test_export_round_trips_and_loads_in_transformers(case, tmp_path):
    import archlang
    from archlang.api import build, load_model
    from archlang.interop.hf_export import _ir_text, export_config, export_hf

    from tests.interop.test_hf_parity import perturb

    spec = EXPORTED[case]
    m = load_model(spec)
    config = export_config(m)
    assert config.model_type == "blt"
    assert _ir_text(load_model(spec_from_config(config, name="back"))) == _ir_text(m)
    torch.manual_seed(0)
    ours = perturb(build(spec, passes="", dtype=torch.float32)).eval()
    archlang.save(ours, tmp_path / "w.safetensors")
    assert export_hf(spec, tmp_path / "hf", weights=tmp_path / "w.safetensors") == "blt"
    theirs, info = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    back = from_hf(tmp_path / "hf").eval()  # and the folder imports back: config.json and safetensors
    with torch.no_grad():
        want = ours(TOKENS)
        torch.testing.assert_close(want, theirs.eval()(TOKENS, use_cache=False).logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(back(TOKENS), want, atol=1e-5, rtol=0)


def test_mean_patch_is_refused_on_export():
    from archlang.api import load_model
    from archlang.interop.hf_export import export_config

    with pytest.raises(ArchError, match="mean_patch"):
        export_config(load_model(SPEC.replace("threshold = 1.3,", "threshold = 1.3, mean_patch = 6,")))
