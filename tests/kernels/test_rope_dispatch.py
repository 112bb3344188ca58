"""The Triton RoPE kernel against the reference, and whole models run with every op forced onto
the Triton kernels (interpreted on CPU) against the same models on the references."""

import pytest
import torch

from archlang.kernels import reference
from archlang.kernels.rope import rope
from archlang.runtime.position import RopeTable

from .conftest import DEVICE, TOL, assert_model_matches_on_kernels


@pytest.mark.parametrize("d,rot", [(16, 16), (24, 8), (20, 12)])
@pytest.mark.parametrize("scaling", [None, {"kind": "yarn", "factor": 4.0, "original_context": 16, "beta_fast": 32.0,
                                           "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.0}])
def test_rope_matches_reference(d, rot, scaling):
    x = torch.randn(2, 3, 11, d, device=DEVICE)
    cos, sin = RopeTable(rot, 64, scaling=scaling).to(DEVICE)(torch.arange(5, 16, device=DEVICE))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = rope(a, cos, sin), reference.rope(b, cos, sin)
    torch.testing.assert_close(ya, yb, **TOL[torch.float32])
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(a.grad, b.grad, **TOL[torch.float32])


@pytest.mark.parametrize("spec,name", [("tiny_llama.arch", "tiny_llama"), ("tiny_gemma2.arch", "tiny_gemma2"),
                                       ("tiny_gpt2.arch", "tiny_gpt2"), ("tiny_exotic.arch", "tiny_exotic")])
def test_models_on_kernels_match_references(spec, name):
    assert_model_matches_on_kernels(spec, name)
