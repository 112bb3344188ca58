"""The gated linear-attention family: chunked = recurrent = the published recurrences written out
naively here (forward and gradients, ragged chunks, initial states), causality, cached decode =
full forward, gradients to every parameter, parity with HF Qwen3-Next's Gated DeltaNet, fullgraph
compile, and the cache size formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archlang import runtime as rt
from archlang.kernels import reference
from archlang.runtime.context import Cache, Context
from archlang.spec.errors import ArchError


B, T = 2, 11
HEADS, DK, DV = 3, 8, 6
TOL64 = dict(atol=1e-10, rtol=1e-10)
TOL32 = dict(atol=1e-5, rtol=1e-5)


# --- independent references: the published recurrences, one formulation each -----------------

def naive_retention(q, k, v, state):
    """RetNet's parallel form: ((q k^T / sqrt(dk)) ⊙ D) v with D_nm = γ^(n-m), n >= m, plus the
    initial state read through γ^(n+1)."""
    t, dk = q.shape[2], q.shape[3]
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(q.shape[1], dtype=torch.float64))  # (H,)
    n = torch.arange(t, dtype=torch.float64)
    dist = n[:, None] - n[None, :]
    decay = torch.where(dist >= 0, gamma[:, None, None] ** dist.clamp(min=0), torch.zeros(()))  # (H, T, T)
    scores = torch.einsum("bhid,bhjd->bhij", q * dk ** -0.5, k) * decay
    carried = gamma[:, None] ** (n[None, :] + 1)  # (H, T)
    return scores @ v + carried[None, :, :, None] * torch.einsum("bhtk,bhkv->bhtv", q * dk ** -0.5, state)


def naive_gla(q, k, v, log_alpha, state):
    """GLA's recurrent form (Yang et al. 2024, eq. 3): S_t = diag(α_t) S_{t-1} + k_t v_t^T, elementwise."""
    h, out = state.clone(), []
    for i in range(q.shape[2]):
        h = h * log_alpha[:, :, i].exp()[..., None] + k[:, :, i, :, None] * v[:, :, i, None, :]
        out.append((q[:, :, i, :, None] * q.shape[-1] ** -0.5 * h).sum(-2))
    return torch.stack(out, dim=2)


def naive_gated_delta(q, k, v, log_alpha, beta, state):
    """Gated DeltaNet written as the matrix recurrence S_t = α_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T."""
    h, out, eye = state.clone(), [], torch.eye(q.shape[-1], dtype=q.dtype)
    for i in range(q.shape[2]):
        kt, bt = k[:, :, i], beta[:, :, i, None, None]
        transition = log_alpha[:, :, i, None, None].exp() * (eye - bt * kt[..., :, None] * kt[..., None, :])
        h = transition @ h + bt * kt[..., :, None] * v[:, :, i, None, :]
        out.append(torch.einsum("bhkv,bhk->bhv", h, q[:, :, i] * q.shape[-1] ** -0.5))
    return torch.stack(out, dim=2)


def naive_rwkv7(r, k, v, log_w, a, b, state):
    """RWKV-7's kernel in its own layout, the state wkv (dv x dk):
    wkv_t = wkv_{t-1} (diag(w_t) + a_t^T b_t) + v_t^T k_t, y_t = wkv_t r_t."""
    wkv, out = state.transpose(-1, -2).clone(), []
    for i in range(r.shape[2]):
        sa = wkv @ a[:, :, i, :, None]  # (B, H, dv, 1)
        wkv = wkv * log_w[:, :, i, None, :].exp() + sa * b[:, :, i, None, :] + v[:, :, i, :, None] * k[:, :, i, None, :]
        out.append((wkv @ r[:, :, i, :, None])[..., 0])
    return torch.stack(out, dim=2)


def _rwkv7_inputs(t=T, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k = (torch.randn(B, HEADS, t, DK, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, HEADS, t, DV, generator=g, dtype=dtype)
    log_w = -0.6065 * torch.sigmoid(torch.randn(B, HEADS, t, DK, generator=g, dtype=dtype) * 2)
    kappa = F.normalize(torch.randn(B, HEADS, t, DK, generator=g, dtype=dtype), dim=-1)
    rate = torch.rand(B, HEADS, t, DK, generator=g, dtype=dtype)
    state = torch.randn(B, HEADS, DK, DV, generator=g, dtype=dtype) * 0.5
    return r, k, v, log_w, -kappa, kappa * rate, state


@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
def test_generalized_delta_chunked_equals_recurrent_equals_rwkv7_forward_and_gradients(chunk):
    inputs = [x.requires_grad_() for x in _rwkv7_inputs()]
    expected = naive_rwkv7(*inputs)
    weight = torch.randn_like(expected)
    want = torch.autograd.grad((expected * weight).sum(), inputs)
    results = [reference.generalized_delta_chunked(*inputs, chunk=chunk),
               reference.generalized_delta_recurrent(*inputs)]
    for out, _ in results:
        torch.testing.assert_close(out, expected, **TOL64)
        for got, ref in zip(torch.autograd.grad((out * weight).sum(), inputs), want):
            torch.testing.assert_close(got, ref, **TOL64)
    torch.testing.assert_close(results[0][1], results[1][1], **TOL64)


def test_generalized_delta_with_strong_decays_stays_finite():
    r, k, v, log_w, a, b, state = _rwkv7_inputs(t=40)
    log_w = log_w * 300
    out, final = reference.generalized_delta_chunked(r, k, v, log_w, a, b, state, chunk=16)
    ref, ref_final = reference.generalized_delta_recurrent(r, k, v, log_w, a, b, state)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, **TOL64)
    torch.testing.assert_close(final, ref_final, **TOL64)


def _inputs(kind, t=T, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, HEADS, t, DK, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, HEADS, t, DV, generator=g, dtype=dtype)
    state = torch.randn(B, HEADS, DK, DV, generator=g, dtype=dtype) * 0.5
    beta = None
    if kind == "retention":
        gamma = 1 - 2.0 ** (-5.0 - torch.arange(HEADS, dtype=dtype))
        log_decay = gamma.log()[None, :, None].expand(B, HEADS, t).clone()
    elif kind == "gla":
        log_decay = F.logsigmoid(torch.randn(B, HEADS, t, DK, generator=g, dtype=dtype) * 2) / 4
    else:
        k = F.normalize(k, dim=-1)
        log_decay = -F.softplus(torch.randn(B, HEADS, t, generator=g, dtype=dtype))
        beta = torch.rand(B, HEADS, t, generator=g, dtype=dtype)
    return q, k, v, log_decay, beta, state


def _naive(kind, q, k, v, log_decay, beta, state):
    if kind == "retention":
        return naive_retention(q, k, v, state)
    if kind == "gla":
        return naive_gla(q, k, v, log_decay, state)
    return naive_gated_delta(q, k, v, log_decay, beta, state)


KINDS = ("retention", "gla", "delta")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
def test_chunked_equals_recurrent_equals_naive_forward_and_gradients(kind, chunk):
    inputs = list(_inputs(kind))
    fixed = {3} if kind == "retention" else set()  # retention's decay is a constant, not an input
    inputs = [x.requires_grad_() if x is not None and i not in fixed else x for i, x in enumerate(inputs)]
    q, k, v, log_decay, beta, state = inputs
    leaves = [x for x in inputs if x is not None and x.requires_grad]
    expected = _naive(kind, *inputs)
    results = [reference.gated_linear_chunked(q, k, v, log_decay, beta, state, chunk=chunk),
               reference.gated_linear_recurrent(q, k, v, log_decay, beta, state)]
    weight = torch.randn_like(expected)
    want = torch.autograd.grad((expected * weight).sum(), leaves)
    for out, _ in results:
        torch.testing.assert_close(out, expected, **TOL64)
        for got, ref in zip(torch.autograd.grad((out * weight).sum(), leaves), want):
            torch.testing.assert_close(got, ref, **TOL64)
    torch.testing.assert_close(results[0][1], results[1][1], **TOL64)  # the same final state


@pytest.mark.parametrize("kind", KINDS)
def test_strong_gates_stay_finite_in_the_chunked_form(kind):
    q, k, v, log_decay, beta, state = _inputs(kind, t=40)
    log_decay = log_decay * 200  # decays of e^-100 and less per step: exp(-cumsum) would overflow even float64
    out, final = reference.gated_linear_chunked(q, k, v, log_decay, beta, state, chunk=16)
    ref, ref_final = reference.gated_linear_recurrent(q, k, v, log_decay, beta, state)
    assert torch.isfinite(out).all() and torch.isfinite(final).all()
    torch.testing.assert_close(out, ref, **TOL64)
    torch.testing.assert_close(final, ref_final, **TOL64)


def test_delta_rule_with_a_decay_per_key_dimension_is_refused():
    q, k, v, log_decay, beta, state = _inputs("gla")
    with pytest.raises(ArchError, match="one decay per head"):
        reference.gated_linear_chunked(q, k, v, log_decay, torch.rand(B, HEADS, T, dtype=torch.float64), state)


# --- the modules -------------------------------------------------------------------------------

KH, VH = 1, 3  # Gated DeltaNet: one key head serving three value heads
MODULES = (*KINDS, "rwkv7")


def _module(kind, **kw):
    torch.manual_seed(1)
    if kind == "retention":
        return rt.Retention(HEADS, DK, DV, output_gate=True, **kw)
    if kind == "gla":
        return rt.GLA(HEADS, DK, DV, **kw)
    if kind == "rwkv7":
        module = rt.RWKV7(HEADS, DK, **kw)
        with torch.no_grad():  # away from the initial values (r_k = 0 would hide the bonus term)
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        return module
    module = rt.GatedDeltaNet(KH, VH, DK, DV, conv_size=4, **kw)
    with torch.no_grad():
        module.norm_weight.uniform_(0.5, 1.5)
        module.dt_bias.normal_()
    return module


def _module_inputs(kind, t, seed=2):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(B, t, *s, generator=g)  # noqa: E731
    if kind == "retention":
        return (rand(HEADS * DK), rand(HEADS * DK), rand(HEADS * DV)), {"gate": rand(HEADS * DV)}
    if kind == "gla":
        return (rand(HEADS * DK), rand(HEADS * DK), rand(HEADS * DV), rand(HEADS * DK) * 3), {"gate": rand(HEADS * DV)}
    if kind == "rwkv7":
        return tuple(rand(HEADS * DK) for _ in range(6)), {}
    return (rand(KH * DK), rand(KH * DK), rand(VH * DV), rand(VH), rand(VH), rand(VH * DV)), {}


def _ctx(t, cache=None, start=0, mask=None):
    return Context(positions=torch.arange(start, start + t), cache=cache, attention_mask=mask)


def _slice(args, kw, lo, hi):
    return tuple(x[:, lo:hi] for x in args), {n: x[:, lo:hi] for n, x in kw.items()}


@pytest.mark.parametrize("kind", MODULES)
def test_cached_decode_equals_the_full_forward(kind):
    module = _module(kind, chunk=4).eval()
    args, kw = _module_inputs(kind, T)
    with torch.no_grad():
        full = module(*args, **kw, ctx=_ctx(T))
        cache, outs = Cache(), []
        a, k = _slice(args, kw, 0, 6)  # prefill (chunked, ragged last chunk), then one token at a time
        outs.append(module(*a, **k, ctx=_ctx(6, cache)))
        for i in range(6, T):
            a, k = _slice(args, kw, i, i + 1)
            outs.append(module(*a, **k, ctx=_ctx(1, cache, i)))
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **TOL32)


@pytest.mark.parametrize("kind", MODULES)
def test_chunked_and_recurrent_forms_of_the_module_agree(kind):
    args, kw = _module_inputs(kind, T)
    outs = [_module(kind, chunk=3, form=form)(*args, **kw) for form in ("chunked", "recurrent")]
    torch.testing.assert_close(outs[0], outs[1], **TOL32)


@pytest.mark.parametrize("kind", MODULES)
def test_outputs_are_causal(kind):
    module = _module(kind, chunk=4)
    args, kw = _module_inputs(kind, T)
    later = [x.clone() for x in args]
    later_kw = {n: x.clone() for n, x in kw.items()}
    for x in [*later, *later_kw.values()]:
        x[:, 7:] = torch.randn_like(x[:, 7:]) * 5
    with torch.no_grad():
        before, after = module(*args, **kw), module(*later, **later_kw)
    torch.testing.assert_close(after[:, :7], before[:, :7], atol=0, rtol=0)
    assert not torch.allclose(after[:, 7:], before[:, 7:])


@pytest.mark.parametrize("kind", MODULES)
def test_gradients_reach_every_parameter_and_input(kind):
    module = _module(kind, chunk=4)
    args, kw = _module_inputs(kind, T)
    leaves = [x.requires_grad_() for x in [*args, *kw.values()]]
    module(*args, **kw).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for x in leaves:
        assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", MODULES)
def test_left_padding_leaves_each_sequence_as_it_is_alone(kind):
    module = _module(kind, chunk=4).eval()
    args, kw = _module_inputs(kind, T)
    pad = 3
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :pad] = 0  # the first row is left-padded: its real tokens start at `pad`
    with torch.no_grad():
        padded = module(*args, **kw, ctx=_ctx(T, mask=mask))
        a, k = _slice(args, kw, pad, T)
        alone = module(*(x[:1] for x in a), **{n: x[:1] for n, x in k.items()}, ctx=_ctx(T - pad))
    torch.testing.assert_close(padded[:1, pad:], alone, **TOL32)


@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_bytes_formula_matches_the_cache(kind, dtype):
    module = _module(kind).to(dtype)
    args, kw = _module_inputs(kind, 5)
    args, kw = tuple(x.to(dtype) for x in args), {n: x.to(dtype) for n, x in kw.items()}
    cache = Cache()
    with torch.no_grad():
        module(*args, **kw, ctx=_ctx(5, cache))
    conv = (2 * KH * DK + VH * DV) * 3 * dtype.itemsize if kind == "delta" else 0
    dv = DK if kind == "rwkv7" else DV
    assert cache.nbytes() == B * module.state_bytes(dtype) == B * (HEADS * DK * dv * 4 + conv)


@pytest.mark.parametrize("kind", MODULES)
def test_fullgraph_compile_in_inference(kind):
    module = _module(kind, chunk=4).eval()
    args, kw = _module_inputs(kind, 9)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args, **kw), module(*args, **kw), **TOL32)


# --- Hugging Face Qwen3-Next ------------------------------------------------------------------

qwen3_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")


@pytest.mark.parametrize("chunk", [4, 64])
def test_matches_hf_chunk_and_recurrent_gated_delta_rule(chunk):
    q, k, v, log_decay, beta, state = (x.float() for x in _inputs("delta", t=13))
    to_hf = lambda x: x.transpose(1, 2)  # noqa: E731  (B, T, H, d) and (B, T, H)
    hf_args = (to_hf(q), to_hf(k), to_hf(v))
    hf_kw = dict(g=to_hf(log_decay), beta=to_hf(beta), initial_state=state, output_final_state=True)
    ours, ours_state = reference.gated_linear_chunked(q, k, v, log_decay, beta, state, chunk=chunk)
    hf, hf_state = qwen3_next.torch_chunk_gated_delta_rule(*hf_args, chunk_size=chunk, **hf_kw)
    torch.testing.assert_close(ours, to_hf(hf), **TOL32)
    torch.testing.assert_close(ours_state, hf_state, **TOL32)
    ours, ours_state = reference.gated_linear_recurrent(q, k, v, log_decay, beta, state)
    hf, hf_state = qwen3_next.torch_recurrent_gated_delta_rule(*hf_args, **hf_kw)
    torch.testing.assert_close(ours, to_hf(hf), **TOL32)
    torch.testing.assert_close(ours_state, hf_state, **TOL32)


def hf_projections(layer):
    """HF's fused in_proj_qkvz (per key head: q, k, then the group's v and z) and in_proj_ba (per key
    head: the group's b, then a) as the separate q, k, v, z, b, a weights the runtime takes."""
    hk, dk, dv = layer.num_k_heads, layer.head_k_dim, layer.head_v_dim
    group = layer.num_v_heads // hk
    qkvz = layer.in_proj_qkvz.weight.view(hk, 2 * dk + 2 * group * dv, -1)
    q, k, v, z = (w.reshape(-1, w.shape[-1]) for w in qkvz.split([dk, dk, group * dv, group * dv], dim=1))
    b, a = (w.reshape(-1, w.shape[-1]) for w in layer.in_proj_ba.weight.view(hk, 2 * group, -1).split(group, dim=1))
    return dict(q=q, k=k, v=v, z=z, b=b, a=a)


HF_CONFIG = dict(hidden_size=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                 linear_value_head_dim=6, linear_conv_kernel_dim=4, num_hidden_layers=1,
                 layer_types=["linear_attention"], rms_norm_eps=1e-6)


def hf_layer_and_ours():
    """A Qwen3NextGatedDeltaNet with every weight moved off its initial value, and the runtime layer
    with the same weights: a function (x, ctx) -> the layer's output, out_proj included."""
    torch.manual_seed(3)
    config = qwen3_next.Qwen3NextConfig(**HF_CONFIG)
    layer = qwen3_next.Qwen3NextGatedDeltaNet(config, 0).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ours = rt.GatedDeltaNet(2, 4, 8, 6, conv_size=4, chunk=5, norm_eps=1e-6).eval()
    with torch.no_grad():
        ours.conv_weight.copy_(layer.conv1d.weight)
        ours.A_log.copy_(layer.A_log)
        ours.dt_bias.copy_(layer.dt_bias)
        ours.norm_weight.copy_(layer.norm.weight)
    w = hf_projections(layer)

    def run(x, ctx):
        p = {n: F.linear(x, wt) for n, wt in w.items()}
        return F.linear(ours(p["q"], p["k"], p["v"], p["a"], p["b"], p["z"], ctx=ctx), layer.out_proj.weight)

    return config, layer, run


def test_matches_the_whole_hf_qwen3_next_gated_deltanet_layer():
    _, layer, run = hf_layer_and_ours()
    x = torch.randn(B, 13, 32)
    with torch.no_grad():
        expected = layer(x)
        torch.testing.assert_close(run(x, None), expected, **TOL32)
        cache = Cache()  # prefill then decode through our cache: still HF's full forward
        steps = [run(x[:, :9], _ctx(9, cache))] + [run(x[:, i:i + 1], _ctx(1, cache, i)) for i in range(9, 13)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, **TOL32)


def test_misuse_is_refused_with_a_clear_error():
    with pytest.raises(ArchError, match="form must be one of"):
        rt.GLA(HEADS, DK, DV, form="parallel")
    with pytest.raises(ArchError, match="multiple of key_heads"):
        rt.GatedDeltaNet(2, 3, DK, DV)
    args, _ = _module_inputs("gla", 4)
    with pytest.raises(ArchError, match="needs `gate`"):
        rt.GLA(HEADS, DK, DV)(*args)


def test_cache_entries_map_onto_hf_linear_attention_cache():
    """HF keeps the last conv_size conv inputs, the runtime conv_size - 1; the states are the same
    (B, value_heads, key_dim, value_dim) tensor. A prefill in one continues in the other."""
    from transformers import DynamicCache

    config, layer, run = hf_layer_and_ours()
    x = torch.randn(B, 9, 32)
    with torch.no_grad():
        hf_cache, cache = DynamicCache(config=config), Cache()
        layer(x[:, :8], cache_params=hf_cache)
        run(x[:, :8], _ctx(8, cache))
        torch.testing.assert_close(cache.get("")["state"], hf_cache.get_recurrent_state(0), **TOL32)
        torch.testing.assert_close(cache.get("")["conv"], hf_cache.get_conv_state(0)[..., 1:], **TOL32)
        from_hf = Cache()
        from_hf.put("", state=hf_cache.get_recurrent_state(0).clone(), conv=hf_cache.get_conv_state(0)[..., 1:].clone())
        torch.testing.assert_close(run(x[:, 8:], _ctx(1, from_hf, 8)), layer(x[:, 8:], cache_params=hf_cache), **TOL32)
