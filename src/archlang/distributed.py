"""Scale-out from outside the model (as torchtitan does): tensor parallelism from the plan each
generated block carries (derived from the IR), then FSDP2 per block and for the whole model.

    mesh = init_device_mesh("cuda", (dp, tp), mesh_dim_names=("dp", "tp"))
    shard(model, mesh)

A 1-D mesh named "dp" (or unnamed) applies FSDP2 only; one named "tp" applies tensor
parallelism only. Generated model code never changes.
"""

from __future__ import annotations

import torch
from torch import nn


def _styles():
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}


def tensor_parallel_plan(model: nn.Module, tp: int) -> dict[str, str]:
    """Fully qualified module name → "colwise" | "rowwise", for every block whose plan divides
    evenly over `tp` ranks (whole heads, whole hidden units per rank)."""
    plan: dict[str, str] = {}
    for stack_name, stack in model.named_children():
        if not isinstance(stack, nn.ModuleList):
            continue
        for i, block in enumerate(stack):
            for name, role in getattr(block, "tp_plan", {}).items():
                module = getattr(block, name)
                width = module.out_features if role == "colwise" else module.in_features
                attn = getattr(block, "attn", None)
                head = getattr(attn, "head_dim", 1) if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else 1
                if width % (tp * head):
                    plan = {k: v for k, v in plan.items() if not k.startswith(f"{stack_name}.{i}.")}
                    break
                plan[f"{stack_name}.{i}.{name}"] = role
    return plan


def shard(model: nn.Module, mesh, *, reshard_after_forward: bool = True) -> nn.Module:
    """Apply tensor parallelism (mesh dim "tp") and FSDP2 (mesh dim "dp") in place."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    names = mesh.mesh_dim_names or ("dp",)
    tp_mesh = mesh["tp"] if "tp" in names and len(names) > 1 else (mesh if names == ("tp",) else None)
    dp_mesh = mesh["dp"] if "dp" in names and len(names) > 1 else (mesh if names == ("dp",) else None)
    if tp_mesh is not None:
        styles = _styles()
        plan = {name: styles[role]() for name, role in tensor_parallel_plan(model, tp_mesh.size()).items()}
        if plan:
            parallelize_module(model, tp_mesh, plan)
    if dp_mesh is not None:
        for _, stack in model.named_children():
            if isinstance(stack, nn.ModuleList):
                for block in stack:
                    fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
        fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gather a sharded model's weights into plain tensors (every rank gets them)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for k, v in model.state_dict().items():
        out[k] = v.full_tensor() if isinstance(v, DTensor) else v
    return out
