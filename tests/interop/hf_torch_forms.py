"""Hugging Face modules whose transformers binds them to flash-linear-attention's Triton kernels
when fla is installed (it is, as a test dependency): those kernels need a GPU, so on the CPU the
tests run the modules' own PyTorch forms, which compute the same function anywhere."""

import importlib


def use_torch_forms() -> None:
    """Kimi Linear's KDA rule (chunked and recurrent): transformers keeps its PyTorch form under __wrapped__."""
    kimi = importlib.import_module("transformers.models.kimi_linear.modeling_kimi_linear")
    for name in ("chunk_kimi_delta_attention", "recurrent_kimi_delta_attention"):
        fn = getattr(kimi, name)
        setattr(kimi, name, getattr(fn, "__wrapped__", fn))
