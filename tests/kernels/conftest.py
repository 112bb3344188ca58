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
