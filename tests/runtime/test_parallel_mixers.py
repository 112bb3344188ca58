"""Parallel mixers (`mixers = parallel(...)`, Falcon-H1): attention and a Mamba-2 ssm read the
same normed input, each behind its own in/out multiplier, and their sum is added back; with the
µP multipliers of the keys, of the in-projection's parts and of the SwiGLU's gate and down
projections. Checked against a plain PyTorch re-expression of the block with the same weights
(the SSM as its token-by-token recurrence, not the chunked algorithm the runtime runs), and for
causality, cached decoding, gradients, facts and located refusals."""

import math

import pytest
import torch
import torch.nn.functional as F

from archlang.api import build, compile_spec, load_model
from archlang.compiler import lower
from archlang.compiler.facts import compute_facts
from archlang.spec import ArchError, ArchErrors

from .test_matrix import VOCAB, T, _check_cache, _check_causal, _check_gradients

D, HEADS, KV_HEADS, HD = 32, 4, 2, 8
SSM_HEADS, SSM_HD, GROUPS, N, CONV = 4, 8, 2, 8, 4
D_INNER = SSM_HEADS * SSM_HD
FUSED = "fold-rope,fuse-qkv,fuse-gate-up,fuse-add-norm,share-constants,dce"

ALL = {"mixers": "parallel(attention_in = 0.5, attention_out = 1.5, ssm_in = 0.75, ssm_out = 1.25)",
       "key": 0.8, "parts": (1.1, 0.9, 1.2, 0.8, 1.3), "gate": 0.6, "down": 1.4, "norm": "before"}
PLAIN = {"mixers": "parallel()", "key": None, "parts": None, "gate": None, "down": None, "norm": None}


def spec(o: dict, *, extra: str = "", norm: str = "rmsnorm(eps = 1e-5)") -> str:
    key = f", key_multiplier = {o['key']}" if o["key"] else ""
    parts = f", in_proj_multipliers = [{', '.join(map(str, o['parts']))}]" if o["parts"] else ""
    gated = {"before": "norm_before_gate = true", "after": "gated_norm = true", None: "gated_norm = false"}[o["norm"]]
    ffn = ", ".join([f"hidden = 48"] + ([f"gate_multiplier = {o['gate']}"] if o["gate"] else [])
                    + ([f"down_multiplier = {o['down']}"] if o["down"] else []))
    return (f"model m {{\n    vocab = {VOCAB}\n    d_model = {D}\n    context = 64\n    dtype = fp32\n"
            f"    position = rope(theta = 10000)\n    final_norm = rmsnorm(eps = 1e-5)\n"
            f"    block layer {{\n        norm = {norm}\n        mixers = {o['mixers']}\n"
            f"        attention = gqa(heads = {HEADS}, kv_heads = {KV_HEADS}{key})\n"
            f"        ssm = mamba2(d_state = {N}, heads = {SSM_HEADS}, head_dim = {SSM_HD}, expand = none, "
            f"groups = {GROUPS}, chunk = 4, {gated}{parts})\n"
            f"        ffn = swiglu({ffn})\n{extra}    }}\n    layers = layer * 2\n}}\n")


def perturbed(text: str, passes: str):
    torch.manual_seed(0)
    model = build(text, passes=passes).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x):  # (B, H, T, hd), the half-split rotation
    t, hd = x.shape[2], x.shape[3]
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.outer(torch.arange(t, dtype=torch.float32), inv)
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat((-x2, x1), -1) * sin


def attention(w, h, p, key):
    b, t, _ = h.shape
    q = F.linear(h, w[f"{p}q_proj.weight"]).view(b, t, HEADS, HD).transpose(1, 2)
    k = F.linear(h, w[f"{p}k_proj.weight"]).view(b, t, KV_HEADS, HD).transpose(1, 2) * key
    v = F.linear(h, w[f"{p}v_proj.weight"]).view(b, t, KV_HEADS, HD).transpose(1, 2)
    q, k = rope(q), rope(k)
    k, v = (z.repeat_interleave(HEADS // KV_HEADS, dim=1) for z in (k, v))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(HD)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, HEADS * HD)
    return F.linear(a, w[f"{p}o_proj.weight"])


def mamba2(w, h, p, parts, norm):
    """Mamba-2 token by token: h_t = exp(dt·A)·h_{t-1} + dt·x_t·B_t, y_t = C_t·h_t + D·x_t."""
    b, t, _ = h.shape
    proj = F.linear(h, w[f"{p}ssm.in_proj"])
    if parts is not None:
        sizes = (D_INNER, D_INNER, GROUPS * N, GROUPS * N, SSM_HEADS)
        proj = proj * torch.cat([torch.full((s,), f) for s, f in zip(sizes, parts)])
    z, xbc, dt = proj.split([D_INNER, D_INNER + 2 * GROUPS * N, SSM_HEADS], -1)
    conv = F.conv1d(F.pad(xbc.transpose(1, 2), (CONV - 1, 0)), w[f"{p}ssm.conv_weight"], w[f"{p}ssm.conv_bias"],
                    groups=xbc.shape[-1])
    x, bb, cc = F.silu(conv).transpose(1, 2).split([D_INNER, GROUPS * N, GROUPS * N], -1)
    x = x.view(b, t, SSM_HEADS, SSM_HD)
    group = torch.arange(SSM_HEADS) // (SSM_HEADS // GROUPS)
    bb, cc = bb.view(b, t, GROUPS, N)[:, :, group], cc.view(b, t, GROUPS, N)[:, :, group]  # (B, T, H, N)
    dt = F.softplus(dt + w[f"{p}ssm.dt_bias"])
    A = -torch.exp(w[f"{p}ssm.A_log"])
    state = torch.zeros(b, SSM_HEADS, SSM_HD, N)
    ys = []
    for i in range(t):
        state = (torch.exp(dt[:, i] * A)[..., None, None] * state
                 + (dt[:, i, :, None] * x[:, i])[..., None] * bb[:, i, :, None, :])
        ys.append((state * cc[:, i, :, None, :]).sum(-1) + w[f"{p}ssm.D"][:, None] * x[:, i])
    y = torch.stack(ys, 1).reshape(b, t, D_INNER)

    def group_norm(v):
        g = v.view(b, t, GROUPS, -1)
        return (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).view(b, t, D_INNER) * w[f"{p}ssm.norm_weight"]

    if norm is None:
        y = y * F.silu(z)
    elif norm == "before":
        y = group_norm(y) * F.silu(z)
    else:
        y = group_norm(y * F.silu(z))
    return F.linear(y, w[f"{p}ssm.out_proj"])


def reference(w, ids, o, mult):
    x = F.embedding(ids, w["embed.weight"])
    for i in range(2):
        p = f"layers.{i}."
        h = rms(x, w[f"{p}mixers_norm.weight"])
        a = attention(w, h * mult["attention_in"], p, o["key"] or 1.0) * mult["attention_out"]
        s = mamba2(w, h * mult["ssm_in"], p, o["parts"], o["norm"]) * mult["ssm_out"]
        x = x + (s + a)
        h = rms(x, w[f"{p}ffn_norm.weight"])
        g = F.linear(h, w[f"{p}gate_proj.weight"]) * (o["gate"] or 1.0)
        f = F.linear(F.silu(g) * F.linear(h, w[f"{p}up_proj.weight"]), w[f"{p}down_proj.weight"]) * (o["down"] or 1.0)
        x = x + f
    return F.linear(rms(x, w["final_norm.weight"]), w["lm_head.weight"])


def multipliers(o):
    named = dict(attention_in=1.0, attention_out=1.0, ssm_in=1.0, ssm_out=1.0)
    if o["mixers"] == ALL["mixers"]:
        named.update(attention_in=0.5, attention_out=1.5, ssm_in=0.75, ssm_out=1.25)
    return named


def _ids(seed=1):
    return torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("options,passes", [(ALL, ""), (ALL, FUSED), (PLAIN, FUSED), ({**ALL, "norm": "after"}, "")],
                         ids=["multipliers", "multipliers-fused", "plain-fused", "norm_after"])
def test_matches_a_plain_pytorch_reexpression(options, passes):
    model = perturbed(spec(options), passes)
    ids = _ids()
    with torch.no_grad():
        got = model(ids)
        ref = reference(model.unfuse_state_dict(), ids, options, multipliers(options))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_every_multiplier_changes_the_output():
    """The reference would agree with a model that ignored a multiplier only if that multiplier
    changed nothing: with any one of them back at 1, the reference moves away from the model."""
    model = perturbed(spec(ALL), "")
    ids = _ids()
    w, mult = model.unfuse_state_dict(), multipliers(ALL)
    with torch.no_grad():
        got = model(ids)
        variants = [(ALL, {**mult, name: 1.0}) for name in mult]
        variants += [({**ALL, name: None}, mult) for name in ("key", "gate", "down")]
        variants += [({**ALL, "parts": tuple(1.0 if j == i else v for j, v in enumerate(ALL["parts"]))}, mult)
                     for i in range(5)]
        for options, named in variants:
            assert (reference(w, ids, options, named) - got).abs().max() > 1e-3, (options, named)


def test_causal_cached_decoding_and_gradients():
    model = perturbed(spec(ALL), FUSED)
    ids = _ids(3)
    _check_causal(model, ids)
    _check_cache(model, ids)
    _check_gradients(model, ids)


def test_both_caches_are_kept_and_reported():
    """The attention's keys and values and the ssm's state live side by side in the cache, and
    `archc stats`' facts count both."""
    from archlang.runtime.context import Cache

    text = spec(ALL)
    compiled = compile_spec(text)
    model = perturbed(text, FUSED)
    cache = Cache()
    with torch.no_grad():
        model(_ids()[:1], cache=cache)
    assert {"layers.0", "layers.0.ssm", "layers.1", "layers.1.ssm"} <= set(cache.layers)
    held = sum(t.numel() * t.element_size() for state in cache.layers.values() for name, t in state.items()
               if name != "pos")
    facts = compute_facts(compiled.graph, context=T, dtype="float32")
    assert facts.kv_cache_bytes_per_token > 0 and facts.ssm_state_bytes_per_sequence > 0
    assert held == facts.kv_cache_bytes_at_context + facts.ssm_state_bytes_per_sequence


def test_parameters_and_flops_count_both_mixers():
    """A parallel block has the weights of an attention block and an ssm block together, less
    the second block's norm and FFN, and more FLOPs than either."""
    def facts(text):
        return compute_facts(compile_spec(text).graph)

    both = facts(spec(PLAIN))
    attn_only = spec(PLAIN).replace("        mixers = parallel()\n", "").replace(
        next(l for l in spec(PLAIN).splitlines(True) if "ssm = mamba2" in l), "")
    ssm_only = spec(PLAIN).replace("        mixers = parallel()\n", "").replace(
        next(l for l in spec(PLAIN).splitlines(True) if "attention = gqa" in l), "")
    no_rope = "    position = rope(theta = 10000)\n"  # the ssm takes none; the attention keeps its own
    ssm_only = ssm_only.replace(no_rope, "")
    a, s, none = facts(attn_only), facts(ssm_only), facts(ssm_only.replace(
        next(l for l in ssm_only.splitlines(True) if "ssm = mamba2" in l), ""))
    # the FFN-only model has no mixer norm; the parallel block has one where a and s have one each
    assert both.params_total == a.params_total + s.params_total - none.params_total - 2 * D
    assert both.breakdown == {**a.breakdown, "ssm": s.breakdown["ssm"]}
    assert both.flops_per_token > max(a.flops_per_token, s.flops_per_token)


def test_off_by_default_nothing_is_added():
    """Without multipliers the block lowers to no scale node; the multipliers each add one."""
    ops = [d["op"] for _, d in lower(load_model(spec(PLAIN))).nodes(data=True)]
    assert "scale" not in ops
    ops = [d["op"] for _, d in lower(load_model(spec(ALL))).nodes(data=True)]
    assert ops.count("scale") == 2 * 6  # four branch multipliers, gate and down, in each of 2 layers


def _refused(text, where, message):
    with pytest.raises((ArchError, ArchErrors)) as info:
        compile_spec(text)
    errors = getattr(info.value, "errors", [info.value])
    assert any(message in e.message for e in errors), [e.message for e in errors]
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.strip().startswith(where))
    assert any(e.span is not None and e.span.line == line for e in errors), [str(e) for e in errors]


@pytest.mark.parametrize("text,where,message", [
    (spec(PLAIN).replace("        mixers = parallel()\n", ""), "ssm", "not both"),
    (spec(PLAIN, norm="rmsnorm(placement = post)"), "norm", "placement = post is not implemented"),
    (spec(PLAIN, extra="        parallel = true\n"), "parallel", "is not implemented"),
    (spec(PLAIN).replace(next(l for l in spec(PLAIN).splitlines(True) if "ssm = mamba2" in l), ""),
     "mixers", "lacks an ssm"),
    (spec({**PLAIN, "mixers": "parallel(ssm_out = 0)"}), "mixers", "greater than 0"),
    (spec({**PLAIN, "mixers": "parallel(attention_scale = 2)"}), "mixers", "attention_scale"),
])
def test_refusals_are_located(text, where, message):
    _refused(text, where, message)


def test_multipliers_on_moe_experts_are_refused():
    text = spec(PLAIN).replace("swiglu(hidden = 48)",
                               "moe(experts = 4, top_k = 2, expert = swiglu(hidden = 16, gate_multiplier = 2))")
    _refused(text, "ffn", "gate_multiplier is implemented on a dense")


def test_an_encoder_refuses_the_ssm_of_parallel_mixers():
    text = spec(PLAIN).replace("    dtype = fp32\n", "    dtype = fp32\n    family = encoder\n")
    text = text.replace("    final_norm", "    position = none\n    final_norm").replace(
        "    position = rope(theta = 10000)\n", "")
    _refused(text, "ssm", "in an encoder")


def test_the_picture_draws_both_mixers():
    from archlang.compiler import svg

    document = svg.render(compile_spec(spec(ALL)).lowered)
    assert "parallel(gqa(heads=4, kv_heads=2, head_dim=8), mamba2(heads=4, head_dim=8, d_state=8, d_conv=4))" in document


def _pair_text(att: str, ssm: str) -> str:
    from archlang.spec import compat

    from .test_matrix import mixer_text

    position = "    position = rope()\n" if compat.position_refusal(att, "rope") is None else ""
    return (f"model m {{\n    vocab = {VOCAB}\n    d_model = 32\n    context = 64\n    dtype = fp32\n{position}"
            f"    final_norm = rmsnorm()\n    block layer {{\n        norm = rmsnorm()\n"
            f"        mixers = parallel(attention_in = 0.5, ssm_out = 2)\n        {mixer_text(att)}\n"
            f"        {mixer_text(ssm)}\n        ffn = swiglu(hidden = 48)\n    }}\n    layers = layer * 2\n}}\n")


def _pairs():
    from archlang.spec import compat

    from archlang.spec import ast as A

    ssms = A.SLOT_KINDS["ssm"]
    every = [(a, s) for a in compat.ATTENTION_KINDS for s in ssms]
    # the fast path: the pair furthest from the reference-tested gqa beside mamba2; the rest is slow
    fast = [("mla", "mamba")]
    return [pytest.param(a, s, marks=() if (a, s) in fast else pytest.mark.slow, id=f"{a}-{s}") for a, s in every]


@pytest.mark.parametrize("att,ssm", _pairs())
def test_every_attention_beside_every_ssm_caches_and_is_causal(att, ssm):
    torch.manual_seed(0)
    model = build(_pair_text(att, ssm)).eval()
    ids = _ids(3)
    _check_causal(model, ids)
    _check_cache(model, ids)


@pytest.mark.parametrize("change", [{"mixers": "parallel(ssm_out = 2)"}, {"key": 0.5}, {"gate": 0.9}, {"down": 0.9},
                                    {"parts": (1.0, 1.0, 1.0, 1.0, 2.0)}])
def test_diff_reports_each_multiplier(change):
    """A changed multiplier changes the function: the semantic diff must not call it no change."""
    from archlang.compiler.diff import diff_models

    d = diff_models(load_model(spec(ALL)), load_model(spec({**ALL, **change})))
    assert d.changed and len(d.changes) == 1, [str(c) for c in d.changes]
