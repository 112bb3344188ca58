import pytest
import torch

# tests/conftest.py has chosen Triton's interpreter when there is no GPU.
triton = pytest.importorskip("triton")

from archlang.kernels import buffers  # noqa: E402


@pytest.fixture(autouse=True)
def poisoned_outputs():
    buffers.POISON = True
    yield
    buffers.POISON = False


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Tolerances by dtype (Liger-Kernel's table): float32 tight, bfloat16 loose.
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}


def assert_model_matches_on_kernels(spec: str, name: str, *, grads: bool = True) -> None:
    """A whole model run with every op forced onto the Triton kernels computes the outputs (and
    gradients) of the same model on the PyTorch references."""
    from archlang.kernels import dispatch

    from ..conftest import SPECS, build_tiny

    model = build_tiny(SPECS / spec, name).to(DEVICE)
    ids = torch.randint(0, 97, (2, 9), device=DEVICE)
    results = {}
    for mode in ("reference", "triton"):
        model.zero_grad()
        with dispatch.force(mode):
            out = model(ids)
            if grads:
                out.float().pow(2).mean().backward()
        results[mode] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()} if grads else {})
    torch.testing.assert_close(results["triton"][0], results["reference"][0], atol=1e-4, rtol=1e-4)
    for n, g in results["reference"][1].items():
        torch.testing.assert_close(results["triton"][1][n], g, atol=1e-4, rtol=1e-3, msg=n)
