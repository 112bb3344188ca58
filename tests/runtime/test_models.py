"""Generated models: every construct trains (backward reaches every weight), a tiny model
overfits, and cached generation gives the tokens of full recomputation."""

import pytest
import torch

from archlang.runtime import Cache, depth_routing

from ..conftest import SPECS, build_tiny, tiny_specs


def _forward(model, ids):
    if model.config["family"] == "encoder_decoder":
        return model(ids, ids)
    out = model(ids)
    return out[0] + out[1].sum() if isinstance(out, tuple) else out


@pytest.mark.parametrize("passes", ["", None], ids=["unfused", "optimized"])
@pytest.mark.parametrize("path,name", tiny_specs(), ids=lambda v: getattr(v, "name", v))
def test_backward_reaches_every_weight(path, name, passes):
    model = build_tiny(path, name, passes).train()
    ids = torch.randint(0, 97, (2, 9))
    out = _forward(model, ids)
    loss = out.float().pow(2).mean() + model.aux_loss
    if model.config.get("mtp"):  # the multi-token prediction modules train beside the forward
        loss = loss + sum(logits.float().pow(2).mean() for logits in model.mtp_logits(ids))
    loss.backward()
    # a lightning indexer's choice of keys is discrete: no gradient reaches its weights (as in HF)
    missing = [n for n, p in model.named_parameters() if (p.grad is None and ".indexer." not in n)
               or (p.grad is not None and not torch.isfinite(p.grad).all())]
    assert not missing
    assert torch.isfinite(out).all()


def test_moe_reports_auxiliary_losses_in_training():
    model = build_tiny(SPECS / "tiny_mixtral.arch", "tiny_mixtral").train()
    model(torch.randint(0, 97, (2, 9)))
    assert model.aux_loss.item() > 0
    model.eval()
    model(torch.randint(0, 97, (2, 9)))
    assert model.aux_loss.item() == 0


def test_tiny_model_overfits_a_batch():
    model = build_tiny(SPECS / "tiny_llama.arch", "tiny_llama").train()
    ids = torch.randint(0, 97, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), ids[:, 1:].reshape(-1))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0 and loss.item() < 0.2


def _family(path, name) -> str:
    from archlang.spec import load_models

    return next(m.family for m in load_models(path) if m.name == name)


GENERATIVE = [(p, n) for p, n in tiny_specs() if _family(p, n) != "encoder"]  # encoders cannot generate


@pytest.mark.parametrize("path,name", GENERATIVE, ids=lambda v: getattr(v, "name", v))
def test_cached_generation_matches_recomputation(path, name):
    model = build_tiny(path, name).eval()
    prompt = torch.randint(0, 97, (2, 5))
    cached = model.generate(prompt, 12, use_cache=True)
    full = model.generate(prompt, 12, use_cache=False)
    assert torch.equal(cached, full)


@pytest.mark.parametrize("path,name", GENERATIVE, ids=lambda v: getattr(v, "name", v))
def test_cached_logits_match(path, name):
    """Step-by-step logits with the cache equal the full-sequence logits (a stricter check)."""
    model = build_tiny(path, name).eval()
    ids = torch.randint(0, 97, (2, 14))
    enc_dec = model.config["family"] == "encoder_decoder"
    # depth-routed blocks: the full forward routes token by token, as decoding must
    with torch.no_grad(), depth_routing(model, "causal"):
        memory = model.encode(ids) if enc_dec else None
        full = model(ids, memory=memory) if enc_dec else model(ids)
        cache = Cache()
        steps = [model(ids[:, :4], memory=memory, cache=cache) if enc_dec else model(ids[:, :4], cache=cache)]
        for t in range(4, 14):
            tok = ids[:, t:t + 1]
            steps.append(model(tok, memory=memory, cache=cache) if enc_dec else model(tok, cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


DECODERS = [(p, n) for p, n in GENERATIVE if n != "tiny_t5"]


@pytest.mark.parametrize("path,name", DECODERS, ids=lambda v: getattr(v, "name", v))
def test_logits_to_keep_gives_the_last_positions(path, name):
    """What generation asks for: the head runs on the last positions only, with the same values."""
    model = build_tiny(path, name).eval()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        full = model(ids)
        for keep in (1, 3):
            torch.testing.assert_close(model(ids, logits_to_keep=keep), full[:, -keep:])


def test_sliding_window_cache_is_bounded():
    model = build_tiny(SPECS / "tiny_mixtral.arch", "tiny_mixtral").eval()
    cache = Cache()
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 20)), cache=cache)
    assert all(state["k"].shape[2] == 6 for state in cache.layers.values())  # window = 6


def test_sampling_is_reproducible_with_a_generator():
    model = build_tiny(SPECS / "tiny_llama.arch", "tiny_llama").eval()
    prompt = torch.randint(0, 97, (1, 3))
    a = model.generate(prompt, 8, temperature=0.8, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 8, temperature=0.8, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (1, 11)


def test_context_limit_is_enforced():
    model = build_tiny(SPECS / "tiny_llama.arch", "tiny_llama")
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model(torch.zeros(1, 65, dtype=torch.long))
