"""The MoE routing variants of `moe(...)` (DeepSeek-V3 balancing and groups, gpt-oss router bias
and clamped SwiGLU, Llama 4 input scaling): they reach the runtime module, their weights are
counted as HF counts them, and every combination the runtime refuses is refused at check time
with an error at the value."""

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.compiler import compute_facts
from archlang.runtime.context import Context
from archlang.spec import ArchError, ArchErrors, SourceMap


def spec(moe: str) -> str:
    return ("model m {\n    family = decoder\n    vocab = 61\n    d_model = 32\n    context = 64\n    dtype = fp32\n"
            "    position = rope()\n    final_norm = rmsnorm()\n    block layer {\n        norm = rmsnorm()\n"
            "        attention = gqa(heads = 4, kv_heads = 2)\n"
            f"        ffn = moe(experts = 8, top_k = 2, expert = swiglu(hidden = 16), {moe})\n"
            "    }\n    layers = layer * 2\n}\n")


def build(moe: str):
    compiled = compile_spec(spec(moe))
    return compiled, load_source(compiled.source, "m").build()


def test_deepseek_v3_routing_reaches_the_runtime():
    compiled, model = build("shared_experts = 1, router = sigmoid, routed_scale = 2.5, correction_bias = true, "
                            "bias_update_speed = 0.001, seq_aux_loss = 0.0001, groups = 4, topk_groups = 2")
    moe = model.layers[0].moe
    assert (moe.n_group, moe.topk_group, moe.group_score) == (4, 2, "top2_sum")
    assert (moe.bias_update_speed, moe.seq_aux_coef, moe.router_kind) == (0.001, 0.0001, "sigmoid")
    # the correction bias is state, not a parameter: saved, never counted (HF counts it neither)
    assert "layers.0.moe.e_score_correction_bias" in model.state_dict()
    assert not any("correction" in n for n, _ in model.named_parameters())
    facts = compute_facts(compiled.graph)
    assert facts.params_total == sum(p.numel() for p in model.parameters())
    # a training step moves the bias against the load and adds the sequence-wise loss
    model.train()
    model(torch.randint(0, 61, (2, 9))).sum().backward()
    assert (moe.e_score_correction_bias.abs() > 0).any()
    assert model.aux_loss > 0


def test_router_bias_is_a_router_parameter():
    compiled, model = build("router_bias = true")
    assert model.layers[0].moe.router_bias.shape == (8,)
    facts = compute_facts(compiled.graph)
    plain = compute_facts(compile_spec(spec("router = softmax")).graph)
    assert facts.params_total - plain.params_total == 2 * 8
    assert facts.breakdown["moe_router"] - plain.breakdown["moe_router"] == 2 * 8


def test_clamped_swiglu_experts_and_input_scaling():
    text = spec("router_bias = true, scale_input = true").replace(
        "expert = swiglu(hidden = 16)", "expert = clamped_swiglu(hidden = 16, limit = 7, alpha = 1.5, bias = true)")
    compiled = compile_spec(text)
    moe = load_source(compiled.source, "m").build().layers[0].moe
    assert (moe.expert_act, moe.glu_limit, moe.glu_alpha, moe.scale_input, moe.expert_bias) == (
        "swiglu_oai", 7.0, 1.5, True, True)
    assert moe.experts_gate_up.shape == (8, 32, 32)


def test_defaults_write_no_new_keywords():
    source = compile_spec(spec("router = softmax")).source
    for word in ("router_bias", "correction_bias", "n_group", "scale_input", "glu_"):
        assert word not in source


def error(text: str) -> str:
    """The first line of the one error `text` gives, rendered as the CLI shows it."""
    sources = SourceMap()
    with pytest.raises((ArchError, ArchErrors)) as info:
        compile_spec(text, sources=sources)
    found = info.value.errors if isinstance(info.value, ArchErrors) else [info.value]
    assert len(found) == 1
    return found[0].render(sources).splitlines()[0]


REFUSED = [
    ("bias_update_speed = 0.01", "bias_update_speed", "correction bias"),
    ("groups = 3, topk_groups = 1", "groups", "must divide experts"),
    ("groups = 4", "groups", "needs topk_groups"),
    ("groups = 4, topk_groups = 5", "topk_groups", "exceeds groups"),
    ("topk_groups = 2", "topk_groups", "needs expert groups"),
    ("group_score = max", "group_score", "needs expert groups"),
    ("top_k = 5, groups = 4, topk_groups = 2", "top_k", "exceeds the 4 experts"),
    ("groups = 8, topk_groups = 4", "groups", "at least 2 experts per group"),
    ("groups = 8, topk_groups = 4, group_score = top2_sum", "group_score", "at least 2 experts per group"),
    ("seq_aux_loss = -1", "seq_aux_loss", "greater than or equal"),
]


@pytest.mark.parametrize("moe,field,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_at_the_value(moe, field, message):
    text = spec(moe).replace("top_k = 2, expert", "expert") if moe.startswith("top_k") else spec(moe)
    first = error(text)
    line = text.splitlines().index(next(ln for ln in text.splitlines() if f"{field} =" in ln)) + 1
    column = text.splitlines()[line - 1].index(f"{field} =") + 1
    assert message in first
    assert first.startswith(f"<string>:{line}:"), first
    assert int(first.split(":")[2]) >= column, first


@pytest.mark.parametrize("moe,expert,field", [
    ("shared = clamped_swiglu(hidden = 16)", "swiglu(hidden = 16)", "shared"),
    ("shared_experts = 1", "clamped_swiglu(hidden = 16)", "shared_experts"),
])
def test_clamped_swiglu_is_for_routed_experts_only(moe, expert, field):
    text = spec(moe).replace("expert = swiglu(hidden = 16)", f"expert = {expert}")
    msg = error(text)
    assert "routed experts only" in msg
    assert f":{text.splitlines().index(next(ln for ln in text.splitlines() if 'ffn =' in ln)) + 1}:" in msg


def test_clamped_swiglu_is_not_a_dense_ffn():
    text = spec("router = softmax").replace(
        "moe(experts = 8, top_k = 2, expert = swiglu(hidden = 16), router = softmax)", "clamped_swiglu(hidden = 16)")
    assert "unknown ffn kind `clamped_swiglu`" in error(text)


def test_the_stand_in_keeps_group_limited_routing():
    """`archc check --run`'s small model still routes within groups, keeping the same share."""
    from archlang.api import load_model
    from archlang.compiler.tiny import shrink

    from ..conftest import EXAMPLES

    ffn = shrink(load_model(EXAMPLES / "deepseek_v3.arch")).blocks["moe"].ffn
    assert (ffn.experts, ffn.groups, ffn.topk_groups, ffn.top_k) == (8, 4, 2, 4)
    assert ffn.correction_bias and ffn.group_score == "top2_sum"
