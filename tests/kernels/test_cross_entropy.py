"""Fused linear + cross-entropy against the reference: loss and gradients of the hidden states
and the head weight, with ignored targets, soft-capping and row counts past a chunk."""

import pytest
import torch

from archlang.kernels import cross_entropy, reference
from archlang.kernels.cross_entropy import linear_cross_entropy

from .conftest import DEVICE


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("rows,vocab", [(37, 101), (9, 5000)])
def test_linear_cross_entropy(rows, vocab, softcap, monkeypatch):
    monkeypatch.setattr(cross_entropy, "CHUNK_ROWS", 16)  # several chunks, the last one ragged
    hidden = torch.randn(rows, 24, device=DEVICE)
    weight = torch.randn(vocab, 24, device=DEVICE) * 0.3
    target = torch.randint(0, vocab, (rows,), device=DEVICE)
    target[::5] = -100
    a = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    b = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    loss_k = linear_cross_entropy(*a, target, softcap=softcap)
    loss_r = reference.linear_cross_entropy(*b, target, softcap=softcap)
    torch.testing.assert_close(loss_k, loss_r, atol=1e-4, rtol=1e-4)
    (loss_k * 2).backward()
    (loss_r * 2).backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("spec,name", [("tiny_gemma2.arch", "tiny_gemma2"), ("tiny_llama.arch", "tiny_llama")])
@pytest.mark.parametrize("mode", ["reference", "triton"])
def test_model_loss_equals_cross_entropy_of_logits(spec, name, mode):
    from archlang.kernels import dispatch

    from ..conftest import SPECS, build_tiny

    model = build_tiny(SPECS / spec, name).to(DEVICE)
    ids = torch.randint(0, 97, (2, 12), device=DEVICE)
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    ref = torch.nn.functional.cross_entropy(model(ids).reshape(-1, 97), labels.reshape(-1))
    with dispatch.force(mode):
        loss = model.loss(ids, labels)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
