"""Mamba-2 (SSD): the chunked algorithm and its one-step form against the recurrence written as a
plain loop over time; the layer against Hugging Face's `Mamba2Mixer` (its PyTorch path, with every
weight perturbed) and its cached decode; causality, cached decode = full forward, gradients,
torch.compile, and the state bytes formula."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache, Mamba2Config
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

from archlang import runtime as rt
from archlang.kernels import reference
from archlang.spec.errors import ArchError

from ..conftest import FP32

D_MODEL = 16


def recurrence(x, dt, A, B, C, state=None):
    """h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t B_t^T per head, y_t = h_t C_t, one step at a time.
    x (B, T, H, P), dt (B, T, H), A (H,), B/C (B, T, G, N), state (B, H, P, N)."""
    bsz, t, heads, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    h = torch.zeros(bsz, heads, p, n) if state is None else state.clone()
    ys = []
    for i in range(t):
        new = []
        for head in range(heads):
            g = head // (heads // groups)
            decay = torch.exp(dt[:, i, head] * A[head])[:, None, None]  # (B, 1, 1)
            inp = (dt[:, i, head, None] * x[:, i, head])[:, :, None] * B[:, i, g][:, None, :]  # (B, P, N)
            new.append(decay * h[:, head] + inp)
        h = torch.stack(new, dim=1)
        ys.append(torch.stack([(h[:, head] * C[:, i, head // (heads // groups), None, :]).sum(-1)  # (B, P)
                               for head in range(heads)], dim=1))
    return torch.stack(ys, dim=1), h


def ssd_inputs(bsz=2, t=10, heads=4, p=3, groups=2, n=5, with_state=False):
    torch.manual_seed(0)
    x = torch.randn(bsz, t, heads, p)
    dt = torch.nn.functional.softplus(torch.randn(bsz, t, heads))
    A = -torch.rand(heads) * 2 - 0.1
    B, C = torch.randn(bsz, t, groups, n), torch.randn(bsz, t, groups, n)
    state = torch.randn(bsz, heads, p, n) if with_state else None
    return x, dt, A, B, C, state


@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 16])
@pytest.mark.parametrize("with_state", [False, True])
def test_ssd_chunked_equals_the_recurrence(chunk, with_state):
    inputs = ssd_inputs(with_state=with_state)
    y, h = reference.ssd_chunked(*inputs[:5], chunk, initial_state=inputs[5])
    y_ref, h_ref = recurrence(*inputs)
    torch.testing.assert_close(y, y_ref, **FP32)
    torch.testing.assert_close(h, h_ref, **FP32)


@pytest.mark.parametrize("chunk", [3, 4])
def test_ssd_chunked_gradients_equal_the_recurrence(chunk):
    inputs = [v.clone().requires_grad_() for v in ssd_inputs(t=7, with_state=True)]
    weights = torch.randn(2, 7, 4, 3), torch.randn(2, 4, 3, 5)

    def grads(fn):
        for v in inputs:
            v.grad = None
        y, h = fn()
        ((y * weights[0]).sum() + (h * weights[1]).sum()).backward()
        return [v.grad.clone() for v in inputs]

    got = grads(lambda: reference.ssd_chunked(*inputs[:5], chunk, initial_state=inputs[5]))
    want = grads(lambda: recurrence(*inputs))
    for name, g, w in zip(("x", "dt", "A", "B", "C", "state"), got, want):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, **FP32, msg=name)


def test_ssd_step_is_one_step_of_the_recurrence():
    x, dt, A, B, C, state = ssd_inputs(t=1, with_state=True)
    y, h = reference.ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], state)
    y_ref, h_ref = recurrence(x, dt, A, B, C, state)
    torch.testing.assert_close(y, y_ref[:, 0], **FP32)
    torch.testing.assert_close(h, h_ref, **FP32)


# ----------------------------------------------------------------------------- against Hugging Face

HF_CASES = [  # heads, head_dim, n_groups, bias, conv_bias, dt_limit
    (4, 8, 1, False, True, (0.0, math.inf)),
    (8, 4, 2, True, False, (0.0, math.inf)),
    (4, 8, 4, False, True, (0.05, 0.9)),
]


def hf_pair(heads, head_dim, n_groups, bias, conv_bias, dt_limit, chunk=4):
    """A tiny Mamba2Mixer with every weight perturbed, and the same layer here with its weights."""
    torch.manual_seed(1)
    cfg = Mamba2Config(hidden_size=D_MODEL, expand=heads * head_dim // D_MODEL, num_heads=heads, head_dim=head_dim,
                       n_groups=n_groups, state_size=5, conv_kernel=4, chunk_size=chunk, use_bias=bias,
                       use_conv_bias=conv_bias, time_step_limit=dt_limit, layer_norm_epsilon=1e-5,
                       num_hidden_layers=1, vocab_size=11)
    hf = Mamba2Mixer(cfg, 0).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.2))
    d_inner = heads * head_dim
    ours = rt.Mamba2(D_MODEL, d_inner, 5, 4, heads, n_groups=n_groups, chunk=chunk, conv_bias=conv_bias, bias=bias,
                     norm_eps=1e-5, dt_limit=dt_limit)
    mapping = {"in_proj": "in_proj.weight", "in_proj_bias": "in_proj.bias", "conv_weight": "conv1d.weight",
               "conv_bias": "conv1d.bias", "dt_bias": "dt_bias", "A_log": "A_log", "D": "D",
               "norm_weight": "norm.weight", "out_proj": "out_proj.weight", "out_proj_bias": "out_proj.bias"}
    theirs = dict(hf.named_parameters())
    ours.load_state_dict({name: theirs[mapping[name]] for name, _ in ours.named_parameters()}, strict=True)
    assert {mapping[name] for name, _ in ours.named_parameters()} == set(theirs)
    return hf, ours


@pytest.mark.parametrize("case", HF_CASES)
def test_matches_hf_mamba2_mixer(case):
    hf, ours = hf_pair(*case)
    x = torch.randn(2, 11, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), **FP32)


@pytest.mark.parametrize("case,pieces", [(HF_CASES[0], (6, 1, 1, 1)), (HF_CASES[1], (5, 3, 1, 2, 1))])
def test_cached_decode_matches_hf(case, pieces):
    """Prefill, then single tokens (HF's one-step update) and pieces (its chunked scan from a state)."""
    hf, ours = hf_pair(*case)
    x = torch.randn(2, sum(pieces), D_MODEL)
    hf_cache, cache = DynamicCache(config=hf_cache_config(hf)), rt.Cache()
    outs, start = [], 0
    with torch.no_grad():
        for length in pieces:
            part, positions = x[:, start:start + length], torch.arange(start, start + length)
            outs.append((ours(part, rt.Context(positions=positions, cache=cache)), hf(part, cache_params=hf_cache)))
            start += length
    for got, want in outs:
        torch.testing.assert_close(got, want, **FP32)
    torch.testing.assert_close(cache.get("")["ssm"], hf_cache.get_recurrent_state(0), **FP32)


def hf_cache_config(hf):
    return Mamba2Config(hidden_size=hf.hidden_size, num_heads=hf.num_heads, head_dim=hf.head_dim,
                        expand=hf.intermediate_size // hf.hidden_size, n_groups=hf.n_groups,
                        state_size=hf.ssm_state_size, conv_kernel=hf.conv_kernel_size, num_hidden_layers=1)


@pytest.mark.parametrize("case", HF_CASES[:2])
def test_padding_mask_leaves_a_row_as_it_is_alone(case):
    hf, ours = hf_pair(*case)
    x = torch.randn(2, 8, D_MODEL)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        got = ours(x, rt.Context(positions=torch.arange(8), attention_mask=mask))
        # the padded row's real tokens see what they would see alone, in_proj bias or not
        torch.testing.assert_close(got[1, 3:], ours(x[1:, 3:])[0], **FP32)
        torch.testing.assert_close(got[0], ours(x[:1])[0], **FP32)
        want = hf(x, attention_mask=mask)
        if ours.in_proj_bias is None:  # HF zeroes the layer input, not the conv's: the same without a bias
            torch.testing.assert_close(got[:, 3:], want[:, 3:], **FP32)
        else:  # with one, HF's first real tokens read the bias at the padded positions
            assert not torch.allclose(got[1, 3:], want[1, 3:], **FP32)


# ----------------------------------------------------------------------------- properties


def perturbed(**kw):
    torch.manual_seed(2)
    kw = dict(n_groups=2, chunk=4, bias=True) | kw
    m = rt.Mamba2(D_MODEL, 32, 4, kw.pop("d_conv", 4), 4, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.2))
    return m


def test_causal():
    m = perturbed()
    x = torch.randn(2, 10, D_MODEL)
    y = m(x)
    x2 = x.clone()
    x2[:, 6:] += torch.randn(2, 4, D_MODEL)
    torch.testing.assert_close(m(x2)[:, :6], y[:, :6])
    assert not torch.allclose(m(x2)[:, 6:], y[:, 6:])


@pytest.mark.parametrize("pieces,kw", [((10,), {}), ((1,) * 10, {}), ((2, 1, 1, 6), {}), ((5, 1, 4), {}),
                                       ((3, 3, 1, 3), dict(n_groups=4, d_conv=2)), ((7, 1, 1, 1), {}),
                                       ((4, 1, 2, 1), dict(dt_limit=(0.05, 0.9), chunk=3)),
                                       ((2, 1, 3), dict(d_conv=1, n_groups=1))])
def test_cached_decode_equals_the_full_forward(pieces, kw):
    m = perturbed(**kw)
    x = torch.randn(2, sum(pieces), D_MODEL)
    with torch.no_grad():
        full = m(x)
        cache, outs, start = rt.Cache(), [], 0
        for length in pieces:
            outs.append(m(x[:, start:start + length], rt.Context(positions=torch.arange(start, start + length),
                                                                 cache=cache)))
            start += length
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **FP32)


@pytest.mark.parametrize("kw", [{}, dict(gated_norm=False, D_skip=False, conv_bias=False)])
def test_gradients_reach_every_parameter(kw):
    m = perturbed(**kw)
    m(torch.randn(2, 7, D_MODEL)).pow(2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def before_out_proj(layer, x):
    """The layer's output before out_proj (out_proj swapped for the identity)."""
    saved = layer.out_proj, layer.out_proj_bias
    layer.out_proj, layer.out_proj_bias = torch.nn.Parameter(torch.eye(layer.d_inner)), None
    try:
        return layer(x)
    finally:
        layer.out_proj, layer.out_proj_bias = saved


def test_optional_parts():
    """Without D_skip the layer is the one with D = 0; without gated_norm the group RMSNorm and its
    weight are gone: y · silu(z) goes straight to out_proj."""
    full, bare = perturbed(), perturbed(D_skip=False, gated_norm=False)
    assert {n for n, _ in full.named_parameters()} - {n for n, _ in bare.named_parameters()} == {"D", "norm_weight"}
    x = torch.randn(2, 6, D_MODEL)
    with torch.no_grad():
        bare.load_state_dict({n: p for n, p in full.state_dict().items() if n not in ("D", "norm_weight")})
        full.D.zero_()
        gated = before_out_proj(bare, x).view(2, 6, 2, 16)  # 2 groups of 16 channels
        normed = (gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + 1e-5)).view(2, 6, 32) * full.norm_weight
        torch.testing.assert_close(before_out_proj(full, x), normed, **FP32)


def test_fullgraph_inference_compiles():
    """Cached prefill (the chunked scan) and a decoding step (the one-step recurrence), each one graph."""
    torch._dynamo.reset()
    m = perturbed().eval()
    x = torch.randn(2, 6, D_MODEL)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    cache_eager, cache_compiled = rt.Cache(), rt.Cache()
    with torch.no_grad():
        for start, length in ((0, 5), (5, 1)):
            part, positions = x[:, start:start + length], torch.arange(start, start + length)
            want = m(part, rt.Context(positions=positions, cache=cache_eager))
            got = compiled(part, rt.Context(positions=positions, cache=cache_compiled))
            torch.testing.assert_close(got, want)
    torch.testing.assert_close(cache_compiled.get("")["ssm"], cache_eager.get("")["ssm"])


@pytest.mark.slow
def test_fullgraph_training_compiles():
    """Forward and backward in one graph each, the same outputs and gradients as eager."""
    torch._dynamo.reset()
    m = perturbed().train()
    x = torch.randn(2, 9, D_MODEL)
    out = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
    ref = m(x)
    torch.testing.assert_close(out, ref)
    out.pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    ref.pow(2).mean().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_bytes_formula(dtype):
    d_inner, d_state, d_conv, groups = 32, 4, 4, 2
    m = perturbed().to(dtype)
    cache = rt.Cache()
    with torch.no_grad():
        m(torch.randn(3, 5, D_MODEL, dtype=dtype), rt.Context(positions=torch.arange(5), cache=cache))
    itemsize = torch.tensor([], dtype=dtype).element_size()
    per_sequence = (d_conv - 1) * (d_inner + 2 * groups * d_state) * itemsize + 4 * d_inner * d_state
    assert cache.nbytes() == 3 * per_sequence


def test_bad_head_split_is_refused():
    with pytest.raises(ArchError, match="heads"):
        rt.Mamba2(D_MODEL, 30, 4, 4, 4)
    with pytest.raises(ArchError, match="n_groups"):
        rt.Mamba2(D_MODEL, 32, 4, 4, 4, n_groups=3)


# ----------------------------------------------------------------------------- other families' Mamba-2 layers

SMALL = dict(hidden_size=D_MODEL, num_hidden_layers=1, vocab_size=11, num_attention_heads=2, num_key_value_heads=2)
MAMBA = dict(mamba_expand=2, mamba_d_state=5, mamba_d_conv=4)


def family_mixer(family):
    """A tiny Mamba-2 layer of `family` (4 heads of 8 channels, 2 groups, chunk 4)."""
    import transformers as tf
    from transformers.models.bamba import modeling_bamba
    from transformers.models.falcon_h1 import modeling_falcon_h1
    from transformers.models.granitemoehybrid import modeling_granitemoehybrid
    from transformers.models.nemotron_h import modeling_nemotron_h
    from transformers.models.zamba2 import modeling_zamba2

    if family == "nemotron_h":
        return modeling_nemotron_h.NemotronHMamba2Mixer(tf.NemotronHConfig(
            **SMALL, mamba_num_heads=4, mamba_head_dim=8, n_groups=2, ssm_state_size=5, conv_kernel=4, chunk_size=4), 0)
    if family == "zamba2":
        return modeling_zamba2.Zamba2MambaMixer(tf.Zamba2Config(
            **SMALL, **MAMBA, n_mamba_heads=4, mamba_headdim=8, mamba_ngroups=2, chunk_size=4,
            layers_block_type=["mamba"]), 0)
    heads = dict(mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=2, mamba_chunk_size=4)
    if family == "bamba":
        return modeling_bamba.BambaMixer(tf.BambaConfig(**SMALL, **MAMBA, **heads), 0)
    if family == "granitemoehybrid":
        return modeling_granitemoehybrid.GraniteMoeHybridMambaLayer(
            tf.GraniteMoeHybridConfig(**SMALL, **MAMBA, **heads), 0)
    # Falcon-H1 with its group norm before the gate, and muP multipliers ≠ 1
    cfg = tf.FalconH1Config(**SMALL, **MAMBA, **heads, mamba_d_ssm=32, mamba_rms_norm=family == "falcon_h1_norm",
                            mamba_norm_before_gate=True, ssm_multipliers=[0.5, 1.5, 0.7, 1.3, 2.0],
                            ssm_in_multiplier=0.8)
    mixer = modeling_falcon_h1.FalconH1Mixer(cfg, 0)
    mixer.register_buffer("mup_vector", modeling_falcon_h1.compute_mup_vector(cfg), persistent=False)
    return mixer


def layer_like(hf) -> rt.Mamba2:
    """This runtime's layer with the settings and weights of a Hugging Face Mamba-2 layer. Falcon-H1's
    muP multipliers (ssm_in_multiplier on the input, mup_vector on each segment of in_proj's
    output) are constants: they fold into in_proj's rows."""
    norm = hf.norm if isinstance(getattr(hf, "norm", None), torch.nn.Module) and hasattr(hf.norm, "weight") else None
    ours = rt.Mamba2(hf.in_proj.in_features, hf.intermediate_size, hf.ssm_state_size, hf.conv1d.kernel_size[0],
                     hf.num_heads, n_groups=hf.n_groups, chunk=hf.chunk_size, conv_bias=hf.conv1d.bias is not None,
                     bias=hf.in_proj.bias is not None, norm_eps=norm.variance_epsilon if norm is not None else 1e-5,
                     gated_norm=norm is not None, norm_before_gate=getattr(norm, "norm_before_gate", False),
                     dt_limit=hf.time_step_limit)
    theirs = dict(hf.named_parameters())
    in_proj = theirs["in_proj.weight"]
    if hasattr(hf, "mup_vector"):
        in_proj = in_proj * hf.mup_vector.view(-1, 1) * hf.ssm_in_multiplier
    weights = {"in_proj": in_proj, "conv_weight": theirs["conv1d.weight"], "conv_bias": theirs["conv1d.bias"],
               "dt_bias": theirs["dt_bias"], "A_log": theirs["A_log"], "D": theirs["D"],
               "out_proj": theirs["out_proj.weight"]}
    if norm is not None:
        weights["norm_weight"] = norm.weight
    ours.load_state_dict(weights, strict=True)
    return ours


@pytest.mark.parametrize("family", ["nemotron_h", "zamba2", "bamba", "granitemoehybrid", "falcon_h1", "falcon_h1_norm"])
def test_matches_other_families_mamba2_layers(family):
    torch.manual_seed(3)
    hf = family_mixer(family).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.2))
        x = torch.randn(2, 11, D_MODEL)
        torch.testing.assert_close(layer_like(hf)(x), hf(x), **FP32)


def test_decode_flops_formula():
    """The matmul-like terms of the docstring's per-token FLOPs (projections, conv, readout) are what
    PyTorch's FLOP counter sees in a decoding step; the state update is elementwise, not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    d_inner, d_state, d_conv, heads, groups = 32, 4, 4, 4, 2
    m, cache = perturbed(), rt.Cache()
    with torch.no_grad():
        m(torch.randn(1, 5, D_MODEL), rt.Context(positions=torch.arange(5), cache=cache))
        with FlopCounterMode(display=False) as counter:
            m(torch.randn(1, 1, D_MODEL), rt.Context(positions=torch.arange(5, 6), cache=cache))
    conv_dim = d_inner + 2 * groups * d_state
    matmul_like = (2 * D_MODEL * (d_inner + conv_dim + heads) + 2 * d_inner * D_MODEL + 2 * conv_dim * d_conv
                   + 2 * d_inner * d_state)
    assert counter.get_total_flops() == matmul_like
