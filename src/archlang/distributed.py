"""Scale-out from outside the model (as torchtitan does): one call applies every dimension of a
device mesh, each from what the IR knows of the model.

    mesh = init_device_mesh("cuda", (2, 4, 8), mesh_dim_names=("dp_replicate", "dp_shard", "tp"))
    shard(model, mesh)

The dimensions: "dp_shard" (or "dp", FSDP2), "dp_replicate" (HSDP, or DDP alone), "tp" (tensor
parallelism from the plan each generated block carries), "ep" (MoE experts split:
archlang.expert_parallel), "cp" (sequence shards with ring attention: archlang.context_parallel)
and "pp" (pipeline stages: archlang.pipeline_parallel). Any other name is refused rather than
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


# The mesh dimensions shard() applies, in the order it applies them (as torchtitan does: split
# the experts, then the tensor-parallel layers, then cut the pipeline stages, then FSDP2 over
# the data dimensions). "dp" is another name for "dp_shard".
MESH_DIMS = ("ep", "tp", "cp", "pp", "dp_replicate", "dp_shard")
_ALIASES = {"dp": "dp_shard"}
# The ranks along these dimensions feed different data (cp: different parts of one sequence),
# so their gradients are averaged; tp and pp ranks hold different pieces of one computation.
_DATA_DIMS = ("dp_replicate", "dp_shard", "ep", "cp")


def mesh_dims(mesh) -> dict[str, str]:
    """The mesh's dimensions by the name shard() knows them (dp_shard for "dp") → the mesh's own
    name. Refuses (ArchError) a dimension shard() does not know, rather than leave it unused, and
    "dp" beside "dp_shard". An unnamed 1-D mesh is data parallel ("dp")."""
    from archlang.spec.errors import ArchError

    out: dict[str, str] = {}
    for name in mesh.mesh_dim_names or ("dp",):
        canonical = _ALIASES.get(name, name)
        if canonical not in MESH_DIMS:
            raise ArchError(f"unknown mesh dimension {name!r}",
                            hint=f"name the dimensions from {', '.join(MESH_DIMS)} (dp is dp_shard)",
                            kind="distributed")
        if canonical in out:
            raise ArchError(f"the mesh names {out[canonical]!r} and {name!r}, which are one dimension",
                            hint="name it dp_shard once", kind="distributed")
        out[canonical] = name
    return out


def _submesh(mesh, name: str):
    return mesh if len(mesh.mesh_dim_names or ("dp",)) == 1 else mesh[name]


def _size(mesh, name: str) -> int:
    """Ranks along the mesh dimension `name`."""
    order = list(mesh.mesh_dim_names or ("dp",))
    return mesh.size(order.index(name)) if len(order) > 1 else mesh.size()


def shard(model: nn.Module, mesh, *, reshard_after_forward: bool = True, microbatches: int | None = None,
          schedule: str = "1F1B", stages: list[range] | None = None, stages_per_rank: int | None = None,
          loss_fn=None, load_balance: bool = False):
    """Apply every dimension of `mesh` to `model` in place, as torchtitan's parallelize does:

    - "ep": expert parallelism (archlang.expert_parallel): each MoE layer's experts split over the
      ep ranks, which are data-parallel ranks for everything else;
    - "tp": tensor parallelism from the plan each generated block carries (tensor_parallel_layout);
    - "cp": context parallelism is checked here (archlang.context_parallel refuses what it cannot
      split) and runs each step inside `context_parallel(model)`, which takes the mesh from here;
    - "pp": pipeline stages (archlang.pipeline_parallel): `microbatches` is then required, and
      `schedule`, `stages`, `stages_per_rank` and `loss_fn` are apply_pipeline's;
    - "dp_shard" (or "dp") and "dp_replicate": FSDP2 per block and for the whole model (or each
      pipeline stage), sharded over dp_shard and the ep and cp ranks, replicated (HSDP) over
      dp_replicate; with dp_replicate alone, replicated (DDP) over it.

    Every gradient comes out as that of the mean loss over the data-parallel ranks and the
    context-parallel shards: FSDP2 averages the dense parameters'; the experts', which the ep
    all-to-alls already sum over the ep ranks, are summed over the ranks that hold the same
    experts and divided by the number of ranks that fed data. Returns the model, or with "pp" the
    PipelinePlan whose schedule runs the steps. What cannot be applied exactly is refused
    (ArchError, kind "distributed")."""
    from archlang.spec.errors import ArchError

    dims = mesh_dims(mesh)
    if "pp" in dims and microbatches is None:
        raise ArchError("a mesh with a pp dimension needs the number of microbatches each step is cut into",
                        hint="shard(model, mesh, microbatches=...) (at least the pp degree for 1F1B)",
                        kind="distributed")
    if "pp" not in dims and microbatches is not None:
        raise ArchError("microbatches are the pipeline's, and this mesh has no pp dimension", kind="distributed")
    # Check every dimension before changing anything: a refused mesh leaves the model as it was.
    if "ep" in dims:
        from archlang.expert_parallel import check_expert_parallel

        check_expert_parallel(model, _submesh(mesh, dims["ep"]))
    if "tp" in dims:
        tp_plan = _tensor_parallel_plan(model, _submesh(mesh, dims["tp"]))
    if "cp" in dims:
        from archlang.context_parallel import check_context_parallel

        check_context_parallel(model, load_balance=load_balance)
    if "pp" in dims:
        from archlang.pipeline_parallel import pipeline_layout

        stages, stages_per_rank = pipeline_layout(model, _submesh(mesh, dims["pp"]).size(), microbatches=microbatches,
                                                  schedule=schedule, stages=stages, stages_per_rank=stages_per_rank)
    if "ep" in dims:
        from archlang.expert_parallel import apply_expert_parallel

        apply_expert_parallel(model, _submesh(mesh, dims["ep"]))
    if "tp" in dims:
        from torch.distributed.tensor.parallel import parallelize_module

        parallelize_module(model, _submesh(mesh, dims["tp"]), tp_plan)
    if "cp" in dims:
        model.context_parallel_mesh = _submesh(mesh, dims["cp"])
    data = _data_parallel(model, mesh, dims, reshard_after_forward)
    if "pp" in dims:
        from archlang.pipeline_parallel import apply_pipeline, next_token_loss

        return apply_pipeline(model, _submesh(mesh, dims["pp"]), microbatches=microbatches, schedule=schedule,
                              stages=stages, stages_per_rank=stages_per_rank, loss_fn=loss_fn or next_token_loss,
                              parallelize=data)
    if data is not None:
        data(model)
    return model


def _tensor_parallel_plan(model: nn.Module, tp_mesh) -> dict:
    """parallelize_module's plan for `model` over `tp_mesh`; refused where it would shard nothing."""
    from archlang.spec.errors import ArchError

    layout, _ = tensor_parallel_layout(model, tp_mesh.size())
    if not layout:
        raise ArchError("tensor parallelism would shard nothing: no block of this model has projections it can "
                        "split (attention heads or FFN hidden units)",
                        hint='shard it over a data-parallel mesh dimension ("dp") instead', kind="distributed")
    styles = _styles()
    return {name: styles[role]() for name, role in layout.items()}


def _flat(mesh, names: list[str]):
    """One 1-D mesh over the ranks of the dimensions `names` (in the mesh's order)."""
    if len(names) == 1:
        return mesh[names[0]]
    return mesh[tuple(names)]._flatten("_".join(names))


def _fsdp_mesh(mesh, dims: dict[str, str], shard: tuple[str, ...]):
    """The mesh FSDP2 runs over for the data dimensions `shard` (sharded together) and
    dp_replicate (replicated, HSDP), as present in `mesh`; None when none is. The second value:
    whether anything is sharded (FSDP2) or only replicated (DDP)."""
    from torch.distributed.device_mesh import DeviceMesh

    from archlang.spec.errors import ArchError

    order = list(mesh.mesh_dim_names or ("dp",))
    # a dimension of one rank reduces nothing (and FSDP2 would divide twice over it when it sums
    # with a custom divide factor, as the experts do on gloo)
    shard_names = sorted((dims[d] for d in shard if d in dims and _size(mesh, dims[d]) > 1), key=order.index)
    replicate = dims.get("dp_replicate") if "dp_replicate" in dims and _size(mesh, dims["dp_replicate"]) > 1 else None
    if not shard_names and replicate is None:
        return None, False
    if len(order) == 1:
        return mesh, bool(shard_names)
    if replicate is not None and shard_names and order.index(replicate) > order.index(shard_names[0]):
        raise ArchError(f"dp_replicate must come before {shard_names[0]} in the mesh: HSDP replicates over the "
                        "outer dimension and shards over the inner", hint="put dp_replicate first", kind="distributed")
    if not shard_names:
        return mesh[replicate], False
    if replicate is None:
        return _flat(mesh, shard_names), True
    if len(shard_names) == 1:
        return mesh[(replicate, shard_names[0])], True
    # HSDP: replicated over the outer dimension, sharded over the inner ones together
    return DeviceMesh._concatenate([mesh[replicate], _flat(mesh, shard_names)]), True


def _data_parallel(model: nn.Module, mesh, dims: dict[str, str], reshard_after_forward: bool):
    """A function applying FSDP2 (or replication) over the data dimensions of `mesh` to a module
    tree (the model, or a pipeline stage): per block of its stacks, then the whole tree. None when
    the mesh has no data dimension.

    The dense weights are sharded over dp_shard, ep and cp together. An expert-parallel MoE layer
    is an FSDP2 unit of its own: its experts, already split over ep, are sharded over the ranks
    that hold the same ones (dp_shard, cp; replicated over dp_replicate), and its reduce divides
    by every rank that fed data rather than by the ranks it spans (the all-to-alls already summed
    the ep ranks' rows into each expert's gradient). Its router and shared experts stay whole on
    every rank and a gradient hook averages them over the data ranks. With no dp_shard or cp the
    experts cannot be sharded further: a hook reduces them instead."""
    from torch.distributed._composable.replicate_with_fsdp import replicate
    from torch.distributed.fsdp import fully_shard

    dense_mesh, sharded = _fsdp_mesh(mesh, dims, ("dp_shard", "ep", "cp"))
    if dense_mesh is None:
        return None
    apply = fully_shard if sharded else replicate
    options = {"reshard_after_forward": reshard_after_forward} if sharded else {}
    moes = _expert_parallel_layers(model)
    expert_mesh, experts_sharded = _fsdp_mesh(mesh, dims, ("dp_shard", "cp"))
    fed = _ranks_feeding_data(mesh, dims)
    gloo = experts_sharded and torch.distributed.get_backend() == "gloo"
    hooked: set[int] = set()  # expert weights a gradient hook reduces (FSDP2 ignores them)
    if moes and not experts_sharded:
        experts = [getattr(moe, name) for moe in moes for name in moe.expert_weight_names()]
        _average_gradients_by_hook(mesh, dims, experts, ("dp_replicate", "dp_shard", "cp"), fed)
        hooked = {id(p) for p in experts}
    elif moes:
        others = [p for moe in moes for p in _non_expert_weights(moe)]
        _average_gradients_by_hook(mesh, dims, others, _DATA_DIMS, fed)

    def parallelize(root: nn.Module) -> None:
        done: set[int] = set()
        for stack in root.children():
            if isinstance(stack, (nn.ModuleList, nn.ModuleDict)):
                for block in (stack.values() if isinstance(stack, nn.ModuleDict) else stack):
                    if id(block) in done:  # a shared block is one module at several places
                        continue
                    done.add(id(block))
                    for moe in (m for m in block.modules() if m in moes) if experts_sharded else ():
                        # its own unit first: the block's then leaves it (and its router) out
                        fully_shard(moe, mesh=expert_mesh, reshard_after_forward=reshard_after_forward,
                                    ignored_params=set(_non_expert_weights(moe)) or None)
                        moe.set_gradient_divide_factor(float(fed))
                        if gloo:  # which has no pre-multiplied sum: a sum, then the division
                            moe.set_force_sum_reduction_for_comms(True)
                    apply(block, mesh=dense_mesh, ignored_params=_ignored(block, hooked), **options)
        apply(root, mesh=dense_mesh, ignored_params=_ignored(root, hooked), **options)

    return parallelize


def _ignored(module: nn.Module, ids: set[int]) -> set[nn.Parameter] | None:
    return {p for p in module.parameters() if id(p) in ids} or None


def _expert_parallel_layers(model: nn.Module) -> list[nn.Module]:
    from archlang.expert_parallel import _moe_layers

    return [moe for moe in _moe_layers(model).values() if getattr(moe, "ep_group", None) is not None]


def _non_expert_weights(moe: nn.Module) -> list[nn.Parameter]:
    """A MoE layer's router, biases and shared experts: every parameter but the split experts."""
    experts = {id(getattr(moe, name)) for name in moe.expert_weight_names()}
    return [p for p in moe.parameters() if id(p) not in experts]


def _ranks_feeding_data(mesh, dims: dict[str, str]) -> int:
    """The ranks whose losses the mean is over: data-parallel ranks and sequence shards."""
    fed = 1
    for d in _DATA_DIMS:
        if d in dims:
            fed *= _size(mesh, dims[d])
    return fed


def _average_gradients_by_hook(mesh, dims: dict[str, str], weights: list[nn.Parameter], over: tuple[str, ...],
                               fed: int) -> None:
    """Weights FSDP2 does not reduce: each gradient, as it is computed, summed over the ranks of
    the dimensions `over` and divided by `fed`, the ranks that fed data. For a replicated weight
    (over: every data dimension) that is the mean loss's gradient; for a split expert (over: the
    ranks holding the same experts) too, as its gradient already sums the ep ranks' rows."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    order = list(mesh.mesh_dim_names or ("dp",))
    names = sorted((dims[d] for d in over if d in dims), key=order.index)
    group = _flat(mesh, names).get_group() if names else None

    def reduce(grad):
        local = (grad.to_local() if isinstance(grad, DTensor) else grad).clone()
        if group is not None:
            dist.all_reduce(local, group=group)
        local /= fed
        return DTensor.from_local(local, grad.device_mesh, grad.placements, run_check=False, shape=grad.shape,
                                  stride=grad.stride()) if isinstance(grad, DTensor) else local

    for weight in weights:
        if weight.requires_grad:
            weight.register_hook(reduce)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gather a sharded model's weights into plain tensors (every rank gets them)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for k, v in model.state_dict().items():
        out[k] = v.full_tensor() if isinstance(v, DTensor) else v
    return out
