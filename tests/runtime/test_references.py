"""Every token mixer of the runtime against a plain-PyTorch re-expression of its published
algorithm, written here from the papers and reference code (not from kernels/reference.py),
with perturbed weights (norm weights ≠ 1, biases ≠ 0) at float32 tolerances.

RoPE here rotates the two halves of a head (GPT-NeoX / Llama layout). The Differential
Transformer and DeepSeek-V2 reference code rotate interleaved pairs; the two layouts differ by a
fixed permutation of the q and k channels, i.e. by a permutation of the projection weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archlang import runtime as rt

from ..conftest import FP32

B, T = 2, 9


def ctx(t=T, offset=0):
    return rt.Context(positions=torch.arange(offset, offset + t))


def rotate(x, positions, theta=10000.0):
    """RoPE on the last dim of x (..., T, d): channel i pairs with i + d/2."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None] * inv[None]  # (T, d/2)
    cos, sin = angle.cos().float(), angle.sin().float()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def causal_mask(t, s, window=None, offset=0):
    i = torch.arange(t)[:, None] + offset
    j = torch.arange(s)[None, :]
    ok = j <= i
    if window:
        ok &= j > i - window
    return ok


def split_heads(x, n):
    b, t, c = x.shape
    return x.view(b, t, n, c // n).transpose(1, 2)  # (B, n, T, d)


def merge_heads(x):
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


# ----------------------------------------------------------------------------- mha / gqa / mqa


def alibi_slopes(heads):
    """Press et al.: 2^(-8/n), 2^(-16/n), ... for a power-of-two number of heads."""
    return torch.tensor([2 ** (-8 * (i + 1) / heads) for i in range(heads)])


def reference_attention(q, k, v, heads, kv_heads, *, scale, window=None, softcap=None, alibi=False, rope=False):
    q, k, v = split_heads(q, heads), split_heads(k, kv_heads), split_heads(v, kv_heads)
    positions = torch.arange(q.shape[2])
    if rope:
        q, k = rotate(q, positions), rotate(k, positions)
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = q @ k.transpose(-1, -2) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi:
        distance = positions[None, :] - positions[:, None]  # j - i ≤ 0 for the visible keys
        scores = scores + alibi_slopes(heads)[:, None, None] * distance
    scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], window), float("-inf"))
    return merge_heads(scores.softmax(-1) @ v)


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("window,softcap,position", [(None, None, None), (3, None, "rope"), (None, 0.5, "rope"),
                                                     (4, 0.7, "alibi"), (None, None, "alibi")])
def test_attention_matches_reference(kv_heads, window, softcap, position):
    heads, d = 4, 8
    q, k, v = (torch.randn(B, T, n * d) for n in (heads, kv_heads, kv_heads))
    module = rt.Attention(heads, kv_heads, d, causal=True, scale=0.3, window=window, softcap=softcap)
    c = ctx()
    extra = {}
    if position == "rope":
        extra["rope"] = rt.RopeTable(d, 64)(c.positions)
    if position == "alibi":
        extra["alibi"] = rt.AlibiSlopes(heads)()
    out = module(q, k, v, ctx=c, **extra)
    expected = reference_attention(q, k, v, heads, kv_heads, scale=0.3, window=window, softcap=softcap,
                                   alibi=position == "alibi", rope=position == "rope")
    torch.testing.assert_close(out, expected, **FP32)


# ----------------------------------------------------------------------------- differential


def reference_differential(q, k, v, heads, kv_heads, depth, *, lambdas, subln, positions=None):
    """microsoft/unilm Diff-Transformer/multihead_diffattn.py, MultiheadDiffAttn.forward, with
    the projections given: q, k as 2 * heads (2 * kv_heads) sub-heads of d, v as kv_heads of 2d."""
    b, t, _ = q.shape
    d = q.shape[-1] // (2 * heads)
    n_rep = heads // kv_heads
    q = q.view(b, t, 2 * heads, d).transpose(1, 2)
    k = k.view(b, t, 2 * kv_heads, d).transpose(1, 2)
    v = v.view(b, t, kv_heads, 2 * d).transpose(1, 2)
    if positions is not None:
        q, k = rotate(q, positions), rotate(k, positions)
    k = k[:, :, None].expand(b, 2 * kv_heads, n_rep, t, d).reshape(b, 2 * heads, t, d)  # repeat_kv
    v = v[:, :, None].expand(b, kv_heads, n_rep, t, 2 * d).reshape(b, heads, t, 2 * d)
    weights = (q * d ** -0.5) @ k.transpose(-1, -2)
    weights = weights.masked_fill(~causal_mask(t, t), float("-inf")).softmax(-1)
    lambda_init = 0.8 - 0.6 * math.exp(-0.3 * depth)
    q1, k1, q2, k2 = lambdas
    lambda_full = torch.exp((q1 * k1).sum()) - torch.exp((q2 * k2).sum()) + lambda_init
    weights = weights.view(b, heads, 2, t, t)
    weights = weights[:, :, 0] - lambda_full * weights[:, :, 1]
    attn = weights @ v  # (B, H, T, 2d)
    attn = attn * torch.rsqrt(attn.pow(2).mean(-1, keepdim=True) + 1e-5) * subln  # RMSNorm(2d)
    attn = attn * (1 - lambda_init)
    return attn.transpose(1, 2).reshape(b, t, heads * 2 * d)


def _differential(heads, kv_heads, head_dim, depth):
    module = rt.DifferentialAttention(heads, kv_heads, head_dim, layer=depth, causal=True, scale=(head_dim // 2) ** -0.5)
    with torch.no_grad():
        module.subln.add_(torch.randn(head_dim) * 0.3)
        for p in (module.lambda_q1, module.lambda_k1, module.lambda_q2, module.lambda_k2):
            p.normal_(std=0.3)
    return module


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("rope", [False, True])
def test_differential_matches_the_published_algorithm(heads, kv_heads, rope):
    head_dim, depth = 8, 3  # archlang's head_dim is the whole head: two sub-heads of 4
    module = _differential(heads, kv_heads, head_dim, depth)
    q, k, v = (torch.randn(B, T, n * head_dim) for n in (heads, kv_heads, kv_heads))
    c = ctx()
    table = rt.RopeTable(head_dim // 2, 64)(c.positions) if rope else None
    out = module(q, k, v, ctx=c, rope=table)
    lambdas = (module.lambda_q1, module.lambda_k1, module.lambda_q2, module.lambda_k2)
    expected = reference_differential(q, k, v, heads, kv_heads, depth, lambdas=lambdas, subln=module.subln,
                                      positions=c.positions if rope else None)
    torch.testing.assert_close(out, expected, **FP32)


def test_differential_with_rope_depends_on_distances_only():
    """Shifting every position by 1000 leaves the layer unchanged (each sub-head rotates on its own)."""
    module = _differential(4, 2, 8, 1)
    q, k, v = (torch.randn(B, T, n * 8) for n in (4, 2, 2))
    outs = [module(q, k, v, ctx=c, rope=rt.RopeTable(4, 2048)(c.positions)) for c in (ctx(), ctx(offset=1000))]
    torch.testing.assert_close(outs[0], outs[1], atol=2e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- MLA


def reference_mla(q, kv, heads, rank, rope_dim, nope_dim, v_dim, *, kv_norm, kv_b, scale):
    """DeepSeek-V2 multi-head latent attention from the projections q (B, T, H*(nope+rope)) and
    kv_a (B, T, rank + rope): one rotary key shared by every head, K and V rebuilt per head."""
    b, t, _ = q.shape
    q = split_heads(q, heads)
    q_nope, q_pe = q[..., :nope_dim], q[..., nope_dim:]
    latent, k_pe = kv[..., :rank], kv[..., rank:]
    latent = latent * torch.rsqrt(latent.pow(2).mean(-1, keepdim=True) + 1e-6) * kv_norm
    kv_full = (latent @ kv_b.T).view(b, t, heads, nope_dim + v_dim).transpose(1, 2)
    k_nope, v = kv_full[..., :nope_dim], kv_full[..., nope_dim:]
    positions = torch.arange(t)
    q_pe, k_pe = rotate(q_pe, positions), rotate(k_pe[:, None], positions)
    scores = (q_nope @ k_nope.transpose(-1, -2) + q_pe @ k_pe.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~causal_mask(t, t), float("-inf"))
    return merge_heads(scores.softmax(-1) @ v)


def test_mla_matches_reference():
    heads, rank, rope_dim, nope_dim, v_dim = 4, 8, 4, 6, 5
    module = rt.MLAttention(heads, rank, rope_dim, nope_dim, v_dim, causal=True, scale=0.3)
    with torch.no_grad():
        module.kv_a_norm.add_(torch.randn(rank) * 0.3)
        module.kv_b_proj.normal_(std=0.3)
    q, kv = torch.randn(B, T, heads * (nope_dim + rope_dim)), torch.randn(B, T, rank + rope_dim)
    c = ctx()
    out = module(q, kv, rope=rt.RopeTable(rope_dim, 64)(c.positions), ctx=c)
    expected = reference_mla(q, kv, heads, rank, rope_dim, nope_dim, v_dim, kv_norm=module.kv_a_norm,
                             kv_b=module.kv_b_proj, scale=0.3)
    torch.testing.assert_close(out, expected, **FP32)


# ----------------------------------------------------------------------------- linear attention


def reference_linear(q, k, v, heads, causal):
    """Katharopoulos et al. 2020, eq. 2 with φ(x) = elu(x) + 1, as an explicit (T x T) sum."""
    q, k, v = (F.elu(split_heads(x, heads)) + 1 if i < 2 else split_heads(x, heads) for i, x in enumerate((q, k, v)))
    sim = q @ k.transpose(-1, -2)  # φ(q_i)·φ(k_j)
    if causal:
        sim = sim * causal_mask(q.shape[2], k.shape[2])
    return merge_heads((sim @ v) / (sim.sum(-1, keepdim=True) + 1e-6))


@pytest.mark.parametrize("causal", [True, False])
def test_linear_attention_matches_reference(causal):
    heads, d = 4, 8
    q, k, v = (torch.randn(B, T, heads * d) for _ in range(3))
    out = rt.LinearAttention(heads, d, causal=causal)(q, k, v, ctx=ctx())
    torch.testing.assert_close(out, reference_linear(q, k, v, heads, causal), **FP32)


# ----------------------------------------------------------------------------- Mamba


def reference_mamba(m: rt.Mamba, x):
    """Gu & Dao 2023 (mamba_simple.py with selective_scan_ref), one step at a time."""
    xz = x @ m.in_proj.T + (m.in_proj_bias if m.in_proj_bias is not None else 0)
    u, z = xz.chunk(2, dim=-1)  # (B, T, di)
    t = u.shape[1]
    padded = F.pad(u.transpose(1, 2), (m.d_conv - 1, 0))  # causal depthwise convolution
    conv = torch.stack([(padded[:, :, i:i + m.d_conv] * m.conv_weight[:, 0]).sum(-1) for i in range(t)], dim=-1)
    u = F.silu(conv + (m.conv_bias[:, None] if m.conv_bias is not None else 0)).transpose(1, 2)  # (B, T, di)
    dt, b, c = (u @ m.x_proj.T).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    if m.inner_norms:
        def rms(h, w):
            return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + m.norm_eps) * w
        if m.weightless_norms:  # Falcon-Mamba
            dt, b, c = rms(dt, 1.0), rms(b, 1.0), rms(c, 1.0)
        else:
            dt, b, c = rms(dt, m.dt_norm), rms(b, m.b_norm), rms(c, m.c_norm)
    delta = F.softplus(dt @ m.dt_proj_weight.T + m.dt_proj_bias)  # (B, T, di)
    A = -torch.exp(m.A_log)  # (di, N)
    h = torch.zeros(x.shape[0], m.d_inner, m.d_state)
    ys = []
    for i in range(t):
        h = torch.exp(delta[:, i, :, None] * A) * h + delta[:, i, :, None] * b[:, i, None, :] * u[:, i, :, None]
        ys.append((h * c[:, i, None, :]).sum(-1) + m.D * u[:, i])
    y = torch.stack(ys, dim=1) * F.silu(z)
    return y @ m.out_proj.T + (m.out_proj_bias if m.out_proj_bias is not None else 0)


@pytest.mark.parametrize("inner_norms,bias,weightless", [(False, False, False), (True, True, False), (True, False, True)])
def test_mamba_matches_reference(inner_norms, bias, weightless):
    d_model = 16
    m = rt.Mamba(d_model, 32, 4, 4, 2, conv_bias=True, bias=bias, inner_norms=inner_norms, weightless_norms=weightless,
                 norm_eps=0.05)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.1))
    x = torch.randn(B, T, d_model)
    torch.testing.assert_close(m(x), reference_mamba(m, x), **FP32)
