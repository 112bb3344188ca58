"""Multi-token prediction (DeepSeek-V3 §2.2): the modules' logits and loss against a plain
PyTorch re-expression of the paper's equations, gradients, causality, the main model left
unchanged, parameter counts and checkpoints."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from archlang import checkpoint
from archlang.api import compile_spec, load_source
from archlang.compiler.facts import compute_facts

from ..conftest import SPECS

# Dense layers, no position scheme: small enough to re-express by hand below.
REF = """
model ref_mtp {
    vocab = 53
    d_model = 16
    context = 32
    dtype = fp32
    final_norm = rmsnorm(eps = 1e-6)
    block layer {
        norm = rmsnorm(eps = 1e-6)
        attention = mha(heads = 2)
        ffn = mlp(hidden = 32, act = gelu, bias = false)
    }
    layers = layer * 2
    mtp = mtp(depth = 2, block = layer, loss_weight = 0.5)
}
"""


@functools.lru_cache(maxsize=None)
def compiled_of(text):
    return compile_spec(text)


def build(text, seed=0):
    compiled = compiled_of(text)
    model = load_source(compiled.source, "m").build().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise * 0.3) if p.dim() >= 2 else p.add_(noise * 0.1)
    return model, compiled


def tokens(vocab, t=10, seed=1):
    return torch.randint(0, vocab, (2, t), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the paper, by hand


def rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def layer(x, w, p, heads=2):
    """One pre-norm layer: causal multi-head attention, then a GELU MLP."""
    b, t, c = x.shape
    h = rms(x, w[p + "attn_norm.weight"])
    q, k, v = (F.linear(h, w[p + n + ".weight"]).view(b, t, heads, -1).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c)
    x = x + F.linear(a, w[p + "o_proj.weight"])
    h = rms(x, w[p + "ffn_norm.weight"])
    return x + F.linear(F.gelu(F.linear(h, w[p + "up_proj.weight"])), w[p + "down_proj.weight"])


def reference(w, ids, depth):
    """Main logits and, per depth k, logits (B, T - k, V) from eqs. (21)-(23) of the report:
    h'^k_i = M_k [RMSNorm(Emb(t_{i+k})); RMSNorm(h^{k-1}_i)] (embedding first, as in the released
    weights), h^k = TRM_k(h'^k), P^k = OutHead(RMSNorm_k(h^k))."""
    emb = w["embed.weight"]
    h = emb[ids]
    for i in range(2):
        h = layer(h, w, f"layers.{i}.")
    main = F.linear(rms(h, w["final_norm.weight"]), w["lm_head.weight"])
    t = ids.shape[1]
    out = []
    for k in range(1, depth + 1):
        p = f"mtp.{k - 1}."
        e = emb[ids[:, k:]]  # Emb(t_{i+k}) for i = 0 .. T-k-1
        h = h[:, : t - k]
        x = F.linear(torch.cat([rms(e, w[p + "enorm.weight"]), rms(h, w[p + "hnorm.weight"])], -1), w[p + "eh_proj.weight"])
        h = layer(x, w, p + "block.")
        out.append(F.linear(rms(h, w[p + "head_norm.weight"]), w["lm_head.weight"]))
    return main, out


def test_logits_and_loss_equal_the_papers_equations():
    model, _ = build(REF)
    w = model.unfuse_state_dict()
    ids = tokens(53)
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    main, depths = reference(w, ids, 2)
    torch.testing.assert_close(model(ids), main, atol=1e-5, rtol=0)
    got = model.mtp_logits(ids)
    assert [tuple(x.shape) for x in got] == [(2, 9, 53), (2, 8, 53)]
    for g, r in zip(got, depths):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)
    # depth k at position i predicts t_{i+k+1} = labels[:, i + k]; -100 (no target) does not count
    ce = [F.cross_entropy(r.reshape(-1, 53), labels[:, k:].reshape(-1), ignore_index=-100) for k, r in enumerate(depths, 1)]
    expected = F.cross_entropy(main.reshape(-1, 53), labels.reshape(-1), ignore_index=-100) + 0.5 / 2 * sum(ce)
    torch.testing.assert_close(model.loss(ids, labels), expected, atol=1e-5, rtol=0)


def test_gradients_reach_every_mtp_parameter():
    model, _ = build((SPECS / "tiny_mtp.arch").read_text())
    model.train()
    ids = tokens(97, t=12)
    model.loss(ids, torch.roll(ids, -1, dims=1)).backward()
    names = [n for n, _ in model.named_parameters() if n.startswith("mtp.")]
    assert any(".block.moe." in n for n in names) and any("eh_proj" in n for n in names)
    for name, p in model.named_parameters():
        if name.startswith("mtp."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_main_model_is_the_same_with_and_without_mtp():
    text = (SPECS / "tiny_mtp.arch").read_text()
    with_mtp, _ = build(text)
    plain, _ = build(text.replace("mtp = mtp(depth = 2, block = sparse, loss_weight = 0.3)", ""))
    state = {k: v for k, v in with_mtp.state_dict().items() if not k.startswith("mtp.")}
    plain.load_state_dict(state)  # strict: the main model's weights are exactly the plain model's
    ids = tokens(97)
    assert torch.equal(with_mtp(ids), plain(ids))
    assert torch.equal(with_mtp.mtp_features(ids)[0], plain.features(ids))


def test_mtp_logits_are_causal():
    model, _ = build((SPECS / "tiny_mtp.arch").read_text())
    ids = tokens(97, t=12)
    base = model.mtp_logits(ids)
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 97
    after = model.mtp_logits(changed)
    for k, (a, b) in enumerate(zip(base, after), 1):
        # position i reads tokens 0 .. i + k: those before position 7 - k cannot see the change
        # (up to float rounding: the experts see other batches of tokens)
        torch.testing.assert_close(a[:, : 7 - k], b[:, : 7 - k], atol=1e-5, rtol=0)
        assert (a[:, 7 - k] - b[:, 7 - k]).abs().max() > 1e-3


def test_parameter_counts_and_checkpoint(tmp_path):
    model, compiled = build((SPECS / "tiny_mtp.arch").read_text())
    facts = compute_facts(compiled.graph)
    assert facts.params_total == sum(p.numel() for p in model.parameters())
    assert facts.params_mtp == sum(p.numel() for p in model.mtp.parameters())
    plain = compute_facts(compile_spec((SPECS / "tiny_mtp.arch").read_text().replace(
        "mtp = mtp(depth = 2, block = sparse, loss_weight = 0.3)", "")).graph)
    assert facts.params_total - plain.params_total == facts.params_mtp
    assert facts.flops_per_token == plain.flops_per_token  # a forward runs without the modules
    checkpoint.save(model, tmp_path / "w.safetensors")
    fresh, _ = build((SPECS / "tiny_mtp.arch").read_text(), seed=5)
    checkpoint.load(fresh, tmp_path / "w.safetensors")
    ids = tokens(97)
    for a, b in zip(model.mtp_logits(ids), fresh.mtp_logits(ids)):
        assert torch.equal(a, b)


def test_a_sequence_must_be_longer_than_the_depth():
    model, _ = build((SPECS / "tiny_mtp.arch").read_text())
    with pytest.raises(ValueError, match="longer than 2 tokens"):
        model.mtp_logits(tokens(97, t=2))
