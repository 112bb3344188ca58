"""DeBERTa-v2/v3 against Hugging Face's classes: the base model's hidden states, the masked-LM
head's logits (DebertaV2ForMaskedLM, legacy and not) and the sequence classifier's
(DebertaV2ForSequenceClassification, ContextPooler), every weight perturbed; export, the round
trip and from_pretrained; the published count of microsoft/deberta-v3-base; the refusals.

HF masks a padded query row entirely (its mask is the outer product of the padding mask) and
zeroes padded embeddings; archlang lets a padded row attend to the real tokens. Real tokens see
only real tokens in both, so their outputs are compared; padded rows are not a result."""

import pytest
import torch

T = pytest.importorskip("transformers")

from archlang.api import compile_spec, load_model  # noqa: E402
from archlang.compiler.facts import compute_facts  # noqa: E402
from archlang.interop.hf import from_hf, spec_from_config  # noqa: E402
from archlang.interop.hf_export import export_config, export_hf  # noqa: E402
from archlang.spec import ArchError  # noqa: E402

from .test_hf_parity import perturb  # noqa: E402

VOCAB = 97
TOL = dict(atol=1e-4, rtol=1e-4)

# DeBERTaV3's settings (log buckets, shared keys, normalised relative embeddings, no absolute
# positions), then one case per option that changes what is computed.
CASES = {
    "v3": {},
    "own_position_projections": {"share_att_key": False},  # pos_key_proj / pos_query_proj
    "absolute_positions_and_types": {"position_biased_input": True, "type_vocab_size": 2},
    "clipped_distances_c2p_only": {"position_buckets": -1, "max_relative_positions": 6, "pos_att_type": "c2p",
                                   "norm_rel_ebd": "none", "share_att_key": False},
    "p2c_only": {"pos_att_type": ["p2c"]},
    "no_relative_attention": {"relative_attention": False, "norm_rel_ebd": "none"},  # scale 1/sqrt(3d) remains
}


def config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, relative_attention=True, position_buckets=8, max_relative_positions=-1,
                norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type="p2c|c2p", layer_norm_eps=1e-7,
                position_biased_input=False, type_vocab_size=0, hidden_act="gelu")
    return T.DebertaV2Config(**base | kw)


def pair(cls, **kw):
    torch.manual_seed(0)
    with torch.no_grad():
        hf = perturb(cls(config(**kw))).eval()
    return hf, from_hf(hf).eval()


def batch(t: int = 24):
    """Longer than the buckets' linear range (4) so that the log buckets are reached."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, t), generator=g)
    mask = torch.ones(2, t, dtype=torch.long)
    mask[1, t - 5:] = 0  # the second sequence is padded on the right
    types = torch.zeros(2, t, dtype=torch.long)
    types[:, t // 2:] = 1
    return ids, mask, types


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_base_model_equals_hf(case):
    hf, ours = pair(T.DebertaV2Model, **CASES[case])
    ids, mask, types = batch()
    kw = {"token_type_ids": types} if CASES[case].get("type_vocab_size") else {}
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, **kw).last_hidden_state
        got = ours(ids, attention_mask=mask, **kw)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], **TOL)


@pytest.mark.parametrize("legacy", [True, False])
def test_masked_lm_logits_and_loss_equal_hf(legacy):
    hf, ours = pair(T.DebertaV2ForMaskedLM, legacy=legacy)
    ids, mask, _ = batch()
    labels = torch.full_like(ids, -100)
    labels[:, [1, 4, 7, 12]] = ids[:, [1, 4, 7, 12]]
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, labels=labels)
        got = ours(ids, attention_mask=mask)
        torch.testing.assert_close(got[mask.bool()], want.logits[mask.bool()], **TOL)
        torch.testing.assert_close(ours.loss(ids, labels, attention_mask=mask), want.loss, **TOL)
    assert ours.config["head"] == {"kind": "mlm"} and ours.config["tie_embeddings"]


@pytest.mark.parametrize("labels,act", [(3, "gelu"), (1, "tanh")])
def test_sequence_classification_logits_and_loss_equal_hf(labels, act):
    hf, ours = pair(T.DebertaV2ForSequenceClassification, num_labels=labels, pooler_hidden_act=act, cls_dropout=0.2)
    ids, mask, _ = batch()
    target = torch.tensor([labels - 1, 0]) if labels > 1 else torch.tensor([0.5, -1.0])
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, labels=target)
        got = ours(ids, attention_mask=mask)
        # with one label DeBERTa's forward returns the scores flattened to (B,) (for its MSE loss)
        torch.testing.assert_close(got.view_as(want.logits), want.logits, **TOL)
        torch.testing.assert_close(ours.loss(ids, target, attention_mask=mask), want.loss, **TOL)


def test_training_reaches_every_weight():
    """The dropout of the relative embeddings and probabilities runs in training, and every
    parameter (the shared table and its norm included) gets a gradient."""
    _, ours = pair(T.DebertaV2ForMaskedLM, share_att_key=False)
    ours.train()
    ids, mask, _ = batch()
    labels = ids.clone()
    ours.loss(ids, labels, attention_mask=mask).backward()
    bad = [n for n, p in ours.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not bad


@pytest.mark.parametrize("cls,kw", [(T.DebertaV2Model, {}),
                                    pytest.param(T.DebertaV2Model, CASES["absolute_positions_and_types"],
                                                 marks=pytest.mark.slow),  # test_hf_export's tiny_deberta has them
                                    (T.DebertaV2ForMaskedLM, {"share_att_key": False}),
                                    (T.DebertaV2ForSequenceClassification, {"num_labels": 4, "cls_dropout": 0.2})])
def test_export_round_trips_and_loads_in_transformers(cls, kw, tmp_path):
    hf, _ = pair(cls, **kw)
    hf_config = hf.config
    hf_config.architectures = [cls.__name__]
    spec = spec_from_config(hf_config, name="enc")
    back = export_config(load_model(spec))
    assert back.model_type == "deberta-v2" and back.architectures == [cls.__name__]
    assert spec_from_config(back, name="enc") == spec  # the same spec again
    path = tmp_path / "enc.arch"
    path.write_text(spec)
    export_hf(path, tmp_path / "hf", seed=4)
    theirs = cls.from_pretrained(tmp_path / "hf").eval()
    ids, mask, _ = batch()
    with torch.no_grad():
        got, want = from_hf(theirs).eval()(ids), theirs(ids)
    want = want.logits if hasattr(want, "logits") else want.last_hidden_state
    torch.testing.assert_close(got, want, **TOL)


def deberta_v3_base(architecture: str):
    """microsoft/deberta-v3-base's config.json, written out."""
    return T.DebertaV2Config(
        vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
        type_vocab_size=0, initializer_range=0.02, layer_norm_eps=1e-7, relative_attention=True,
        max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
        pos_att_type="p2c|c2p", position_biased_input=False, pad_token_id=0, architectures=[architecture])


def test_deberta_v3_base_counts_as_transformers_does():
    """DebertaV2Model of microsoft/deberta-v3-base: 183,831,552 parameters (embeddings 98,380,800
    + their norm 1,536, the 512-row relative table 393,216 + its norm 1,536, twelve layers of
    7,087,872). DebertaV2ForMaskedLM adds the legacy head's dense and norm (592,128) and an output
    bias per token id (128,100); DebertaV2ForSequenceClassification the pooler (590,592) and two labels."""
    for cls in (T.DebertaV2Model, T.DebertaV2ForMaskedLM, T.DebertaV2ForSequenceClassification):
        published = deberta_v3_base(cls.__name__)
        with torch.device("meta"):
            theirs = sum(p.numel() for p in cls(published).parameters())
        ours = compute_facts(compile_spec(spec_from_config(published, name="deberta")).graph).params_total
        assert ours == theirs, cls.__name__
        if cls is T.DebertaV2Model:
            assert ours == 183_831_552


@pytest.mark.parametrize("kw,message", [
    ({"conv_kernel_size": 3}, "conv_kernel_size"),
    ({"embedding_size": 16}, "embedding_size"),
    ({"pos_att_type": "c2p|p2p"}, "pos_att_type"),
    ({"pos_att_type": None}, "pos_att_type"),
    ({"norm_rel_ebd": "batch_norm"}, "norm_rel_ebd"),
    ({"relative_attention": False}, "norm_rel_ebd"),
    ({"pooler_dropout": 0.1}, "pooler_dropout"),
    ({"pooler_hidden_size": 16}, "pooler_hidden_size"),
    ({"attention_head_size": 6}, "attention_head_size"),
    ({"architectures": ["DebertaV2ForTokenClassification"]}, "DebertaV2ForTokenClassification"),
    ({"architectures": ["DebertaV2ForMaskedLM"], "tie_word_embeddings": False}, "tie_word_embeddings"),
])
def test_what_archlang_cannot_compute_is_refused_naming_the_key(kw, message):
    with pytest.raises(ArchError, match=message):
        spec_from_config(config(**kw), name="deberta")


def test_a_pooler_activation_needs_the_pooler():
    text = spec_from_config(config(architectures=["DebertaV2ForSequenceClassification"]), name="deberta")
    assert "pooler_act = gelu" in text
    with pytest.raises(ArchError, match="pooler_act"):
        compile_spec(text.replace("pooler = true", "pooler = false").replace("    head = classifier", "    # "))
