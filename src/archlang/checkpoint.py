"""archlang's own checkpoints: safetensors files under the unfused weight names (q_proj,
gate_proj, ...), so one file loads into a model compiled with any pass pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Write the model's weights atomically (temporary file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    # a shared block's weights are stored once, under its first use; loading gives them every name
    repeats = tuple(f"{name}." for name in model.repeated_modules())
    state = {k: v.detach().cpu().contiguous() for k, v in model.unfuse_state_dict().items()
             if not (repeats and k.startswith(repeats))}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(state, str(tmp), metadata={"format": "pt", "model": str(model.config.get("name", ""))})
    os.replace(tmp, path)


def load(model: torch.nn.Module, path: str | os.PathLike, strict: bool = True):
    """Load weights written by `save` (or any file under archlang's unfused names)."""
    from safetensors.torch import load_file

    return model.load_unfused_state_dict(load_file(str(path)), strict=strict)
