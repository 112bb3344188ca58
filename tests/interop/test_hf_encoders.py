"""BERT and ALBERT with their task heads against Hugging Face's classes: the base models, the
masked-LM head (…ForMaskedLM) and the sequence classifier (…ForSequenceClassification); ALBERT's
factorised embeddings and its one shared layer. Import and export, logits and losses with every
weight perturbed, the published base counts, and the refusals."""

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


FAMILIES = {"bert": (T.BertModel, T.BertForMaskedLM, T.BertForSequenceClassification),
            "albert": (T.AlbertModel, T.AlbertForMaskedLM, T.AlbertForSequenceClassification)}


def config(family: str = "bert", **kw):
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
    if family == "albert":  # narrower embeddings, three uses of the one layer, the tanh GELU
        return T.AlbertConfig(**common | {"num_hidden_layers": 3}, embedding_size=16, hidden_act="gelu_new", **kw)
    return T.BertConfig(**common, hidden_act="gelu", **kw)


def pair(cls, **kw):
    family = "albert" if cls.__name__.startswith("Albert") else "bert"
    torch.manual_seed(0)
    with torch.no_grad():
        hf = perturb(cls(config(family, **kw))).eval()
    return hf, from_hf(hf).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_base_model_equals_hf(family):
    hf, ours = pair(FAMILIES[family][0])
    ids, mask, types = batch()
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types)
        hidden, pooled = ours(ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(hidden, want.last_hidden_state, **TOL)
    torch.testing.assert_close(pooled, want.pooler_output, **TOL)


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # the second sequence is padded on the right
    types = torch.zeros(2, 9, dtype=torch.long)
    types[:, 5:] = 1
    return ids, mask, types


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_masked_lm_logits_and_loss_equal_hf(family):
    hf, ours = pair(FAMILIES[family][1])
    ids, mask, types = batch()
    labels = torch.full_like(ids, -100)
    labels[:, [1, 4, 7]] = ids[:, [1, 4, 7]]
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
        torch.testing.assert_close(got, want.logits, **TOL)
        torch.testing.assert_close(ours.loss(ids, labels, attention_mask=mask, token_type_ids=types), want.loss, **TOL)
    assert ours.config["head"] == {"kind": "mlm"} and ours.config["tie_embeddings"]


@pytest.mark.parametrize("family,labels", [("bert", 3), ("bert", 1), ("albert", 2)])
def test_sequence_classification_logits_and_loss_equal_hf(family, labels):
    dropout = {"bert": "classifier_dropout", "albert": "classifier_dropout_prob"}[family]
    hf, ours = pair(FAMILIES[family][2], num_labels=labels, **{dropout: 0.2})
    ids, mask, types = batch()
    target = torch.tensor([labels - 1, 0]) if labels > 1 else torch.tensor([0.5, -1.0])
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types, labels=target)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
        torch.testing.assert_close(got, want.logits, **TOL)
        torch.testing.assert_close(ours.loss(ids, target, attention_mask=mask, token_type_ids=types), want.loss, **TOL)


@pytest.mark.parametrize("cls,kw", [(T.BertForMaskedLM, {}),
                                    (T.BertForSequenceClassification, {"num_labels": 4, "classifier_dropout": 0.2}),
                                    (T.AlbertModel, {}), (T.AlbertForMaskedLM, {}),
                                    (T.AlbertForSequenceClassification, {"num_labels": 4})])
def test_export_round_trips_and_loads_in_transformers(cls, kw, tmp_path):
    hf, ours = pair(cls, **kw)
    hf_config = hf.config
    hf_config.architectures = [cls.__name__]
    spec = spec_from_config(hf_config, name="enc")
    m = load_model(spec)
    back = export_config(m)
    assert back.architectures == [cls.__name__]
    assert spec_from_config(back, name="enc") == spec  # the same spec again
    path = tmp_path / "enc.arch"
    path.write_text(spec)
    export_hf(path, tmp_path / "hf", seed=4)
    theirs = cls.from_pretrained(tmp_path / "hf").eval()
    ids, mask, types = batch()
    with torch.no_grad():
        got, want = from_hf(theirs).eval()(ids, attention_mask=mask), theirs(ids, attention_mask=mask)
    got = got[0] if isinstance(got, tuple) else got
    torch.testing.assert_close(got, getattr(want, "logits", None) if hasattr(want, "logits") else want.last_hidden_state,
                               **TOL)


def test_bert_base_masked_lm_counts_as_transformers_does():
    """google-bert/bert-base-uncased as BertForMaskedLM: BertModel's 109,482,240 without the
    pooler (590,592), with the head's transform (590,592), its norm (1,536) and output bias
    (30,522): 109,514,298."""
    published = T.BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
                             architectures=["BertForMaskedLM"])
    for cls, arch in ((T.BertForMaskedLM, "BertForMaskedLM"), (T.BertForSequenceClassification,
                                                                "BertForSequenceClassification")):
        published.architectures = [arch]
        with torch.device("meta"):
            theirs = sum(p.numel() for p in cls(published).parameters())
        ours = compute_facts(compile_spec(spec_from_config(published, name="bert")).graph).params_total
        assert ours == theirs
    assert ours == 109_482_240 + 2 * 768 + 2  # BertModel plus a two-label classifier


def test_albert_base_counts_as_transformers_does():
    """albert/albert-base-v2: 11,683,584 parameters in AlbertModel (one shared layer, 128-wide
    embeddings projected to 768)."""
    published = T.AlbertConfig(vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
                               num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512,
                               type_vocab_size=2, hidden_act="gelu_new")
    for cls in FAMILIES["albert"]:
        published.architectures = [cls.__name__]
        with torch.device("meta"):
            theirs = sum(p.numel() for p in cls(published).parameters())
        ours = compute_facts(compile_spec(spec_from_config(published, name="albert")).graph).params_total
        assert ours == theirs, cls.__name__
        if cls is T.AlbertModel:
            assert ours == 11_683_584


@pytest.mark.parametrize("kw,message", [
    ({"architectures": ["BertForPreTraining"]}, "BertForPreTraining"),
    ({"architectures": ["BertForMaskedLM"], "tie_word_embeddings": False}, "tie_word_embeddings"),
    ({"architectures": ["BertForSequenceClassification"], "problem_type": "multi_label_classification"},
     "problem_type"),
])
def test_what_the_heads_cannot_express_is_refused_naming_the_key(kw, message):
    with pytest.raises(ArchError, match=message):
        spec_from_config(config(**kw), name="bert")


@pytest.mark.parametrize("key", ["num_hidden_groups", "inner_group_num"])
def test_albert_layer_groups_beyond_one_are_refused(key):
    with pytest.raises(ArchError, match=key):
        spec_from_config(config("albert", **{key: 2}), name="albert")


def test_a_head_on_a_decoder_and_a_classifier_without_pooler_are_refused():
    base = open_spec(head="head = mlm(act = gelu)", family="decoder", pooler="false")
    with pytest.raises(ArchError, match="encoder's task head"):
        compile_spec(base)
    with pytest.raises(ArchError, match="pooler"):
        compile_spec(open_spec(head="head = classifier(labels = 2)", pooler="false"))


def open_spec(*, head: str, family: str = "encoder", pooler: str = "true") -> str:
    return f"""model b {{
    family = {family}
    vocab = 97
    d_model = 32
    context = 64
    pooler = {pooler}
    {head}
    block layer {{
        norm = layernorm()
        attention = mha(heads = 4)
        ffn = mlp(hidden = 64)
    }}
    layers = layer * 1
}}
"""
