"""ModernBERT against Hugging Face's classes: the base model's hidden states, the masked-LM head
(ModernBertForMaskedLM) and the sequence classifier with both poolings
(ModernBertForSequenceClassification), every weight perturbed, on a padded batch longer than the
local window; a padded row equals the row run alone; export and from_pretrained; the published
base count; and what the importer and the language refuse."""

import pytest
import torch

T = pytest.importorskip("transformers")

from archlang.api import build, compile_spec, load_model  # noqa: E402
from archlang.checkpoint import save  # noqa: E402
from archlang.compiler.facts import compute_facts  # noqa: E402
from archlang.interop.hf import from_hf, spec_from_config  # noqa: E402
from archlang.interop.hf_export import export_config, export_hf  # noqa: E402
from archlang.spec import ArchError  # noqa: E402

from .test_hf_parity import perturb  # noqa: E402

VOCAB = 97
TOL = dict(atol=1e-4, rtol=1e-4)
# Every bias switched on, its own RoPE base per layer type, a local window of ±3 tokens: the
# first layer is global, then two local layers and a global one.
OPTIONS = {"biased": dict(norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True,
                          global_rope_theta=1000.0, local_rope_theta=50.0, hidden_activation="gelu_pytorch_tanh"),
           "default": {}}


def config(options: str = "biased", **kw):
    return T.ModernBertConfig(**dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=5,
                                     num_attention_heads=4, max_position_embeddings=64, local_attention=6,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
                              | OPTIONS[options] | kw)


def pair(cls, options: str = "biased", **kw):
    torch.manual_seed(0)
    with torch.no_grad():
        hf = perturb(cls(config(options, **kw))).eval()
    return hf, from_hf(hf).eval()


def batch():
    """Two rows of 20 tokens (past the ±3 window), the second padded on the right from 13."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 20), generator=g)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 13:] = 0
    return ids, mask


@pytest.mark.parametrize("options", sorted(OPTIONS))
def test_the_base_models_hidden_states_equal_hf(options):
    hf, ours = pair(T.ModernBertModel, options)
    ids, mask = batch()
    with torch.no_grad():
        want = hf(ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask)
    keep = mask.bool()  # padded positions' states are not results in either
    torch.testing.assert_close(got[keep], want[keep], **TOL)


@pytest.mark.parametrize("options,tied,decoder_bias", [("biased", True, True), ("default", False, False)])
def test_masked_lm_logits_and_loss_equal_hf(options, tied, decoder_bias):
    hf, ours = pair(T.ModernBertForMaskedLM, options, tie_word_embeddings=tied, decoder_bias=decoder_bias)
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[:, [1, 4, 11]] = ids[:, [1, 4, 11]]
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, labels=labels)
        got = ours(ids, attention_mask=mask)
        keep = mask.bool()
        torch.testing.assert_close(got[keep], want.logits[keep], **TOL)
        torch.testing.assert_close(ours.loss(ids, labels, attention_mask=mask), want.loss, **TOL)
    assert ours.config["head"] == {"kind": "mlm"} and ours.config["tie_embeddings"] == tied


@pytest.mark.parametrize("pooling,labels", [("cls", 3), ("mean", 3),
                                            pytest.param("mean", 1, marks=pytest.mark.slow)])
def test_sequence_classification_logits_and_loss_equal_hf(pooling, labels):
    hf, ours = pair(T.ModernBertForSequenceClassification, classifier_pooling=pooling, num_labels=labels,
                    classifier_dropout=0.2)
    ids, mask = batch()
    target = torch.tensor([labels - 1, 0]) if labels > 1 else torch.tensor([0.5, -1.0])
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, labels=target)
        got = ours(ids, attention_mask=mask)
        torch.testing.assert_close(got, want.logits, **TOL)
        torch.testing.assert_close(ours.loss(ids, target, attention_mask=mask), want.loss, **TOL)


@pytest.mark.parametrize("cls,kw", [(T.ModernBertModel, {}),
                                    pytest.param(T.ModernBertForSequenceClassification, {"classifier_pooling": "mean"},
                                                 marks=pytest.mark.slow)])
def test_a_padded_row_equals_the_row_run_alone(cls, kw):
    _, ours = pair(cls, **kw)
    ids, mask = batch()
    with torch.no_grad():
        padded = ours(ids, attention_mask=mask)[1]
        alone = ours(ids[1:, :13])[0]
    if padded.dim() == 2:  # hidden states: the valid tokens
        padded = padded[:13]
    torch.testing.assert_close(padded, alone, **TOL)


@pytest.mark.parametrize("cls,kw", [pytest.param(T.ModernBertModel, {}, marks=pytest.mark.slow),
                                    (T.ModernBertForMaskedLM, {"decoder_bias": False}),
                                    (T.ModernBertForSequenceClassification,
                                     {"num_labels": 4, "classifier_pooling": "mean", "classifier_dropout": 0.1})])
def test_export_round_trips_and_loads_in_transformers(cls, kw, tmp_path):
    hf_config = config(**kw)
    hf_config.architectures = [cls.__name__]
    spec = spec_from_config(hf_config, name="enc")
    back = export_config(load_model(spec))
    assert back.architectures == [cls.__name__]
    assert spec_from_config(back, name="enc") == spec  # the same spec again
    path = tmp_path / "enc.arch"
    path.write_text(spec)
    torch.manual_seed(2)
    with torch.no_grad():
        ours = perturb(build(path.read_text(), passes="")).eval()  # no norm at 1, no bias at 0
    save(ours, tmp_path / "w.safetensors")
    export_hf(path, tmp_path / "hf", weights=tmp_path / "w.safetensors")
    theirs = cls.from_pretrained(tmp_path / "hf").eval()
    ids, mask = batch()
    with torch.no_grad():
        got, want = ours(ids, attention_mask=mask), theirs(ids, attention_mask=mask)
    want = want.logits if hasattr(want, "logits") else want.last_hidden_state
    if want.dim() == 3:
        got, want = got[mask.bool()], want[mask.bool()]
    torch.testing.assert_close(got, want, **TOL)


def test_a_local_window_wider_than_the_context_sees_every_token():
    hf, ours = pair(T.ModernBertModel, local_attention=300)
    assert "window = 64" in spec_from_config(hf.config, name="m")
    ids, mask = batch()
    with torch.no_grad():
        want, got = hf(ids, attention_mask=mask).last_hidden_state, ours(ids, attention_mask=mask)
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], **TOL)


# answerdotai/ModernBERT-base's config.json, as published (the keys that set the architecture;
# its global_attn_every_n_layers = 3 and RoPE bases are the config class's defaults, written out).
MODERNBERT_BASE = dict(vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
                       num_attention_heads=12, hidden_activation="gelu", max_position_embeddings=8192,
                       norm_eps=1e-5, norm_bias=False, attention_bias=False, mlp_bias=False, local_attention=128,
                       global_attn_every_n_layers=3, global_rope_theta=160000.0, local_rope_theta=10000.0,
                       classifier_pooling="mean", classifier_activation="gelu", classifier_bias=False,
                       decoder_bias=True, tie_word_embeddings=True, pad_token_id=50283, bos_token_id=50281,
                       eos_token_id=50282, cls_token_id=50281, sep_token_id=50282, dtype="float32",
                       layer_norm_eps=1e-5, position_embedding_type="absolute", reference_compile=True,
                       repad_logits_with_grad=False, sparse_prediction=False, deterministic_flash_attn=False)


def test_modernbert_base_counts_as_transformers_does():
    """answerdotai/ModernBERT-base as ModernBertForMaskedLM, the class its config names:
    ModernBertModel's 149,014,272 (the tied decoder counted once) plus the prediction head's
    dense and norm (590,592 + 768) and the decoder bias (50,368): 149,655,232."""
    published = T.ModernBertConfig(**MODERNBERT_BASE)
    counts = {}
    for cls in (T.ModernBertModel, T.ModernBertForMaskedLM, T.ModernBertForSequenceClassification):
        published.architectures = [cls.__name__]
        with torch.device("meta"):
            theirs = sum(p.numel() for p in cls(published).parameters())
        ours = compute_facts(compile_spec(spec_from_config(published, name="modernbert")).graph).params_total
        assert ours == theirs, cls.__name__
        counts[cls.__name__] = ours
    # its config.json read as a file would be; the example is the same model
    from archlang.interop.hf_export import _ir_text

    from ..conftest import EXAMPLES

    as_json = {"model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"], **MODERNBERT_BASE}
    imported = load_model(spec_from_config(as_json, name="modernbert_base"))
    assert _ir_text(imported) == _ir_text(load_model(EXAMPLES / "modernbert_base.arch"))
    assert counts["ModernBertModel"] == 149_014_272
    assert counts["ModernBertForMaskedLM"] == 149_014_272 + 768 * 768 + 768 + 50368
    assert counts["ModernBertForSequenceClassification"] == 149_014_272 + 768 * 768 + 768 + 2 * 768 + 2


@pytest.mark.parametrize("kw,message", [
    ({"attention_dropout": 0.1}, "attention_dropout"),
    ({"mlp_dropout": 0.1}, "mlp_dropout"),
    ({"layer_types": ["full_attention", "chunked_attention", "full_attention", "full_attention",
                      "full_attention"]}, "layer_types"),
    ({"architectures": ["ModernBertForTokenClassification"]}, "ModernBertForTokenClassification"),
    ({"architectures": ["ModernBertForSequenceClassification"], "problem_type": "multi_label_classification"},
     "problem_type"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                          "sliding_attention": {"rope_type": "su", "rope_theta": 1e4}}}, "rope_parameters"),
])
def test_what_archlang_cannot_compute_is_refused_naming_the_key(kw, message):
    with pytest.raises(ArchError, match=message):
        spec_from_config(config(**kw), name="modernbert")


SPEC = """model m {{
    family = encoder
    vocab = 97
    d_model = 32
    context = 64
    {model}
    block layer {{
        norm = layernorm({norm})
        {block}
        attention = mha(heads = 4)
        ffn = mlp(hidden = 64)
    }}
    layers = layer * 2
}}
"""


@pytest.mark.parametrize("model,norm,block,message", [
    ("", "placement = post", "mixer_norm = false", "placement = post"),
    ("", "", "parallel = true\n        mixer_norm = false", "parallel"),
    ("pooler = true\n    head = classifier(labels = 2, pooling = mean)", "", "", "pooler would be unused"),
    ("head = classifier(labels = 2)", "", "", "no pooler"),
    ("head = classifier(labels = 2, pooling = cls, act = gelu)", "", "", "activation and norm together"),
    ("head = classifier(labels = 2, pooling = cls, dense_bias = false)", "", "", "no transform"),
])
def test_the_language_refuses_what_it_cannot_compute_at_its_location(model, norm, block, message):
    with pytest.raises(ArchError, match=message) as info:
        compile_spec(SPEC.format(model=model, norm=norm, block=block))
    assert info.value.span is not None and info.value.span.line > 1


def test_without_its_pre_norm_the_first_layers_mixer_reads_the_residual_stream():
    """mixer_norm = false drops the attention's norm only: its weights are gone from the block,
    the FFN's stay, and the layer computes x + attn(x) before the normed FFN."""
    spec = SPEC.format(model="", norm="", block="mixer_norm = false")
    names = set(build(spec).state_dict())
    assert not any(".attn_norm." in n for n in names) and "layers.0.ffn_norm.weight" in names


@pytest.mark.parametrize("context,window", [(20, 4), (64, 65), (64, 64), (7, 6), (130, 65)])
def test_facts_count_the_keys_a_bidirectional_window_allows(context, window):
    """An encoder's window reaches both ways (|i - j| < window): FLOPs count those keys."""
    from archlang.compiler.ops.attention import attended

    i = torch.arange(context)
    allowed = ((i[:, None] - i[None, :]).abs() < window).sum().item()
    assert attended(context, False, window) == pytest.approx(allowed / context)


def test_the_docs_example_is_the_published_model():
    from ..conftest import EXAMPLES, ROOT

    docs = (ROOT / "docs" / "language.md").read_text()
    text = next(block for block in docs.split("```") if "model modernbert_mlm" in block)
    facts = compute_facts(compile_spec(text).graph)
    assert facts.params_total == compute_facts(compile_spec(EXAMPLES / "modernbert_base.arch").graph).params_total
    assert facts.params_total == 149_655_232
