"""Mixture-of-Depths (Raposo et al. 2024): `route = depth_router(...)` on a block.

The reference re-expresses the paper's equations in plain PyTorch: r = x W_r^T; the top
k = ceil(capacity T) tokens of each sequence; x_i + r_i (f(x~)_i - x~_i) for the chosen, x_i
for the others; the block f run on the chosen tokens alone, at their own positions (through the
same spec without routing, given `positions`)."""

import math

import pytest
import torch
import torch.nn.functional as F

from archlang.api import compile_spec, load_source
from archlang.compiler.facts import compute_facts
from archlang.runtime import Cache, depth_routing
from archlang.spec.errors import ArchError

ROUTED = """
model mod {
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    position = rope()
    block r {
        norm = rmsnorm()
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 48)
        route = depth_router(capacity = 0.25, aux_loss = 0.5)
    }
    layers = [r]
}
"""
UNROUTED = ROUTED.replace("        route = depth_router(capacity = 0.25, aux_loss = 0.5)\n", "")
T = 12


def build(text, seed=0):
    compiled = compile_spec(text)
    model = load_source(compiled.source, "m").build().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise * 0.2) if p.dim() >= 2 else p.add_(noise * 0.2)
    return model, compiled


def ids(t=T, b=2, seed=1):
    return torch.randint(0, 61, (b, t), generator=torch.Generator().manual_seed(seed))


def reference(model, plain, tokens, capacity):
    """The paper's equations for a one-layer model (no final norm): the features it returns."""
    x = model.embed(tokens)  # (B, T, C)
    router = model.layers[0].route
    r = x @ router.router.weight[0]  # (B, T)
    k = math.ceil(capacity * x.shape[1])
    rows = []
    for b in range(x.shape[0]):
        chosen = r[b].topk(k).indices.sort().values
        picked = x[b, chosen]  # (k, C)
        f = plain.features(inputs_embeds=picked[None], positions=chosen)[0]  # the block on the chosen tokens
        y = x[b].clone()
        y[chosen] = picked + r[b, chosen, None] * (f - picked)
        rows.append(y)
    targets = torch.zeros_like(r).scatter(1, r.topk(k, dim=1).indices, 1.0)
    predictor = router.predictor
    logits = predictor.out(F.silu(predictor.hidden(x))).squeeze(-1)
    aux = 0.5 * F.binary_cross_entropy_with_logits(logits, targets)
    return torch.stack(rows), aux


def with_plain_weights(model):
    """The same spec without routing, holding the routed model's block weights."""
    plain, _ = build(UNROUTED)
    state = {k: v for k, v in model.state_dict().items() if ".route." not in k}
    plain.load_state_dict(state)
    return plain


def test_matches_the_papers_equations_in_training_and_scoring():
    model, _ = build(ROUTED)
    plain = with_plain_weights(model)
    tokens = ids()
    with torch.no_grad():
        expected, aux = reference(model, plain, tokens, 0.25)
        model.train()
        trained = model.features(tokens)
        torch.testing.assert_close(model.aux_loss, aux, atol=1e-6, rtol=1e-5)
        model.eval()
        scored = model.features(tokens)  # evaluation without a cache: the same top-k
    torch.testing.assert_close(trained, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scored, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain.features(tokens), expected, atol=1e-3)  # routing changed something


def test_exactly_k_tokens_run_the_block_and_the_others_pass_unchanged():
    model, _ = build(ROUTED)
    seen, io = [], {}
    layer = model.layers[0]
    layer.attn_norm.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    layer.register_forward_hook(lambda m, args, out: io.update(x=args[0], y=out))
    tokens = ids(t=T, b=3)
    with torch.no_grad():
        model(tokens)
    assert seen == [(1, 3, 32)] * 3  # ceil(0.25 * 12) = 3 tokens of each of the 3 sequences
    x, y = io["x"], io["y"]
    changed = (y != x).any(-1)  # (B, T)
    assert changed.sum(1).tolist() == [3, 3, 3]
    scores = layer.route.router(x).squeeze(-1)
    top = scores.topk(3, dim=1).indices
    assert torch.equal(changed, torch.zeros_like(changed).scatter(1, top, True))
    assert torch.equal(y[~changed], x[~changed])  # skipped tokens: exactly their input


@pytest.mark.parametrize("capacity,t,k", [(0.1, 30, 3), (0.125, 8, 1), (1.0, 5, 5), (0.3, 7, 3)])
def test_capacity_rounds_up_to_whole_tokens(capacity, t, k):
    from archlang.runtime.depth_router import routed_count

    assert routed_count(capacity, t) == k


def test_gradients_reach_router_and_predictor_and_not_the_input_through_the_predictor():
    model, _ = build(ROUTED)
    model.train()
    tokens = ids()
    loss = model.loss(tokens, ids(seed=3))
    loss.backward()
    route = model.layers[0].route
    for name, p in route.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The predictor's loss alone: no gradient reaches the block input through it ...
    route.zero_grad()
    x = torch.randn(2, T, 32, requires_grad=True)
    ctx = model.make_context(tokens)
    route.choose(x, route.router(x).squeeze(-1).detach(), ctx)
    ctx.aux_losses[0].backward()
    assert x.grad is None
    assert route.predictor.hidden.weight.grad.abs().sum() > 0
    # ... while without a predictor the same loss trains the router, through x
    x.grad = None
    route.predictor = None
    ctx = model.make_context(tokens)
    route.choose(x, route.router(x).squeeze(-1), ctx)
    ctx.aux_losses[0].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


CAUSAL_SPECS = {
    "predictor": ROUTED.replace("layers = [r]", "layers = [r, r]"),
    "router_sign": ROUTED.replace("layers = [r]", "layers = [r, r]").replace(
        "aux_loss = 0.5", "aux_loss = 0.5, predictor = false"),
    "window_and_plain_layer": ROUTED.replace("gqa(heads = 4, kv_heads = 2)", "gqa(heads = 4, kv_heads = 2, window = 4)")
    .replace("    layers = [r]", """    block p {
        norm = rmsnorm()
        attention = mha(heads = 4)
        ffn = swiglu(hidden = 48)
    }
    layers = [p, r, p, r]"""),
}


@pytest.mark.parametrize("name", ["predictor", pytest.param("router_sign", marks=pytest.mark.slow),
                                  pytest.param("window_and_plain_layer", marks=pytest.mark.slow)])
def test_cached_decoding_equals_the_full_forward_in_causal_routing(name):
    model, _ = build(CAUSAL_SPECS[name], seed=4)
    tokens = ids(t=16, b=3)
    chosen = []
    for layer in model.layers:
        if hasattr(layer, "route"):
            if layer.route.predictor is not None:
                with torch.no_grad():
                    layer.route.predictor.out.bias.zero_()  # a decision that varies from token to token
            layer.route.register_forward_pre_hook(
                lambda m, args: chosen.append(m.causal_logits(args[1], m.router(args[1]).squeeze(-1)) > 0))
    with torch.no_grad(), depth_routing(model, "causal"):
        full = model(tokens)
        decisions = torch.cat([c.flatten() for c in chosen])
        assert decisions.any() and not decisions.all()  # some tokens run the blocks, some skip them
        cache = Cache()
        steps = [model(tokens[:, :5], cache=cache)] + [model(tokens[:, t:t + 1], cache=cache) for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(model(tokens), full, atol=1e-4)  # top-k scoring is another routing


def test_generate_routes_causally_with_and_without_the_cache():
    model, _ = build(CAUSAL_SPECS["predictor"], seed=4)
    prompt = ids(t=5, b=2)
    cached = model.generate(prompt, 6)
    uncached = model.generate(prompt, 6, use_cache=False)
    assert torch.equal(cached, uncached)
    with torch.no_grad(), depth_routing(model, "causal"):
        greedy = model(cached[:, :-1]).argmax(-1)[:, 4:]
    assert torch.equal(greedy, cached[:, 5:])
    assert all(m.routing == "topk" for m in model.modules() if hasattr(m, "routing"))  # restored


def test_training_with_a_cache_or_a_padding_mask_is_refused():
    model, _ = build(ROUTED)
    model.train()
    with pytest.raises(ArchError, match="without a cache"):
        model(ids(), cache=Cache())
    model.eval()
    with pytest.raises(ArchError, match="attention mask"):
        model(ids(), attention_mask=torch.ones(2, T))


def test_facts_scale_the_routed_block_by_its_capacity():
    model, compiled = build(ROUTED)
    routed = compute_facts(compiled.graph)
    plain = compute_facts(compile_spec(UNROUTED).graph)
    assert routed.params_total == sum(p.numel() for p in model.parameters())
    route = sum(p.numel() for p in model.layers[0].route.parameters())
    assert route == 32 + (4 * 32 + 4) + (4 + 1)  # router, predictor (hidden = d_model / 8)
    assert routed.params_total == plain.params_total + route
    head = 2 * 61 * 32
    block = plain.flops_per_token - head
    router_flops = 2 * 32 + 2 * (32 * 4 + 4)
    assert routed.flops_per_token == round(0.25 * block + router_flops + head)


def test_generated_code_routes_the_block_body():
    source = compile_spec(ROUTED).source
    assert "self.route = rt.DepthRouter(32, capacity=0.25, predictor_hidden=4, aux_loss=0.5)" in source
    assert "return self.route(self.routed, x, ctx)" in source
    assert "def routed(self, x: torch.Tensor, ctx: rt.Context) -> torch.Tensor:" in source
    assert "# (1, k, 32)" in source


@pytest.mark.parametrize("text,where,message", [
    (ROUTED.replace("ffn = swiglu(hidden = 48)", "ffn = swiglu(hidden = 48)\n        shared = true"),
     "route = depth_router", "cannot be shared"),
    (ROUTED.replace("ffn = swiglu(hidden = 48)", "ffn = moe(experts = 4, top_k = 2, expert = swiglu(hidden = 16))"),
     "route = depth_router", "moe FFN"),
    (ROUTED.replace("attention = gqa(heads = 4, kv_heads = 2)", "ssm = mamba(d_state = 4)"),
     "route = depth_router", "not ssm"),
    (ROUTED.replace("dtype = fp32", "dtype = fp32\n    family = encoder").replace("position = rope()", ""),
     "route = depth_router", "decoder models"),
    (ROUTED.replace("capacity = 0.25", "capacity = 1.5"), "capacity = 1.5", "less than or equal to 1"),
    (ROUTED.replace("aux_loss = 0.5", "predictor = false, predictor_hidden = 8"), "predictor_hidden = 8",
     "predictor, which is off"),
])
def test_refusals_are_located(text, where, message):
    with pytest.raises(ArchError) as info:
        compile_spec(text)
    errors = getattr(info.value, "errors", None) or [info.value]
    err = errors[0]
    line = next(i for i, l in enumerate(text.splitlines(), start=1) if where in l)
    assert message in err.message, err.message
    assert err.span is not None and err.span.line == line, (err.span, line)
