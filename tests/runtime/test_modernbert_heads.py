"""ModernBERT's head pieces against plain PyTorch re-expressions: the sequence pooling (first
token, or the mean over the tokens the attention mask keeps) and the dense-activation-norm
transform, with its bias switches; gradients reach every weight."""

import pytest
import torch
import torch.nn.functional as F

import archlang.runtime as rt

from ..conftest import FP32


def test_cls_pooling_is_the_first_tokens_state():
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(rt.pool_tokens(x, "cls"), x[:, 0])


def test_mean_pooling_averages_the_kept_tokens_only():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    want = torch.stack([x[0].mean(0), x[1, :3].mean(0)])
    torch.testing.assert_close(rt.pool_tokens(x, "mean", mask), want, **FP32)
    torch.testing.assert_close(rt.pool_tokens(x, "mean"), x.mean(1), **FP32)  # no mask: every token


@pytest.mark.parametrize("norm,norm_bias,dense_bias", [("layernorm", False, False), ("layernorm", True, True),
                                                       ("rmsnorm", False, True)])
def test_the_transform_is_norm_of_act_of_dense(norm, norm_bias, dense_bias):
    torch.manual_seed(0)
    head = rt.HeadTransform(8, act="gelu", norm=norm, eps=1e-5, norm_bias=norm_bias, dense_bias=dense_bias)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    assert (head.dense_bias is not None) == dense_bias and (head.norm_bias is not None) == norm_bias
    x = torch.randn(3, 8, requires_grad=True)
    h = F.gelu(F.linear(x, head.dense_weight, head.dense_bias))
    if norm == "layernorm":
        want = F.layer_norm(h, (8,), head.norm_weight, head.norm_bias, 1e-5)
    else:
        want = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * head.norm_weight
    got = head(x)
    torch.testing.assert_close(got, want, **FP32)
    got.square().sum().backward()
    assert x.grad is not None and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
