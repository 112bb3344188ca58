"""Speculative decoding: greedy output token for token equal to plain greedy decoding (attention,
sliding-window, Mamba and MoE models, drafts that are other models or the model's own first
layers), sampling that follows the target's distribution exactly, cache rollback, streaming and
stop tokens."""

import copy

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.runtime.context import Cache
from archlang.runtime.speculative import accept_or_correct, self_draft
from archlang.spec.errors import ArchError

from ..conftest import SPECS, build_tiny


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_tiny(SPECS / f"{name}.arch", name).eval()
    with torch.no_grad():  # peaked logits: argmax decisions far from float-rounding ties
        head = model.embed if model.config["tie_embeddings"] else model.lm_head
        head.weight.mul_(20)
    return model


PROMPT = torch.tensor([[5, 17, 3, 42, 8, 11]])


# (spec, target forwards per step when every draft token is accepted): attention caches are cut
# back; a window that evicted entries and Mamba states are restored and the kept tokens fed again
@pytest.mark.parametrize("name, forwards_per_step", [("tiny_llama", 1), ("tiny_gemma2", 2), ("tiny_jamba", 2)])
def test_greedy_equals_plain_greedy(name, forwards_per_step):
    target = _model(name)
    plain = target.generate(PROMPT, 12)
    for draft in (_model(name, seed=1), 1):
        stats = {}
        out = target.generate(PROMPT, 12, draft=draft, draft_tokens=3, stats=stats)
        assert torch.equal(out, plain), draft if isinstance(draft, int) else "model"
        assert 0 <= stats["acceptance_rate"] <= 1
    stats = {}
    out = target.generate(PROMPT, 12, draft=copy.deepcopy(target), draft_tokens=3, stats=stats)
    assert torch.equal(out, plain) and stats["acceptance_rate"] == 1.0  # agrees with itself
    # the prefill, then 4 tokens (3 drafts and the target's own) per step
    assert stats["target_forwards"] == 1 + forwards_per_step * 3


def test_stop_tokens_context_and_streaming():
    target = _model("tiny_llama")
    plain = target.generate(PROMPT, 16)
    stop = int(plain[0, PROMPT.shape[1] + 7])
    streamed = []
    out = target.generate(PROMPT, 16, draft=1, eos_token_id=[1000, stop], streamer=streamed.append)
    first = (plain[0, PROMPT.shape[1]:] == stop).nonzero()[0, 0]
    assert torch.equal(out[0], plain[0, :PROMPT.shape[1] + first + 1])  # stops at the first stop token
    assert torch.cat(streamed).tolist() == out[0, PROMPT.shape[1]:].tolist()
    with pytest.warns(UserWarning, match="context"):
        long = target.generate(torch.zeros(1, 50, dtype=torch.long), 40, draft=1)
    assert long.shape[1] == target.config["context"]
    with pytest.warns(UserWarning, match="context"):
        assert torch.equal(long, target.generate(torch.zeros(1, 50, dtype=torch.long), 40))


def test_refusals():
    target = _model("tiny_llama")
    with pytest.raises(ArchError, match="one sequence"):
        target.generate(PROMPT.repeat(2, 1), 4, draft=1)
    with pytest.raises(ArchError, match="1 to 1 of the 2 layers"):
        self_draft(target, 2)
    other = (SPECS / "tiny_llama.arch").read_text().replace("vocab = 97", "vocab = 101")
    compiled = compile_spec(other)
    with pytest.raises(ArchError, match="vocabulary"):
        target.generate(PROMPT, 4, draft=load_source(compiled.source, "other").build())


def test_accept_or_correct_leaves_the_target_distribution():
    """Draw x ~ q, keep it with probability min(1, p/q), else draw from norm(max(0, p - q)):
    the result is distributed as p (Leviathan et al. 2023, Theorem 1)."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
    q = torch.tensor([0.1, 0.4, 0.1, 0.1, 0.2, 0.1])
    n = 20_000
    counts = torch.zeros(6)
    for _ in range(n):
        x = int(torch.multinomial(q, 1, generator=g))
        ok, correction = accept_or_correct(p, q, x, g)
        counts[x if ok else correction] += 1
    assert counts[5] == 0  # a token the target never makes is never kept
    assert (counts / n - p).abs().max() < 0.015  # 3 sigma of 20,000 draws is at most 0.011


def _small_vocab(seed: int):
    text = (SPECS / "tiny_llama.arch").read_text().replace("vocab = 97", "vocab = 8").replace("layer * 2", "layer * 1")
    torch.manual_seed(seed)
    return load_source(compile_spec(text).source, f"small{seed}").build().eval()


@pytest.mark.slow
def test_sampled_tokens_follow_the_target():
    """The second token of many sampled continuations (the first is the target's own sample, the
    second the speculative rule's) against the target's exact conditional distribution, over a
    vocabulary of 8 so that a few hundred runs estimate it."""
    target, draft = _small_vocab(0), _small_vocab(3)
    with torch.no_grad():
        target.lm_head.weight.mul_(8)  # a target unlike the draft: both branches of the rule run
    g = torch.Generator().manual_seed(0)
    prompt = torch.tensor([[1, 2, 3]])
    pairs: dict[int, list[int]] = {}
    for _ in range(250):
        out = target.generate(prompt, 2, temperature=1.0, draft=draft, draft_tokens=2, generator=g)
        pairs.setdefault(int(out[0, 3]), []).append(int(out[0, 4]))
    x1, seconds = max(pairs.items(), key=lambda kv: len(kv[1]))
    with torch.no_grad():
        cond = torch.softmax(target(torch.tensor([[1, 2, 3, x1]]))[0, -1].float(), -1)
    seen = torch.bincount(torch.tensor(seconds), minlength=8).float() / len(seconds)
    tv = 0.5 * float((seen - cond).abs().sum())
    assert tv < (8 / len(seconds)) ** 0.5 + 0.02, (len(seconds), tv)


def test_rollback_cuts_attention_and_restores_recurrent_state():
    for name, cuts in (("tiny_llama", True), ("tiny_jamba", False)):
        model = _model(name)
        cache = Cache()
        model(PROMPT, cache=cache)
        snap = cache.snapshot()
        model(torch.tensor([[1, 2, 3]]), cache=cache)
        assert cache.rollback(snap, 1) is cuts
        if not cuts:  # restored: the caller feeds the kept token again
            model(torch.tensor([[1]]), cache=cache)
        assert cache.offset == PROMPT.shape[1] + 1
        reference = Cache()
        model(torch.cat((PROMPT, torch.tensor([[1]])), 1), cache=reference)
        a, b = model(torch.tensor([[9]]), cache=cache), model(torch.tensor([[9]]), cache=reference)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_an_encoder_decoder_model_drafts_with_another():
    """Each model encodes the input once; their decoders run as a decoder-only pair: greedy output
    is plain greedy's (a draft that is the model itself accepts everything), a padded encoder row
    decodes as it does unpadded, sampling takes the same draws as itself with the same seed."""
    target, other = _model("tiny_t5"), _model("tiny_t5", seed=1)
    source = torch.tensor([[5, 17, 3, 42, 8, 11, 60]])
    plain = target.generate(source, 12)
    for draft, rate in ((other, None), (copy.deepcopy(target), 1.0)):
        stats = {}
        out = target.generate(source, 12, draft=draft, draft_tokens=3, stats=stats)
        assert torch.equal(out, plain)
        assert rate is None or stats["acceptance_rate"] == rate
    padded = torch.cat([source, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = (torch.arange(10) < 7).long()[None]
    assert torch.equal(target.generate(padded, 12, attention_mask=mask, draft=other, draft_tokens=2), plain)
    stop = int(plain[0, 5])
    out = target.generate(source, 12, draft=other, eos_token_id=stop)
    assert out.shape[1] <= 6 and int(out[0, -1]) == stop
    sampled = [target.generate(source, 8, draft=other, temperature=0.9, generator=torch.Generator().manual_seed(4))
               for _ in range(2)]
    assert torch.equal(sampled[0], sampled[1]) and sampled[0].shape == (1, 9)
    with pytest.raises(ArchError, match="the draft's family is decoder and the target's encoder_decoder"):
        target.generate(source, 4, draft=_model("tiny_llama"))
    with pytest.raises(ArchError, match="decoder model's first layers"):
        target.generate(source, 4, draft=1)
