"""Dropout keys of Hugging Face configs: mapped to embedding_dropout / attention_dropout /
residual_dropout where the family drops exactly those tensors, refused (unless zero) where it
drops something archlang does not, written back on export; and in training mode the same
random state gives the same output as transformers."""

import warnings

import pytest
import torch

from archlang.api import load_model
from archlang.interop.hf import from_hf, spec_from_config
from archlang.interop.hf_export import export_config
from archlang.spec.errors import ArchError

from .test_hf_parity import CASES, perturb

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore")

ATTENTION_ONLY = (dict(attention_dropout=0.2), (0.0, 0.2, 0.0))
# case of test_hf_parity → (its dropout keys, the spec's (embedding, attention, residual) dropouts)
MAPPED = {
    "gpt2": (dict(embd_pdrop=0.1, attn_pdrop=0.2, resid_pdrop=0.3), (0.1, 0.2, 0.3)),
    # one key for the normalised embeddings and every sublayer output, another for the probabilities
    "bert": (dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2), (0.1, 0.2, 0.1)),
    # Phi-3's modeling code never reads embd_pdrop
    "phi3": (dict(embd_pdrop=0.3, attention_dropout=0.2, resid_pdrop=0.1), (0.0, 0.2, 0.1)),
    **{case: ATTENTION_ONLY for case in ("llama", "mistral", "qwen2", "qwen3", "olmo2", "smollm3", "mixtral",
                                         "qwen2_moe", "gemma2", "gemma3_text", "jamba", "glm4_moe")},
}


def _dropouts(m):
    return m.embedding_dropout, m.attention_dropout, m.residual_dropout


@pytest.mark.parametrize("case", sorted(MAPPED))
def test_dropout_keys_map_to_the_model_and_back(case):
    config_cls, _, kwargs = CASES[case]
    keys, expected = MAPPED[case]
    config = config_cls(**kwargs, **keys)
    m = load_model(spec_from_config(config, name="m"))
    assert _dropouts(m) == expected
    exported = export_config(m, config.model_type)
    read = {k: v for k, v in keys.items() if not (case == "phi3" and k == "embd_pdrop")}
    assert {k: getattr(exported, k) for k in read} == read
    assert _dropouts(load_model(spec_from_config(exported, name="m"))) == expected


def test_zero_dropouts_write_nothing_into_the_spec():
    text = spec_from_config(T.GPT2Config(**CASES["gpt2"][2], embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))
    assert "dropout" not in text


@pytest.mark.parametrize("case,key", [("t5", "dropout_rate"), ("deepseek_v3", "attention_dropout")])
def test_a_dropout_archlang_does_not_place_is_refused_unless_zero(case, key):
    """t5 drops inside its FFNs and after its final norm too; archlang's MLA has no dropout."""
    config_cls, _, kwargs = CASES[case]
    with pytest.raises(ArchError) as err:
        spec_from_config(config_cls(**dict(kwargs, **{key: 0.1})))
    assert f"{key!r} = 0.1 cannot be expressed" in err.value.message
    assert f"set {key!r} to 0" in err.value.hint  # the way to import it for inference
    spec_from_config(config_cls(**dict(kwargs, **{key: 0.0})))


LLAMA = """model m {
    vocab = 97
    d_model = 32
    context = 64
    dtype = fp32
    DROPOUTS
    position = rope()
    final_norm = rmsnorm(eps = 1e-5)
    block layer {
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 48)
    }
    layers = layer * 2
}"""


def _llama(dropouts: str) -> str:
    return LLAMA.replace("DROPOUTS", dropouts)


def test_export_refuses_a_dropout_the_family_lacks_at_its_value():
    with pytest.raises(ArchError) as err:
        export_config(load_model(_llama("embedding_dropout = 0.1")), "llama")
    assert err.value.message.endswith("`embedding_dropout` (llama has no such dropout)")
    assert err.value.span.line == 6
    # residual dropout: phi3 is the llama-like family that has it (resid_pdrop)
    assert export_config(load_model(_llama("residual_dropout = 0.1"))).model_type == "phi3"
    bert = load_model(spec_from_config(T.BertConfig(**CASES["bert"][2]), name="m"))
    with pytest.raises(ArchError) as err:
        export_config(bert.model_copy(update={"residual_dropout": 0.3}), "bert")
    assert "differ (bert's hidden_dropout_prob sets both)" in err.value.message


def test_t5_export_writes_its_dropout_as_zero():
    m = load_model(spec_from_config(T.T5Config(**CASES["t5"][2]), name="m"))
    assert export_config(m).dropout_rate == 0.0  # transformers' default is 0.1


# ----------------------------------------------------------------------------- training mode


def _train_outputs(hf, ours, ids, seed):
    hf.train(), ours.train()
    torch.manual_seed(seed)
    out = hf(ids)
    expected = out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits
    torch.manual_seed(seed)
    got = ours(ids)
    return (got[0] if isinstance(got, tuple) else got), expected


@pytest.mark.parametrize("case", ["bert", "qwen3", "phi3"])
def test_training_draws_match_hugging_face(case):
    """Same random state, same dropout masks: HF draws its masks in the order archlang does (the
    embeddings, then per layer the attention probabilities (B, H, T, S) and each residual branch)."""
    config_cls, model_cls, kwargs = CASES[case]
    keys = MAPPED[case][0] if case != "qwen3" else dict(attention_dropout=0.3)
    config = config_cls(**kwargs, **keys)
    config._attn_implementation = "eager"  # SDPA draws its own masks
    torch.manual_seed(0)
    hf = perturb(model_cls(config))
    ours = from_hf(hf)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    got, expected = _train_outputs(hf, ours, ids, 7)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    other, _ = _train_outputs(hf, ours, ids, 8)
    assert (other - expected).abs().max() > 1e-3  # other draws: the dropout is really there


def test_exported_dropouts_train_like_the_spec(tmp_path):
    """A llama with attention and residual dropout is exported as phi3; transformers' model then
    draws the same masks as archlang's."""
    import archlang
    from archlang.api import build
    from archlang.interop.hf_export import export_hf

    text = _llama("attention_dropout = 0.2\n    residual_dropout = 0.1")
    torch.manual_seed(0)
    ours = build(text, passes="")
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    archlang.save(ours, tmp_path / "w.safetensors")
    assert export_hf(text, tmp_path / "hf", weights=tmp_path / "w.safetensors") == "phi3"
    theirs = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    got, expected = _train_outputs(theirs, ours, ids, 7)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_mapped_dropout_a_spec_writer_forgets_is_refused(monkeypatch):
    """A spec writer that leaves the dropout fields out (a new family's, say) cannot drop a
    mapped key silently: the written spec is compared with the config."""
    from archlang.interop import hf

    monkeypatch.setattr(hf, "_dropouts", lambda c: {})
    with pytest.raises(ArchError, match="'attention_dropout' = 0.2 did not reach the spec's `attention_dropout`"):
        spec_from_config(T.LlamaConfig(**CASES["llama"][2], attention_dropout=0.2))
    spec_from_config(T.LlamaConfig(**CASES["llama"][2]))
