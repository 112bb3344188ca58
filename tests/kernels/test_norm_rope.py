"""The fused QK-norm + RoPE kernel against RMSNorm then RoPE on the references (outputs and
gradients, partial rotary, Gemma's unit offset, bfloat16), the attention layer's use of it, and a
whole model of every QK-norm variant forced onto the kernels against the same model on the references."""

import pytest
import torch

from archlang.kernels import dispatch, reference
from archlang.kernels.norm_rope import norm_rope
from archlang.runtime.position import RopeTable

from .conftest import DEVICE, TOL, assert_model_matches_on_kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("unit_offset", [False, True], ids=["weight", "unit-offset"])
@pytest.mark.parametrize("d,rot", [(16, 16), (24, 8), (20, 12)])
def test_norm_rope_matches_norm_then_rope(d, rot, unit_offset, dtype):
    g = torch.Generator().manual_seed(d + rot)
    x = (torch.randn(2, 3, 11, d, generator=g) * 3).to(DEVICE, dtype)
    w = (1 + 0.5 * torch.randn(d, generator=g)).to(DEVICE, dtype)
    cos, sin = RopeTable(rot, 64).to(DEVICE)(torch.arange(5, 16, device=DEVICE))
    # the truth in float32 from the same (rounded) inputs: in bfloat16 the kernel rounds once, at
    # its output, where the two reference ops round twice
    (xa, wa), (xb, wb) = (x.clone().requires_grad_(), w.clone().requires_grad_()), \
        (x.float().requires_grad_(), w.float().requires_grad_())
    ya = norm_rope(xa, wa, 1e-6, cos, sin, unit_offset)
    yb = reference.rope(reference.rms_norm(xb, wb, 1e-6, unit_offset), cos, sin)
    assert ya.dtype == dtype
    torch.testing.assert_close(ya.float(), yb, **TOL[dtype])
    upstream = torch.randn(yb.shape, generator=g).to(DEVICE, dtype)
    ya.backward(upstream)
    yb.backward(upstream.float())
    torch.testing.assert_close(xa.grad.float(), xb.grad, **TOL[dtype])
    tol = TOL[dtype] if dtype == torch.float32 else dict(atol=5e-2, rtol=2e-2)  # summed over 66 rows
    torch.testing.assert_close(wa.grad.float(), wb.grad, **tol)


def test_refuses_odd_or_oversized_rotary_widths():
    x = torch.randn(1, 1, 3, 8, device=DEVICE)
    for rot in (3, 10):
        cos = torch.ones(3, rot, device=DEVICE)
        with pytest.raises(ValueError):
            norm_rope(x, torch.ones(8, device=DEVICE), 1e-6, cos, cos)


def _calls(monkeypatch):
    calls = []
    kernel = dispatch._kernel

    def spy(module, name):
        calls.append((module, name))
        return kernel(module, name)

    monkeypatch.setattr(dispatch, "_kernel", spy)
    return calls


def test_attention_with_per_head_rms_qk_norm_uses_the_fused_kernel(monkeypatch):
    from archlang.runtime.attention import Attention
    from archlang.runtime.context import Context

    calls = _calls(monkeypatch)
    torch.manual_seed(0)
    attn = Attention(4, 2, 8, causal=True, scale=8 ** -0.5, qk_norm="rmsnorm").to(DEVICE)
    with torch.no_grad():
        attn.q_norm.normal_(1.0, 0.3)
        attn.k_norm.normal_(1.0, 0.3)
    b, t = 2, 7
    q = torch.randn(b, t, 32, device=DEVICE)
    k, v = torch.randn(b, t, 16, device=DEVICE), torch.randn(b, t, 16, device=DEVICE)
    rope = RopeTable(8, 64).to(DEVICE)(torch.arange(t, device=DEVICE))
    out = {}
    for mode in ("reference", "triton"):
        with dispatch.force(mode):
            out[mode] = attn(q, k, v, ctx=Context(positions=torch.arange(t, device=DEVICE)), rope=rope)
    assert ("norm_rope", "norm_rope") in calls
    torch.testing.assert_close(out["triton"], out["reference"], **TOL[torch.float32])


def test_qk_norm_models_on_kernels_match_references():
    assert_model_matches_on_kernels("tiny_modern_attention.arch", "tiny_qk_norm")
