"""Speculative decoding with the model's own multi-token prediction modules (`draft = "mtp"`):
each proposal equals what the cacheless `mtp_logits` pass gives for the same sequence, greedy
output is token for token plain greedy decoding, and depth caches that cannot be cut back
(Mamba) are restored and fed again."""

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.runtime import speculative
from archlang.spec.errors import ArchError

from ..conftest import SPECS, build_tiny

PROMPT = torch.tensor([[5, 17, 3, 42, 8, 11]])

# A hybrid whose MTP modules are Mamba layers: their state cannot be cut back past a draft.
MAMBA_MTP = """
model tiny_mamba_mtp {
    vocab = 97
    d_model = 32
    context = 64
    dtype = fp32
    position = none
    final_norm = rmsnorm(eps = 1e-6)

    block mamba {
        norm = rmsnorm(eps = 1e-6)
        ssm = mamba(d_state = 8, d_conv = 4, expand = 2)
        ffn = swiglu(hidden = 48)
    }

    block attn {
        norm = rmsnorm(eps = 1e-6)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 48)
    }

    layers = mamba + attn + mamba
    mtp = mtp(depth = 3, block = mamba, loss_weight = 0.3)
}
"""


def _peaked(model):
    with torch.no_grad():  # peaked logits: argmax decisions far from float-rounding ties
        head = model.embed if model.config["tie_embeddings"] else model.lm_head
        head.weight.mul_(20)
        for p in model.mtp.parameters():  # the MTP modules as far from identity as the trunk
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _tiny_mtp():
    torch.manual_seed(0)
    return _peaked(build_tiny(SPECS / "tiny_mtp.arch", "tiny_mtp"))


def _mamba_mtp():
    torch.manual_seed(0)
    return _peaked(load_source(compile_spec(MAMBA_MTP).source, "tiny_mamba_mtp").build())


def _record_proposals(monkeypatch):
    """Every (settled sequence, drafted tokens) pair the MTP drafter proposes."""
    seen = []
    propose = speculative._MTPDrafter.propose

    def recording(self, nxt, k, device):
        drafted, q = propose(self, nxt, k, device)
        seen.append((list(self.tokens), drafted, q))
        return drafted, q

    monkeypatch.setattr(speculative._MTPDrafter, "propose", recording)
    return seen


@pytest.mark.parametrize("build", [_tiny_mtp, _mamba_mtp], ids=["attention", "mamba"])
def test_proposals_are_the_cacheless_mtp_predictions(build, monkeypatch):
    """Depth k's proposal after the settled sequence s and drafts d_1 .. d_{k-1} is the argmax of
    mtp_logits(s + d_1 .. d_{k-1})[k - 1] at its last position: the same modules, run on the
    whole sequence without any cache."""
    model = build()
    seen = _record_proposals(monkeypatch)
    model.generate(PROMPT, 10, draft="mtp", draft_tokens=model.config["mtp"]["depth"])
    assert len(seen) >= 3
    with torch.no_grad():
        for settled, drafted, q in seen:
            for k, token in enumerate(drafted, start=1):
                logits = model.mtp_logits(torch.tensor([settled + drafted[:k - 1]]))[k - 1][0, -1]
                torch.testing.assert_close(q[k - 1], logits, atol=1e-4, rtol=1e-4)
                assert token == int(logits.argmax())


# the Mamba modules' restore-and-refeed path is checked token by token above; here it is slow
@pytest.mark.parametrize("build", [_tiny_mtp, pytest.param(_mamba_mtp, marks=pytest.mark.slow)],
                         ids=["attention", "mamba"])
def test_greedy_equals_plain_greedy(build):
    model = build()
    plain = model.generate(PROMPT, 12)
    depth = model.config["mtp"]["depth"]
    for draft_tokens in (1, depth + 1):  # one, and more than the depth: one proposal per depth
        stats = {}
        out = model.generate(PROMPT, 12, draft="mtp", draft_tokens=draft_tokens, stats=stats)
        assert torch.equal(out, plain), draft_tokens
        assert stats["draft_tokens_proposed"] <= min(draft_tokens, depth) * (stats["target_forwards"] - 1)
    assert not model.final_norm._forward_pre_hooks  # the drafter leaves no hook behind


def test_sampling_with_mtp_drafts_is_reproducible_and_stops():
    model = _tiny_mtp()
    runs = [model.generate(PROMPT, 8, draft="mtp", temperature=0.8, top_k=20,
                           generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (1, PROMPT.shape[1] + 8)
    stop = int(runs[0][0, PROMPT.shape[1] + 4])
    out = model.generate(PROMPT, 8, draft="mtp", temperature=0.8, top_k=20, eos_token_id=stop,
                         generator=torch.Generator().manual_seed(3))
    assert int(out[0, -1]) == stop and out.shape[1] <= PROMPT.shape[1] + 5


def test_refusals():
    plain = build_tiny(SPECS / "tiny_llama.arch", "tiny_llama")
    with pytest.raises(ArchError, match="no multi-token prediction modules"):
        plain.generate(PROMPT, 4, draft="mtp")
    with pytest.raises(ArchError, match="unknown draft 'medusa'"):
        _tiny_mtp().generate(PROMPT, 4, draft="medusa")
    with pytest.raises(ArchError, match="one sequence"):
        _tiny_mtp().generate(PROMPT.repeat(2, 1), 4, draft="mtp")
