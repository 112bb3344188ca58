"""Two routers that are not a learned top-k over each token: hash routing (Roller et al. 2021, a
fixed token id → expert map) and expert-choice routing (Zhou et al. 2022, each expert takes its
top tokens of the sequence). Each against the published rule written out in plain PyTorch, with
the same weights; their refusals, located; facts; and the model properties (cached decoding,
causality, gradients) where they apply."""

import math

import pytest
import torch
import torch.nn.functional as F

from archlang import runtime as rt
from archlang.api import compile_spec, load_source
from archlang.compiler import lower
from archlang.compiler.facts import compute_facts
from archlang.runtime.context import Context
from archlang.spec import ArchError, ArchErrors
from archlang.spec.format import format_source

from .test_matrix import _check_cache, _check_causal, _check_gradients, _check_shift

VOCAB, D, E, HIDDEN = 61, 32, 4, 16

SPEC = """model m {{
    vocab = {vocab}
    d_model = {d}
    context = 64
    family = {family}
    block layer {{
        norm = rmsnorm()
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = moe(experts = {e}, top_k = {top_k}, router = {router}, expert = swiglu(hidden = {hidden}){extra})
    }}
    layers = layer * 2
}}
"""


def spec(router: str, *, family: str = "decoder", top_k: int = 1, extra: str = "") -> str:
    return SPEC.format(vocab=VOCAB, d=D, e=E, hidden=HIDDEN, family=family, top_k=top_k, router=router, extra=extra)


def build(text: str):
    model = load_source(compile_spec(text).source, "m").build()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def layer(router: str, top_k: int, *, routed_scale: float = 1.0, shared: bool = False) -> rt.MoE:
    torch.manual_seed(0)
    moe = rt.MoE(D, E, top_k, expert_kind="swiglu", expert_act="silu", expert_hidden=HIDDEN, router=router,
                 routed_scale=routed_scale, vocab=VOCAB if router == "hash" else None,
                 shared_kind="swiglu" if shared else None, shared_act="silu" if shared else None,
                 shared_hidden=HIDDEN if shared else None)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.5)
    return moe


def expert(moe: rt.MoE, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e as a plain SwiGLU: down(silu(gate(x)) * up(x)), gate stacked before up."""
    gate, up = moe.experts_gate_up[e].chunk(2, dim=0)
    return (F.silu(x @ gate.T) * (x @ up.T)) @ moe.experts_down[e].T


def shared(moe: rt.MoE, x: torch.Tensor) -> torch.Tensor:
    gate, up = moe.shared_gate_up.chunk(2, dim=0)
    return (F.silu(x @ gate.T) * (x @ up.T)) @ moe.shared_down.T


# ----------------------------------------------------------------------------- hash routing

def test_hash_routing_sends_each_token_to_its_fixed_expert():
    moe = layer("hash", 1, routed_scale=1.5)
    ids = torch.randint(0, VOCAB, (2, 7))
    x = torch.randn(2, 7, D)
    got = moe(x, Context(positions=torch.arange(7), input_ids=ids))
    table = moe.hash_table
    want = torch.stack([torch.stack([1.5 * expert(moe, int(table[ids[b, t]]), x[b, t]) for t in range(7)])
                        for b in range(2)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_hash_map_is_balanced_fixed_and_saved_with_the_weights():
    a, b = layer("hash", 1), layer("hash", 1)
    assert torch.equal(a.hash_table, b.hash_table)  # every build deals the ids out the same way
    load = torch.bincount(a.hash_table, minlength=E)
    assert int(load.max() - load.min()) <= 1  # Hash Layers' balanced assignment
    assert "hash_table" in a.state_dict() and not any("router" in n for n, _ in a.named_parameters())


def test_hash_routing_needs_token_ids():
    model = build(spec("hash"))
    with pytest.raises(ArchError, match="token's id"):
        model(inputs_embeds=torch.randn(1, 5, D))


def test_a_hash_routed_decoder_decodes_with_its_cache_shifts_is_causal_and_trains_every_weight():
    text = spec("hash", extra=", routed_scale = 2").replace("    family = decoder\n",
                                                           "    family = decoder\n    position = rope(theta = 10000)\n"
                                                           ).replace("context = 64", "context = 128")  # shifted to 100
    model = build(text)
    ids = torch.randint(0, 50, (2, 12))  # the checks run 12 tokens and bump token 7 by one
    _check_shift(model, ids, _check_cache(model, ids))
    _check_causal(model, ids)
    _check_gradients(model, ids)


def test_hash_routing_has_no_router_weights_in_the_facts():
    hashed = compute_facts(lower(compile_spec(spec("hash")).model)).params_total
    learned = compute_facts(lower(compile_spec(spec("softmax")).model)).params_total
    assert learned - hashed == 2 * E * D  # two layers' routers


# ----------------------------------------------------------------------------- expert choice

@pytest.mark.parametrize("top_k,with_shared", [(1, False), (2, True)])
def test_expert_choice_lets_each_expert_take_its_top_tokens(top_k, with_shared):
    moe = layer("expert_choice", top_k, routed_scale=0.7, shared=with_shared)
    bsz, t = 2, 9
    x = torch.randn(bsz, t, D)
    got = moe(x, Context(positions=torch.arange(t)))
    capacity = math.ceil(t * top_k / E)
    want = torch.zeros_like(x)
    for b in range(bsz):
        probs = torch.softmax(x[b] @ moe.router.T, dim=-1)  # (T, E)
        for e in range(E):
            for tok in torch.topk(probs[:, e], capacity).indices.tolist():
                want[b, tok] += 0.7 * probs[tok, e] * expert(moe, e, x[b, tok])
        if with_shared:
            want[b] += shared(moe, x[b])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_an_expert_choice_encoder_trains_every_weight_and_refuses_padding():
    model = build(spec("expert_choice", family="encoder", top_k=2, extra=", z_loss = 0.001"))
    ids = torch.randint(0, VOCAB, (2, 10))
    model.train()
    out = model(ids)
    hidden = out[0] if isinstance(out, tuple) else out
    ((hidden * torch.randn_like(hidden)).sum() + model.aux_loss).backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not bad, f"no gradient for {bad}"
    with pytest.raises(ArchError, match="whole sequence"):
        model(ids, attention_mask=torch.ones(2, 10, dtype=torch.long))


# ----------------------------------------------------------------------------- refusals and the language

@pytest.mark.parametrize("text,path,message", [
    (spec("expert_choice", top_k=2), "router", "causal"),
    (spec("hash", top_k=2), "top_k", "one expert"),
    (spec("hash", extra=", aux_loss = 0.01"), "aux_loss", "token-choice"),
    (spec("expert_choice", family="encoder", extra=", capacity_factor = 1.25"), "capacity_factor", "token-choice"),
    (spec("expert_choice", family="encoder", extra=", normalize_top_k = false"), "normalize_top_k", "token-choice"),
])
def test_what_a_router_cannot_honour_is_refused_at_its_value(text, path, message):
    with pytest.raises((ArchError, ArchErrors)) as info:
        compile_spec(text)
    rendered = str(info.value)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if f"{path} = " in row)
    column = text.splitlines()[line - 1].index(f"{path} = ") + len(f"{path} = ") + 1  # at the value
    assert message in rendered and f":{line}:{column}:" in rendered, rendered


def test_expert_choice_is_accepted_in_an_encoder_decoders_encoder_only():
    base = """model m {
    vocab = 61
    d_model = 32
    context = 64
    family = encoder_decoder
    let attention = mha(heads = 4)
    block enc {
        norm = rmsnorm()
        attention = attention
        ffn = FFN
    }
    block dec {
        norm = rmsnorm()
        attention = attention
        cross_attention = attention
        ffn = FFN
    }
    encoder_layers = enc * 1
    decoder_layers = dec * 1
}
"""
    routed = "moe(experts = 4, top_k = 2, router = expert_choice, expert = swiglu(hidden = 16))"
    compile_spec(base.replace("FFN", routed, 1).replace("FFN", "swiglu(hidden = 16)"))
    with pytest.raises((ArchError, ArchErrors), match="causal"):
        compile_spec(base.replace("FFN", "swiglu(hidden = 16)", 1).replace("FFN", routed))


@pytest.mark.parametrize("router", ["hash", "expert_choice"])
def test_the_routers_format_back_to_themselves(router):
    text = spec(router, family="encoder" if router == "expert_choice" else "decoder",
                top_k=1 if router == "hash" else 2)
    assert f"router = {router}" in format_source(text)
    assert format_source(format_source(text)) == format_source(text)


def test_export_to_hugging_face_refuses_these_routers_at_the_router():
    pytest.importorskip("transformers")
    from archlang.interop.hf_export import export_config

    text = spec("hash")
    with pytest.raises(ArchError, match="router = hash") as info:
        export_config(compile_spec(text).model)
    assert info.value.span is not None and info.value.span.line == 9
