"""The 2024-2026 MoE variants of runtime.MoE against Hugging Face modules (DeepSeek-V3, DeepSeek-V2
group_limited_greedy, Llama 4, gpt-oss) with every weight and bias perturbed, against the DeepSeek-V3
formulas for auxiliary-loss-free balancing and the sequence-wise loss, and the properties every
routing variant must keep: gradients everywhere, no silent no-op, per-token routing."""

import pytest
import torch

from archlang.runtime.context import Context
from archlang.runtime.moe import MoE
from archlang.spec.errors import ArchError

transformers = pytest.importorskip("transformers")

TOL = dict(atol=2e-5, rtol=1e-5)
H, I, E = 16, 12, 8  # hidden, expert hidden, experts


def perturb(module: torch.nn.Module, std: float = 0.3) -> None:
    """HF leaves biases (and the correction bias) at zero, which would hide a mapping bug."""
    torch.manual_seed(0)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            t.normal_(std=std)


def load(ours: MoE, weights: dict[str, torch.Tensor]) -> MoE:
    state = ours.state_dict()
    assert set(weights) == set(state), set(weights) ^ set(state)
    ours.load_state_dict({k: v.detach().clone() for k, v in weights.items()})
    return ours


def shared_swiglu(mlp) -> dict[str, torch.Tensor]:
    return {"shared_gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
            "shared_down": mlp.down_proj.weight}


# ---------------------------------------------------------------- Hugging Face parity

def deepseek_v3(**kw):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    config = DeepseekV3Config(hidden_size=H, moe_intermediate_size=I, n_routed_experts=E, num_experts_per_tok=3,
                              n_group=4, topk_group=2, n_shared_experts=1, routed_scaling_factor=2.5,
                              norm_topk_prob=True, hidden_act="silu", **kw)
    hf = DeepseekV3MoE(config).eval()
    perturb(hf)
    ours = MoE(H, E, 3, expert_kind="swiglu", expert_act="silu", expert_hidden=I, shared_kind="swiglu",
               shared_act="silu", shared_hidden=I, router="sigmoid", normalize_top_k=config.norm_topk_prob,
               routed_scale=2.5, correction_bias=True, n_group=4, topk_group=2, group_score="top2_sum")
    load(ours, {"router": hf.gate.weight, "e_score_correction_bias": hf.gate.e_score_correction_bias,
                "experts_gate_up": hf.experts.gate_up_proj, "experts_down": hf.experts.down_proj,
                **shared_swiglu(hf.shared_experts)})
    return hf, ours.eval()


def deepseek_v2():
    from transformers import DeepseekV2Config
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe

    config = DeepseekV2Config(hidden_size=H, moe_intermediate_size=I, n_routed_experts=E, num_experts_per_tok=3,
                              n_group=4, topk_group=2, topk_method="group_limited_greedy", n_shared_experts=2,
                              routed_scaling_factor=1.5, hidden_act="silu", num_attention_heads=4,
                              num_key_value_heads=4)
    hf = DeepseekV2Moe(config).eval()
    perturb(hf)
    ours = MoE(H, E, 3, expert_kind="swiglu", expert_act="silu", expert_hidden=I, shared_kind="swiglu",
               shared_act="silu", shared_hidden=2 * I, router="softmax", normalize_top_k=False, routed_scale=1.5,
               n_group=4, topk_group=2, group_score="max")
    load(ours, {"router": hf.gate.weight, "experts_gate_up": hf.experts.gate_up_proj,
                "experts_down": hf.experts.down_proj, **shared_swiglu(hf.shared_experts)})
    return hf, ours.eval()


def llama4(top_k=1):
    from transformers import Llama4TextConfig
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

    config = Llama4TextConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=top_k,
                              hidden_act="silu")
    hf = Llama4TextMoe(config).eval()
    perturb(hf)
    ours = MoE(H, E, top_k, expert_kind="swiglu", expert_act="silu", expert_hidden=I, shared_kind="swiglu",
               shared_act="silu", shared_hidden=I, router="sigmoid", normalize_top_k=False, scale_input=True)
    # HF stores the experts input-major: (E, H, 2I) and (E, I, H); gate then up, as ours
    load(ours, {"router": hf.router.weight, "experts_gate_up": hf.experts.gate_up_proj.transpose(1, 2),
                "experts_down": hf.experts.down_proj.transpose(1, 2), **shared_swiglu(hf.shared_expert)})
    return hf, ours.eval()


def gpt_oss(limit=0.6):
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    config = GptOssConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=2,
                          swiglu_limit=limit)
    hf = GptOssMLP(config).eval()
    perturb(hf)
    ours = MoE(H, E, 2, expert_kind="swiglu", expert_act="swiglu_oai", expert_hidden=I, expert_bias=True,
               router="softmax", normalize_top_k=True, router_bias=True, glu_limit=limit,
               glu_alpha=config.swiglu_alpha)
    gate_up, gate_up_bias = hf.experts.gate_up_proj, hf.experts.gate_up_proj_bias
    # HF interleaves gate and up along the output (gate = [..., ::2]); ours stacks gate then up
    load(ours, {"router": hf.router.weight, "router_bias": hf.router.bias,
                "experts_gate_up": torch.cat([gate_up[..., ::2], gate_up[..., 1::2]], -1).transpose(1, 2),
                "experts_gate_up_bias": torch.cat([gate_up_bias[:, ::2], gate_up_bias[:, 1::2]], -1),
                "experts_down": hf.experts.down_proj.transpose(1, 2), "experts_down_bias": hf.experts.down_proj_bias})
    return hf, ours.eval()


def _x(b=3, t=11, seed=1):
    return torch.randn(b, t, H, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("build", [deepseek_v3, deepseek_v2], ids=["deepseek_v3", "deepseek_v2_group_greedy"])
def test_deepseek_matches_hf(build):
    hf, ours = build()
    x = _x()
    with torch.no_grad():
        expected = hf(x)
        torch.testing.assert_close(ours(x), expected, **TOL)
        ours.n_group = 1  # the groups must change some token's experts here, or this proves little
        assert not torch.allclose(ours(x), expected, atol=1e-3)


def test_deepseek_v3_router_matches_hf_choice_and_weights():
    """Same experts chosen (with the bias for choice only) and the same uncorrected weights."""
    hf, ours = deepseek_v3()
    x = _x().reshape(-1, H)
    with torch.no_grad():
        _, hf_w, hf_i = hf.gate(x)
        _, _, w, i = ours.route(x)
    order_hf, order_ours = hf_i.sort(-1), i.sort(-1)
    torch.testing.assert_close(order_ours.values, order_hf.values)
    torch.testing.assert_close(w.gather(1, order_ours.indices), hf_w.gather(1, order_hf.indices), **TOL)


@pytest.mark.parametrize("top_k", [1, 2])
def test_llama4_matches_hf(top_k):
    hf, ours = llama4(top_k)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x)[0].reshape(x.shape), **TOL)


def test_gpt_oss_matches_hf_with_the_clamp_active():
    hf, ours = gpt_oss(limit=0.6)
    x = _x()
    with torch.no_grad():
        pre = torch.einsum("nh,ehf->nef", x.reshape(-1, H), hf.experts.gate_up_proj) + hf.experts.gate_up_proj_bias
        assert (pre[..., ::2] > 0.6).any() and (pre[..., 1::2].abs() > 0.6).any()  # both clamps bite
        torch.testing.assert_close(ours(x), hf(x)[0], **TOL)


# ---------------------------------------------------------------- balancing and losses

def _balanced(**kw):
    torch.manual_seed(3)
    return MoE(H, E, 2, expert_kind="swiglu", expert_act="silu", expert_hidden=I, router="sigmoid",
               correction_bias=True, **kw)


def test_bias_update_follows_the_load_and_only_real_tokens():
    m = _balanced(bias_update_speed=0.01).train()
    x = _x(2, 9)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0  # padding must not count
    with torch.no_grad():
        _, _, _, index = m.route(x.reshape(-1, H))
    load = torch.bincount(index.reshape(2, 9, 2)[mask.bool()].reshape(-1), minlength=E).float()
    assert load.sum() == 2 * 14 and (load != load.mean()).any()
    m(x, Context(positions=torch.arange(9), attention_mask=mask)).sum().backward()
    expected = 0.01 * torch.sign(load.mean() - load)
    torch.testing.assert_close(m.e_score_correction_bias, expected)
    assert (m.e_score_correction_bias[load < load.mean()] > 0).all()
    assert (m.e_score_correction_bias[load > load.mean()] < 0).all()
    assert m.e_score_correction_bias.grad is None
    assert "e_score_correction_bias" not in dict(m.named_parameters())
    assert "e_score_correction_bias" in m.state_dict()


def test_bias_is_left_alone_in_eval_and_when_off():
    for speed, train in [(0.01, False), (0.0, True)]:
        m = _balanced(bias_update_speed=speed).train(train)
        m(_x(), Context(positions=torch.arange(11)))
        assert (m.e_score_correction_bias == 0).all()


def test_bias_update_balances_the_load_over_steps():
    m = _balanced(bias_update_speed=0.02).train()
    x = _x(4, 32, seed=5)
    with torch.no_grad():
        m.router.normal_(std=0.3)
        m.router[0].add_(0.3)  # expert 0 starts overloaded

    def spread():
        _, _, _, index = m.route(x.reshape(-1, H))
        return torch.bincount(index.reshape(-1), minlength=E).float().std()

    before = spread()
    for _ in range(20):
        with torch.no_grad():
            m(x)
    assert spread() < before / 2


def reference_sequence_loss(scores, index, real, experts, top_k):
    """DeepSeek-V3 eq. 17-20, one sequence at a time, in plain loops."""
    b, t = real.shape
    losses = []
    for s in range(b):
        tokens = [j for j in range(t) if real[s, j]]
        if not tokens:
            continue
        total = 0.0
        for i in range(experts):
            f = experts / (top_k * len(tokens)) * sum(int(i in index[s * t + j].tolist()) for j in tokens)
            p = sum(float(scores[s * t + j, i] / scores[s * t + j].sum()) for j in tokens) / len(tokens)
            total += f * p
        losses.append(total)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("router", ["sigmoid", "softmax"])
def test_sequence_aux_loss_matches_the_formula(router):
    torch.manual_seed(4)
    m = MoE(H, E, 3, expert_kind="swiglu", expert_act="silu", expert_hidden=I, router=router, seq_aux_loss=0.3,
            n_group=4, topk_group=2).train()
    x = _x(3, 7)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[2, 4:] = 0
    ctx = Context(positions=torch.arange(7), attention_mask=mask)
    m(x, ctx)
    with torch.no_grad():
        _, probs, _, index = m.route(x.reshape(-1, H))
    expected = 0.3 * reference_sequence_loss(probs, index, mask.bool(), E, 3)
    (loss,) = ctx.aux_losses
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=loss.dtype), atol=1e-5, rtol=1e-5)
    loss.backward()
    assert m.router.grad is not None and m.router.grad.abs().sum() > 0


# ---------------------------------------------------------------- properties of every variant

VARIANTS = {
    "deepseek_v3": dict(router="sigmoid", correction_bias=True, n_group=4, topk_group=2, routed_scale=2.5,
                        shared_kind="swiglu", shared_act="silu", shared_hidden=I, bias_update_speed=0.01,
                        seq_aux_loss=0.1),
    # a group's best expert always survives, so max-scored groups only matter for top_k > topk_group
    "deepseek_v2": dict(router="softmax", normalize_top_k=False, n_group=2, topk_group=1, group_score="max"),
    "llama4": dict(router="sigmoid", normalize_top_k=False, scale_input=True, shared_kind="swiglu",
                   shared_act="silu", shared_hidden=I),
    "gpt_oss": dict(expert_act="swiglu_oai", expert_bias=True, router_bias=True, glu_limit=0.6),
}


def variant(name, top_k=2, seed=0, **over):
    torch.manual_seed(seed)
    kw = {"expert_kind": "swiglu", "expert_act": "silu", "expert_hidden": I, **VARIANTS[name], **over}
    m = MoE(H, E, top_k, **kw)
    with torch.no_grad():  # biases start at zero; give every one a value the output depends on
        for n, p in m.named_parameters():
            if p.dim() == 1 or n.endswith("_bias"):
                p.normal_(std=0.3)
        if m.e_score_correction_bias is not None:
            m.e_score_correction_bias.normal_(std=0.3)
        m.router.mul_(15)
    return m


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gradients_reach_every_parameter(name):
    m = variant(name).train()
    ctx = Context(positions=torch.arange(16))
    out = m(_x(4, 16), ctx)
    (out.pow(2).mean() + sum(ctx.aux_losses, out.new_zeros(()))).backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    for b in m.buffers():
        assert not b.requires_grad and b.grad is None


@pytest.mark.parametrize("name", list(VARIANTS))
def test_routing_is_per_token_in_eval(name):
    m = variant(name).eval()
    x = _x(2, 6)
    with torch.no_grad():
        together = m(x)
        alone = torch.stack([torch.stack([m(x[b, t][None, None])[0, 0] for t in range(6)]) for b in range(2)])
    torch.testing.assert_close(alone, together, **TOL)


# each feature, turned off with the same weights, gives a different output
FEATURE_OFF = [
    ("deepseek_v3", 1, "correction bias", lambda m: m.e_score_correction_bias.zero_()),
    ("deepseek_v3", 1, "expert groups", lambda m: setattr(m, "n_group", 1)),
    ("deepseek_v2", 3, "expert groups", lambda m: setattr(m, "n_group", 1)),
    ("llama4", 1, "input scaling", lambda m: setattr(m, "scale_input", False)),
    ("gpt_oss", 1, "router bias", lambda m: m.router_bias.zero_()),
    ("gpt_oss", 1, "glu clamp", lambda m: setattr(m, "glu_limit", None)),
    ("gpt_oss", 1, "swiglu_oai", lambda m: setattr(m, "expert_act", "silu")),
]


@pytest.mark.parametrize("name,top_k,feature,switch_off", FEATURE_OFF,
                         ids=[f"{n}-{f}" for n, _, f, _ in FEATURE_OFF])
def test_each_feature_changes_the_output(name, top_k, feature, switch_off):
    m = variant(name, top_k=top_k).eval()
    x = _x(4, 16)
    with torch.no_grad():
        on = m(x)
        switch_off(m)
        off = m(x)
    assert not torch.allclose(on, off, atol=1e-4), feature


def test_sequence_loss_and_bias_update_are_reported_in_training_only():
    m = variant("deepseek_v3").train()
    ctx = Context(positions=torch.arange(16))
    m(_x(2, 16), ctx)
    assert len(ctx.aux_losses) == 1 and ctx.aux_losses[0] > 0
    m.eval()
    ctx = Context(positions=torch.arange(16))
    bias = m.e_score_correction_bias.clone()
    m(_x(2, 16), ctx)
    assert ctx.aux_losses == [] and torch.equal(m.e_score_correction_bias, bias)


def test_defaults_leave_the_module_as_before():
    torch.manual_seed(0)
    m = MoE(H, E, 2, expert_kind="swiglu", expert_act="silu", expert_hidden=I)
    assert [n for n, _ in m.named_parameters()] == ["router", "experts_gate_up", "experts_down"]
    assert list(m.state_dict()) == ["router", "experts_gate_up", "experts_down"]


@pytest.mark.parametrize("kw,message", [
    (dict(bias_update_speed=0.1), "correction bias"),
    (dict(n_group=3), "must divide"),
    (dict(n_group=4, topk_group=5), "topk_group"),
    (dict(n_group=4, topk_group=1, top_k=3), "exceeds"),
    (dict(n_group=8, topk_group=4), "at least 2 experts per group"),
    (dict(group_score="sum"), "unknown group_score"),
    (dict(expert_kind="mlp", expert_act="swiglu_oai"), "gated"),
    (dict(glu_limit=7.0), "swiglu_oai only"),
    (dict(expert_act="swiglu_oai", glu_limit=0.0), "> 0"),
    (dict(seq_aux_loss=-1.0), ">= 0"),
])
def test_refused_combinations(kw, message):
    kw = {"expert_kind": "swiglu", "expert_act": "silu", "expert_hidden": I, "top_k": 2, **kw}
    top_k = kw.pop("top_k")
    with pytest.raises(ArchError, match=message):
        MoE(H, E, top_k, **kw)


def test_training_step_compiles_in_one_graph_and_updates_the_bias_as_eager():
    """The bias update and the sequence loss stay inside torch.compile(fullgraph=True)."""
    eager, compiled = variant("deepseek_v3").train(), variant("deepseek_v3").train()
    step = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    x = _x(2, 5)
    for _ in range(2):
        ctxs = [Context(positions=torch.arange(5)), Context(positions=torch.arange(5))]
        torch.testing.assert_close(step(x, ctxs[1]), eager(x, ctxs[0]), **TOL)
        torch.testing.assert_close(ctxs[1].aux_losses[0], ctxs[0].aux_losses[0], **TOL)
    assert (eager.e_score_correction_bias != variant("deepseek_v3").e_score_correction_bias).any()
    torch.testing.assert_close(compiled.e_score_correction_bias, eager.e_score_correction_bias)


def test_the_correction_bias_stays_float32_and_routes_in_float32():
    """DeepSeek-V3 keeps its correction bias and router logits in float32 in a bf16 model: a
    bf16 buffer would round its update steps away."""
    from archlang.runtime.moe import MoE

    m = MoE(16, 4, 2, expert_kind="swiglu", expert_act="silu", expert_hidden=8, router="sigmoid", correction_bias=True,
            bias_update_speed=1e-3)
    with torch.no_grad():
        m.e_score_correction_bias.fill_(1.0 + 1e-3)
    m = m.to(torch.bfloat16)
    assert m.e_score_correction_bias.dtype == torch.float32 and m.router.dtype == torch.bfloat16
    assert m.e_score_correction_bias[0].item() == pytest.approx(1.0 + 1e-3, abs=1e-7)
    assert m.state_dict()["e_score_correction_bias"].dtype == torch.float32
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    logits = m.route(x.reshape(-1, 16))[0]
    expected = x.reshape(-1, 16).float() @ m.router.float().t()
    torch.testing.assert_close(logits, expected)
    assert m(x).dtype == torch.bfloat16
