"""Scale-out from outside the model (as torchtitan does): tensor parallelism from the plan each
generated block carries (derived from the IR), then FSDP2 per block and for the whole model.

    mesh = init_device_mesh("cuda", (dp, tp), mesh_dim_names=("dp", "tp"))
    shard(model, mesh)

A 1-D mesh named "dp" (or unnamed) applies FSDP2 only; one named "tp" applies tensor
parallelism only; one named "ep" splits MoE experts (archlang.expert_parallel). Pipeline ("pp":
archlang.pipeline_parallel) and context parallelism ("cp": archlang.context_parallel) have entry
points of their own; a mesh that names them, or any other dimension, is refused here rather than
left unused. Generated model code never changes. Every Linear is either sharded by the plan or
listed as replicated with its reason (`tensor_parallel_layout`); what cannot be sharded exactly
(fused q/k/v or gate/up projections, widths that do not split into whole heads) is refused,
never left whole unannounced.
"""

from __future__ import annotations

import torch
from torch import nn


def _styles():
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}


_FUSED_REMEDY = ('build without the fusions for tensor parallelism: passes="fold-rope,fuse-add-norm,share-constants,dce" '
                 'or disabled=("fuse-qkv", "fuse-gate-up")')


def tensor_parallel_layout(model: nn.Module, tp: int) -> tuple[dict[str, str], dict[str, str]]:
    """(plan, replicated): every nn.Linear of the model, by fully qualified name, is either in the
    plan ("colwise" | "rowwise", from the plan each generated block carries) or replicated, with
    the reason. Refuses (ArchError) what it cannot shard exactly rather than leaving it whole
    unannounced: a fused q/k/v or gate/up projection, or widths that do not split over `tp` ranks
    into whole heads and whole hidden units."""
    from archlang.spec.errors import ArchError

    fusions = getattr(model, "fusions", {})
    plan: dict[str, str] = {}
    replicated: dict[str, str] = {}
    blocks = {f"{stack_name}.{i}": block for stack_name, stack in model.named_children()
              if isinstance(stack, nn.ModuleList) for i, block in enumerate(stack)}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        owner, _, leaf = name.rpartition(".")
        block = blocks.get(owner)
        if block is None:
            replicated[name] = "outside the blocks (LM head, pooler): every rank computes it whole"
            continue
        if leaf in fusions:
            parts = ", ".join(p for p, _ in fusions[leaf])
            raise ArchError(f"tensor parallelism cannot split {name}: it fuses {parts} into one projection, and an "
                            "even split of its rows would not give each rank whole heads or hidden units of each part",
                            hint=_FUSED_REMEDY, kind="distributed")
        role = getattr(block, "tp_plan", {}).get(leaf)
        if role is None:
            replicated[name] = "the IR gives it no tensor-parallel role (MoE, MLA, SSM or position-bias projections)"
            continue
        width = module.out_features if role == "colwise" else module.in_features
        attn = getattr(block, "attn", None)
        head = getattr(attn, "head_dim", 1) if leaf in ("q_proj", "k_proj", "v_proj", "o_proj") else 1
        if width % (tp * head):
            unit = f"heads of {head}" if head > 1 else "hidden units"
            raise ArchError(f"tensor parallelism cannot split {name} over {tp} ranks: its {width} "
                            f"{'output' if role == 'colwise' else 'input'} features are not whole {unit} per rank",
                            hint=f"use a tensor-parallel degree that divides {width // head}", kind="distributed")
        plan[name] = role
    return plan, replicated


def tensor_parallel_plan(model: nn.Module, tp: int) -> dict[str, str]:
    """Fully qualified module name → "colwise" | "rowwise" (see tensor_parallel_layout)."""
    return tensor_parallel_layout(model, tp)[0]


# Mesh dimensions applied elsewhere: what shard() says when a mesh names one.
_APPLIED_ELSEWHERE = {
    "pp": "pipeline parallelism splits the model into stages that run a schedule: "
          "archlang.pipeline_parallel.apply_pipeline(model, mesh['pp'], microbatches=...)",
    "cp": "context parallelism shards each step's sequence: run the step inside "
          "archlang.context_parallel.context_parallel(model, mesh['cp'])",
}


def _check_dims(names) -> None:
    """Refuse a mesh dimension shard() does not apply, rather than leave it unused unannounced."""
    from archlang.spec.errors import ArchError

    for name in names:
        if name in _APPLIED_ELSEWHERE:
            raise ArchError(f"shard() does not apply the mesh dimension {name!r}",
                            hint=_APPLIED_ELSEWHERE[name] + "; pass shard() the mesh without it", kind="distributed")
        if name not in SHARD_DIMS:
            raise ArchError(f"unknown mesh dimension {name!r}",
                            hint=f"name the dimensions from {', '.join(SHARD_DIMS)}", kind="distributed")


SHARD_DIMS = ("dp", "tp", "ep")


def shard(model: nn.Module, mesh, *, reshard_after_forward: bool = True) -> nn.Module:
    """Apply tensor parallelism (mesh dim "tp") and FSDP2 (mesh dim "dp") in place. Tensor
    parallelism is refused (ArchError) where it would shard nothing or not exactly."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    from archlang.spec.errors import ArchError

    names = mesh.mesh_dim_names or ("dp",)
    _check_dims(names)
    if "ep" in names:  # expert parallelism stands alone, or beside FSDP2 over the same ranks
        from archlang.expert_parallel import apply_expert_parallel

        if names != ("ep",):
            raise ArchError(f"expert parallelism is applied over a 1-D mesh named 'ep', not beside {names}",
                            hint="apply it alone, or with FSDP2 over the same ranks: "
                                 "archlang.expert_parallel.shard_with_experts(model, mesh)", kind="distributed")
        return apply_expert_parallel(model, mesh)
    tp_mesh = mesh["tp"] if "tp" in names and len(names) > 1 else (mesh if names == ("tp",) else None)
    dp_mesh = mesh["dp"] if "dp" in names and len(names) > 1 else (mesh if names == ("dp",) else None)
    if tp_mesh is not None:
        layout, _ = tensor_parallel_layout(model, tp_mesh.size())
        if not layout:
            raise ArchError("tensor parallelism would shard nothing: no block of this model has projections it can "
                            "split (attention heads or FFN hidden units)",
                            hint='shard it over a data-parallel mesh dimension ("dp") instead', kind="distributed")
        styles = _styles()
        parallelize_module(model, tp_mesh, {name: styles[role]() for name, role in layout.items()})
    if dp_mesh is not None:
        sharded: set[int] = set()
        for _, stack in model.named_children():
            if isinstance(stack, nn.ModuleList):
                for block in stack:
                    if id(block) not in sharded:  # a shared block is one module at several places
                        sharded.add(id(block))
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
