import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

# Under pytest-xdist every worker is a process of its own, and so is each rank the distributed
# tests spawn: one intra-op thread each, so that they share the cores instead of oversubscribing
# them (threads spinning in each other's way made small-op tests tens of times slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. It must be chosen
# before anything (torch.compile included) first imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")



def _hf_torch_paths_without_fla() -> None:
    """transformers replaces some torch paths (Qwen3-Next's and Kimi Linear's delta rules) with
    flash-linear-attention's Triton kernels whenever `fla` imports, whatever the device, and those
    kernels fail on CPU tensors. The tests use fla's naive PyTorch references as an independent
    check, so fla is installed: import those modeling modules with fla hidden, so that they keep
    their torch paths, then let the tests import fla."""
    try:
        import transformers  # noqa: F401
    except ImportError:  # pragma: no cover
        return
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name == "fla" or name.startswith("fla.")}
    sys.modules["fla"] = None  # `import fla` raises ImportError
    try:
        for family in ("qwen3_next", "kimi_linear"):
            try:
                importlib.import_module(f"transformers.models.{family}.modeling_{family}")
            except ImportError:  # pragma: no cover  (an older transformers)
                pass
    finally:
        del sys.modules["fla"]
        sys.modules.update(saved)


_hf_torch_paths_without_fla()

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "tests" / "specs"
EXAMPLES = ROOT / "examples"
GOLDEN = ROOT / "tests" / "golden"

# The suite explores a fixed sample of each strategy, so CI never depends on luck;
# bench/fuzz.py explores randomly and at length.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("archlang", derandomize=True, print_blob=True)
    _hypothesis_settings.load_profile("archlang")
except ImportError:  # pragma: no cover
    pass

# Tolerance table for float32 comparisons against references (Liger-Kernel's convention).
FP32 = dict(atol=1e-4, rtol=1e-4)


def tiny_specs() -> list[tuple[Path, str]]:
    """(file, model name) for every model in tests/specs."""
    from archlang.spec import load_models

    out = []
    for path in sorted(SPECS.glob("*.arch")):
        for model in load_models(path):
            out.append((path, model.name))
    return out


def build_tiny(path, name, passes=None):
    from archlang.api import compile_spec, load_source

    kwargs = {} if passes is None else {"passes": passes}
    compiled = compile_spec(path, model=name, **kwargs)
    return load_source(compiled.source, name).build()


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME; ARCHLANG_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("ARCHLANG_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file (ARCHLANG_UPDATE_GOLDEN=1 to accept)"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
