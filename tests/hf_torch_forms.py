"""Hugging Face modules that transformers binds to flash-linear-attention's Triton kernels when fla
is installed (it is, as a test dependency): those kernels need a GPU, so on the CPU the tests run
the modules' own PyTorch forms, which compute the same function anywhere. transformers keeps each
PyTorch form under the kernel wrapper's __wrapped__."""

import importlib

# module → the functions transformers may have bound to fla's kernels
KERNEL_BOUND = {
    "transformers.models.kimi_linear.modeling_kimi_linear": ("chunk_kimi_delta_attention",
                                                             "recurrent_kimi_delta_attention"),
    "transformers.models.qwen3_next.modeling_qwen3_next": ("torch_chunk_gated_delta_rule",
                                                           "torch_recurrent_gated_delta_rule"),
}


def use_torch_forms() -> None:
    for module_name, names in KERNEL_BOUND.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a transformers without this family: its tests skip
            continue
        for name in names:
            fn = getattr(module, name)
            setattr(module, name, getattr(fn, "__wrapped__", fn))
