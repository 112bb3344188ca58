"""ELECTRA against Hugging Face's classes: ElectraModel, the discriminator (ElectraForPreTraining,
`head = rtd(...)`), the generator (ElectraForMaskedLM, `head = mlm(...)` at the embedding width)
and the classifier with its own dense layer (ElectraForSequenceClassification,
`classifier(dense = gelu)`); embeddings narrower than the model and projected. Outputs and losses
with every weight perturbed, export and round trip, the published counts, the refusals, and the
pre-training objective (generator MLM + λ · discriminator RTD) against a re-expression on HF's
models."""

import pytest
import torch

T = pytest.importorskip("transformers")

from archlang.api import compile_spec, load_model  # noqa: E402
from archlang.compiler.facts import compute_facts  # noqa: E402
from archlang.interop.hf import from_hf, spec_from_config  # noqa: E402
from archlang.interop.hf_export import export_config, export_hf  # noqa: E402
from archlang.runtime import electra_loss  # noqa: E402
from archlang.spec import ArchError  # noqa: E402

from .test_hf_parity import perturb  # noqa: E402

VOCAB = 97
MASK_ID = 3
TOL = dict(atol=1e-4, rtol=1e-4)
CLASSES = {"base": T.ElectraModel, "rtd": T.ElectraForPreTraining, "mlm": T.ElectraForMaskedLM,
           "classifier": T.ElectraForSequenceClassification}


def config(**kw):
    """Embeddings 16 wide under a 32-wide model (embeddings_project), the tanh GELU in the layers
    and the discriminator head (the generator and classifier heads keep exact GELU)."""
    return T.ElectraConfig(**{"vocab_size": VOCAB, "embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
                              "hidden_act": "gelu_new", **kw})


def pair(cls, **kw):
    torch.manual_seed(0)
    with torch.no_grad():
        hf = perturb(cls(config(**kw))).eval()
    return hf, from_hf(hf).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # the second sequence is padded on the right
    types = torch.zeros(2, 9, dtype=torch.long)
    types[:, 5:] = 1
    return ids, mask, types


@pytest.mark.parametrize("kw", [{}, pytest.param({"embedding_size": 32}, marks=pytest.mark.slow)],
                         ids=["projected", "same-width"])
def test_the_base_model_equals_hf(kw):
    hf, ours = pair(T.ElectraModel, **kw)
    assert ("embed_proj.weight" in ours.state_dict()) == (not kw)
    ids, mask, types = batch()
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours(ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(got, want, **TOL)


def test_discriminator_logits_and_rtd_loss_equal_hf():
    hf, ours = pair(T.ElectraForPreTraining)
    ids, mask, types = batch()
    replaced = torch.zeros_like(ids)
    replaced[:, [2, 5, 7]] = 1
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types, labels=replaced)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
        torch.testing.assert_close(got, want.logits, **TOL)
        loss = ours.loss(ids, replaced, attention_mask=mask, token_type_ids=types)
        torch.testing.assert_close(loss, want.loss, **TOL)
        # the padded tokens do not count: changing their labels changes nothing
        flipped = replaced.clone()
        flipped[1, 6:] = 1 - flipped[1, 6:]
        torch.testing.assert_close(ours.loss(ids, flipped, attention_mask=mask, token_type_ids=types), loss)
        without_mask = hf(ids, token_type_ids=types, labels=replaced).loss
        torch.testing.assert_close(ours.loss(ids, replaced, token_type_ids=types), without_mask, **TOL)
    assert ours.config["head"] == {"kind": "rtd"}


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_generator_logits_and_mlm_loss_equal_hf(tied):
    hf, ours = pair(T.ElectraForMaskedLM, tie_word_embeddings=tied)
    assert ("mlm_head.decoder_weight" in ours.state_dict()) == (not tied)
    ids, mask, types = batch()
    labels = torch.full_like(ids, -100)
    labels[:, [1, 4, 7]] = ids[:, [1, 4, 7]]
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
        torch.testing.assert_close(got, want.logits, **TOL)
        torch.testing.assert_close(ours.loss(ids, labels, attention_mask=mask, token_type_ids=types), want.loss, **TOL)


@pytest.mark.parametrize("labels", [3, 1])
def test_classifier_logits_and_loss_equal_hf(labels):
    hf, ours = pair(T.ElectraForSequenceClassification, num_labels=labels, classifier_dropout=0.2)
    ids, mask, types = batch()
    target = torch.tensor([labels - 1, 0]) if labels > 1 else torch.tensor([0.5, -1.0])
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types, labels=target)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
        torch.testing.assert_close(got, want.logits, **TOL)
        torch.testing.assert_close(ours.loss(ids, target, attention_mask=mask, token_type_ids=types), want.loss, **TOL)


def test_the_classifier_drops_out_twice_in_training_as_hf_does():
    """Training mode: the same dropout masks (one generator, drawn in the same order) give the same
    scores, so the head drops the first token before its dense layer and again before out_proj."""
    hf, ours = pair(T.ElectraForSequenceClassification, num_labels=3, classifier_dropout=0.5,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf.train(), ours.train()
    ids, mask, types = batch()
    with torch.no_grad():
        torch.manual_seed(7)
        want = hf(ids, attention_mask=mask, token_type_ids=types).logits
        torch.manual_seed(7)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
        torch.manual_seed(8)
        other = ours(ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(got, want, **TOL)
    assert not torch.allclose(got, other)  # dropout is on


@pytest.mark.parametrize("head,kw", [("base", {}), ("rtd", {}), ("mlm", {}),
                                     pytest.param("mlm", {"tie_word_embeddings": False}, marks=pytest.mark.slow),
                                     ("classifier", {"num_labels": 4, "classifier_dropout": 0.2})],
                         ids=["base", "rtd", "mlm", "mlm-untied", "classifier"])
def test_export_round_trips_and_loads_in_transformers(head, kw, tmp_path):
    cls = CLASSES[head]
    hf, _ = pair(cls, **kw)
    hf.config.architectures = [cls.__name__]
    spec = spec_from_config(hf.config, name="electra")
    back = export_config(load_model(spec))
    assert back.model_type == "electra" and back.architectures == [cls.__name__]
    assert spec_from_config(back, name="electra") == spec  # the same spec again
    path = tmp_path / "electra.arch"
    path.write_text(spec)
    export_hf(path, tmp_path / "hf", seed=4)
    theirs = cls.from_pretrained(tmp_path / "hf").eval()
    ids, mask, types = batch()
    with torch.no_grad():
        got = from_hf(theirs).eval()(ids, attention_mask=mask, token_type_ids=types)
        from_folder = from_hf(tmp_path / "hf").eval()(ids, attention_mask=mask, token_type_ids=types)
        want = theirs(ids, attention_mask=mask, token_type_ids=types)
    want = want.last_hidden_state if head == "base" else want.logits
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(from_folder, want, **TOL)


# google/electra-base-discriminator, google/electra-small-generator and
# google/electra-small-discriminator, as their config.json files give them (the architecture's keys
# written out).
PUBLISHED = {
    "google/electra-base-discriminator": (dict(vocab_size=30522, embedding_size=768, hidden_size=768,
                                               num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                               max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
                                               architectures=["ElectraForPreTraining"]), 109_483_009),
    "google/electra-small-generator": (dict(vocab_size=30522, embedding_size=128, hidden_size=256,
                                            num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024,
                                            max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
                                            architectures=["ElectraForMaskedLM"]), 13_546_682),
    # the spec of docs/language.md's ELECTRA section
    "google/electra-small-discriminator": (dict(vocab_size=30522, embedding_size=128, hidden_size=256,
                                                num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024,
                                                max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
                                                architectures=["ElectraForPreTraining"]), 13_549_057),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs_count_as_transformers_does(name):
    """electra-base-discriminator: ElectraModel's 108,891,648 (no pooler; embeddings as wide as
    the model, so no projection) with the discriminator head, dense 768 x 768 + 768 and
    dense_prediction 768 + 1. electra-small-generator: 128-wide embeddings projected to 256,
    the generator head (dense 256 → 128, its LayerNorm) and the output bias over the tied table;
    electra-small-discriminator: the same encoder with the discriminator head (256 x 256 + 256 + 257)."""
    keys, published = PUBLISHED[name]
    hf_config = T.ElectraConfig(**keys)
    cls = getattr(T, keys["architectures"][0])
    with torch.device("meta"):
        theirs = sum(p.numel() for p in cls(hf_config).parameters())
    ours = compute_facts(compile_spec(spec_from_config(hf_config, name="electra")).graph).params_total
    assert ours == theirs == published


@pytest.mark.parametrize("kw,message", [
    ({"architectures": ["ElectraForTokenClassification"]}, "ElectraForTokenClassification"),
    ({"is_decoder": True}, "is_decoder"),
    ({"add_cross_attention": True}, "add_cross_attention"),
    ({"architectures": ["ElectraForSequenceClassification"], "problem_type": "multi_label_classification"},
     "problem_type"),
])
def test_what_electra_cannot_express_is_refused_naming_the_key(kw, message, tmp_path):
    with pytest.raises(ArchError, match=message):
        spec_from_config(config(**kw), name="electra")
    (tmp_path / "config.json").write_text(config(**kw).to_json_string())
    with pytest.raises(ArchError, match=message):
        spec_from_config(tmp_path / "config.json", name="electra")


def electra_spec(head: str, *, act: str = "gelu", pooler: str = "false", embedding_dim: str = "16") -> str:
    """A tiny electra-like spec; embedding_dim "none" leaves the field out."""
    widths = "" if embedding_dim == "none" else f"    embedding_dim = {embedding_dim}"
    return f"""model e {{
    family = encoder
    vocab = {VOCAB}
    d_model = 32
    context = 64
    dtype = fp32
    type_vocab = 2
{widths}
    pooler = {pooler}
    position = learned()
    embedding_norm = layernorm(eps = 1e-12)
    {head}
    block layer {{
        norm = layernorm(eps = 1e-12, placement = post)
        attention = mha(heads = 4, bias = true, out_bias = true)
        ffn = mlp(hidden = 64, act = {act}, bias = true)
    }}
    layers = layer * 2
}}
"""


@pytest.mark.parametrize("spec,message", [
    (electra_spec("head = rtd(act = relu)"), "electra's discriminator head uses the FFN's"),
    (electra_spec("head = mlm(act = relu)"), "electra's generator head uses gelu"),
    (electra_spec("head = classifier(labels = 2, dense = relu)"), "dense = relu"),
    (electra_spec("", embedding_dim="32"), "embedding_dim equal to d_model"),
    # as wide as BERT's, with BERT's pooler: still no BERT class has this head
    (electra_spec("head = rtd(act = gelu)", pooler="true", embedding_dim="none"), "a pooler"),
])
def test_export_refuses_what_electra_has_not(spec, message):
    with pytest.raises(ArchError, match=message):
        export_config(load_model(spec), "electra")
    with pytest.raises(ArchError):  # and no other family expresses it either
        export_config(load_model(spec))


def test_the_language_refuses_a_dense_classifier_beside_a_pooler_and_rtd_on_a_decoder():
    with pytest.raises(ArchError, match="reads the first token itself"):
        compile_spec(electra_spec("head = classifier(labels = 2, dense = gelu)", pooler="true"))
    with pytest.raises(ArchError, match="encoder's task head"):
        compile_spec(electra_spec("head = rtd()").replace("family = encoder", "family = decoder")
                     .replace("    type_vocab = 2\n    embedding_dim = 16\n", ""))


# ----------------------------------------------------------------------------- the objective


def objective_pair():
    """A generator and a discriminator (archlang models) and the HF models they were taken from."""
    torch.manual_seed(0)
    with torch.no_grad():
        hf_gen = perturb(T.ElectraForMaskedLM(config(hidden_size=16, intermediate_size=32))).eval()
        hf_disc = perturb(T.ElectraForPreTraining(config())).eval()
    return hf_gen, hf_disc, from_hf(hf_gen).eval(), from_hf(hf_disc).eval()


def corruption():
    ids, mask, types = batch()
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[0, [1, 3, 4]] = masked[1, [0, 2, 5]] = True
    return ids, masked, mask, types


def test_the_electra_objective_equals_its_re_expression_on_hf_models():
    """Clark et al. 2020: the generator's MLM loss on the masked tokens, a sample of its softmax
    at each, the discriminator's RTD loss on the corrupted sequence (a sample equal to the
    original counts as original), total = mlm + 50 · rtd."""
    hf_gen, hf_disc, gen, disc = objective_pair()
    ids, masked, mask, types = corruption()
    with torch.no_grad():
        out = electra_loss(gen, disc, ids, masked, mask_token_id=MASK_ID, attention_mask=mask, token_type_ids=types,
                           sampler=torch.Generator().manual_seed(5))
        # the same step written out on transformers' models
        labels = ids.masked_fill(~masked, -100)
        g = hf_gen(ids.masked_fill(masked, MASK_ID), attention_mask=mask, token_type_ids=types, labels=labels)
        probs = torch.softmax(g.logits[masked], dim=-1)
        sampled = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(5)).squeeze(-1)
        corrupted = ids.clone()
        corrupted[masked] = sampled
        replaced = (corrupted != ids).long()
        d = hf_disc(corrupted, attention_mask=mask, token_type_ids=types, labels=replaced)
    assert torch.equal(out.corrupted, corrupted) and torch.equal(out.replaced.long(), replaced)
    assert out.replaced.any() and not out.replaced[~masked].any()
    torch.testing.assert_close(out.mlm, g.loss, **TOL)
    torch.testing.assert_close(out.rtd, d.loss, **TOL)
    torch.testing.assert_close(out.total, g.loss + 50.0 * d.loss, **TOL)


def test_gradients_reach_both_models_and_the_generator_learns_from_mlm_alone():
    _, _, gen, disc = objective_pair()
    ids, masked, mask, types = corruption()
    out = electra_loss(gen, disc, ids, masked, mask_token_id=MASK_ID, attention_mask=mask, token_type_ids=types,
                       rtd_weight=50.0, sampler=torch.Generator().manual_seed(5))
    gen_params, disc_params = list(gen.parameters()), list(disc.parameters())
    assert all(g is None for g in torch.autograd.grad(out.rtd, gen_params, retain_graph=True, allow_unused=True))
    mlm_grads = torch.autograd.grad(out.mlm, gen_params, retain_graph=True)
    out.total.backward()
    for (name, p), want in zip(gen.named_parameters(), mlm_grads):
        torch.testing.assert_close(p.grad, want, msg=name)
        assert p.grad.abs().sum() > 0, name
    for name, p in disc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_the_objective_refuses_models_without_the_heads_it_trains():
    _, _, gen, disc = objective_pair()
    ids, masked, mask, types = corruption()
    with pytest.raises(ValueError, match="generator must be an encoder with head = mlm"):
        electra_loss(disc, disc, ids, masked, mask_token_id=MASK_ID)
    with pytest.raises(ValueError, match="discriminator must be an encoder with head = rtd"):
        electra_loss(gen, gen, ids, masked, mask_token_id=MASK_ID)
    with pytest.raises(ValueError, match="bool tensor"):
        electra_loss(gen, disc, ids, masked.long(), mask_token_id=MASK_ID)
