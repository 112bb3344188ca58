"""What the compiler tests of each recurrent mixer check on a generated hybrid model: built from a
spec with every weight perturbed (so no norm sits at 1 and no bias at 0), causal, and trained by
gradients that reach every parameter."""

from pathlib import Path

import torch

from archlang.api import compile_spec, load_source


def perturbed_model(spec: Path, seed: int = 0):
    """The spec's generated model in eval mode, matrices redrawn and vectors shifted by noise."""
    model = load_source(compile_spec(spec.read_text()).source, "m").build().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise * 0.2) if p.dim() >= 2 else p.add_(noise * 0.1)
    return model


def assert_causal(model, length: int, cut: int, vocab: int = 97) -> None:
    """Changing the tokens from `cut` on leaves every earlier position's logits as they were."""
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, cut:] = (changed[0, cut:] + 1) % vocab
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :cut], b[:, :cut], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, cut:], b[:, cut:])


def assert_gradients_reach_every_parameter(model, vocab: int = 97) -> None:
    model.train()
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    logits = model(ids)
    (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    bad = [n for n, p in model.named_parameters()
           if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    assert not bad
