"""Expert parallelism (as torchtitan does it): the stacked (E, ...) expert weights of every MoE layer
are split over the ranks of an "ep" mesh, each rank holding E/ep whole experts as a DTensor
sharded on dim 0; the router, the shared experts and everything outside the MoE layers stay
replicated. In each forward the rows a rank routed (already sorted by expert) go to the ranks
owning their experts and come back with torch.distributed all-to-alls (the split sizes are
exchanged first), so every row meets exactly the weights it would meet in one process.

    mesh = init_device_mesh("cuda", (ep,), mesh_dim_names=("ep",))
    apply_expert_parallel(model, mesh)

The ep ranks are data-parallel ranks for everything else: each feeds its own batch. After the
backward, a replicated parameter's gradient is its rank's own; an expert's gradient (on the rank
that owns it) already sums every rank's batch. Averaging the replicated gradients over the ep
group and dividing the experts' by ep gives the gradient of the mean loss (`average_gradients`).
Every MoE forward is a collective: all ranks must run the same forwards. The router's balancing
losses (aux_loss, z_loss, seq_aux_loss) stay statistics of each rank's own batch, as under any
data parallelism; the correction-bias update already sums the load over all ranks.

archlang.distributed.shard(model, mesh) applies it from a mesh's "ep" dimension, before tensor
parallelism, pipeline stages and FSDP2: the experts are split by expert parallelism, then
sharded by FSDP2 over the ranks that hold the same ones (dp_shard, cp), everything else over the
ep, dp_shard and cp ranks together, and every gradient comes out as that of the mean loss.
`shard_with_experts(model, ep_mesh)` is that call on a 1-D ep mesh.
"""

from __future__ import annotations

import torch
from torch import nn

from archlang.spec.errors import ArchError

_HINT_ALONE = ("archlang.distributed.shard(model, mesh) applies the mesh's \"ep\" dimension first and the others "
               "(dp_shard, dp_replicate, tp, pp) after it")


def _moe_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Each MoE module once, by its first name (named_modules gives a shared block once)."""
    from archlang.runtime.moe import MoE

    return {name: module for name, module in model.named_modules() if isinstance(module, MoE)}


def check_expert_parallel(model: nn.Module, mesh) -> dict[str, nn.Module]:
    """The MoE layers of `model` by name; refuses (ArchError) what apply_expert_parallel would not
    split exactly over `mesh`."""
    from torch.distributed.tensor import DTensor

    names = tuple(mesh.mesh_dim_names or ("ep",))
    if len(names) != 1 or names[0] != "ep":
        other = ", ".join(repr(n) for n in names if n != "ep") or repr(names[0])
        raise ArchError(f"expert parallelism takes a 1-D mesh named \"ep\"; this one has {other}",
                        hint=_HINT_ALONE, kind="distributed")
    sharded = next((name for name, p in model.named_parameters() if isinstance(p, DTensor)), None)
    if sharded is not None:
        raise ArchError(f"expert parallelism cannot split a model another parallelism has already sharded ({sharded} "
                        "is a DTensor): it must come first", hint=_HINT_ALONE, kind="distributed")
    layers = _moe_layers(model)
    if not layers:
        raise ArchError("expert parallelism would shard nothing: this model has no MoE layer",
                        hint='shard it over a data-parallel mesh dimension ("dp") instead', kind="distributed")
    ep = mesh.size()
    for name, moe in layers.items():
        if moe.experts % ep:
            raise ArchError(f"expert parallelism cannot split the {moe.experts} experts of {name} over {ep} ranks: "
                            "each rank must hold the same number of whole experts",
                            hint=f"use an ep degree that divides {moe.experts}", kind="distributed")
        if moe.capacity_factor is not None:
            # the capacity is a share of the rank's own rows: which rows are dropped would depend on
            # how the batch is split, so the ranks would not compute what one process computes
            raise ArchError(f"expert parallelism cannot run {name} exactly: capacity_factor drops rows beyond a share "
                            "of each rank's batch, so what is dropped depends on how the batch is split",
                            hint="remove capacity_factor from the moe(...) of this block", kind="distributed")
    return layers


def apply_expert_parallel(model: nn.Module, ep_mesh) -> nn.Module:
    """Split the experts of every MoE layer over `ep_mesh` (1-D, named "ep") in place: rank r keeps
    experts [r·E/ep, (r+1)·E/ep). Every rank must have built the same model (same seed or the same
    checkpoint): each keeps its own slice, nothing is sent. Refuses (ArchError) an expert count
    that ep does not divide, capacity_factor, a mesh with other dimensions and a model already
    sharded by tensor parallelism or FSDP2."""
    from torch.distributed.tensor import DTensor, Shard

    layers = check_expert_parallel(model, ep_mesh)
    ep, rank = ep_mesh.size(), ep_mesh.get_local_rank()
    for moe in layers.values():
        local = moe.experts // ep
        for name in moe.expert_weight_names():
            full = getattr(moe, name)
            piece = full.detach()[rank * local:(rank + 1) * local].clone()
            weight = DTensor.from_local(piece, ep_mesh, [Shard(0)], run_check=False, shape=full.shape,
                                        stride=full.stride())
            setattr(moe, name, nn.Parameter(weight, requires_grad=full.requires_grad))
        moe.ep_group = ep_mesh.get_group()
        # rows each local expert received in the last forward, kept where the collectives run
        moe.ep_load = torch.zeros(local, dtype=torch.long, device=piece.device)
        moe.expert_dispatch = _dispatch
    return model


def shard_with_experts(model: nn.Module, ep_mesh, *, reshard_after_forward: bool = True) -> nn.Module:
    """Expert parallelism over `ep_mesh`, then FSDP2 over the same ranks for every parameter but
    the experts (per block, then the whole model): archlang.distributed.shard(model, ep_mesh).
    FSDP2 averages the gradients it reduces; the experts' (sums over every rank's rows) are
    divided by ep in their backward to match, so no `average_gradients` is needed. Refuses what
    apply_expert_parallel refuses."""
    from archlang.distributed import shard

    return shard(model, ep_mesh, reshard_after_forward=reshard_after_forward)


def _dispatch(moe: nn.Module, xs: torch.Tensor, expert_of: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Run rows sorted by expert (counts: rows per expert, all E) on the ranks that own the
    experts and return their outputs in the same order."""
    import torch.distributed as dist
    from torch.distributed._functional_collectives import all_to_all_single_autograd

    group = moe.ep_group
    ep = dist.get_world_size(group)
    local = moe.experts // ep
    # how many rows each rank sends to each of this rank's experts: (ep, local)
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts, group=group)
    received = received.reshape(ep, local)
    send = counts.reshape(ep, local).sum(dim=1).tolist()
    recv = received.sum(dim=1).tolist()
    rows = all_to_all_single_autograd(xs, recv, send, group)
    # the rows arrive grouped by source rank, then by expert: regroup them by expert alone
    experts_here = torch.arange(local, device=xs.device).repeat(ep).repeat_interleave(received.reshape(-1))
    order = torch.argsort(experts_here, stable=True)
    load = received.sum(dim=0)
    moe.ep_load = load.detach()
    weights = {name: getattr(moe, name).to_local() for name in moe.expert_weight_names()}
    out = moe.expert_ffn(rows[order], experts_here[order], load, weights)
    out = out[torch.argsort(order)]  # back to the order they arrived in
    return all_to_all_single_autograd(out, send, recv, group)


def expert_load(model: nn.Module) -> dict[str, torch.Tensor]:
    """Rows ((token, expert) pairs) each rank received in the last forward, per MoE layer: a
    tensor (ep,). A collective: every rank of the ep group must call it. (Each layer's own
    `ep_load` holds, without a collective, the rows each of this rank's experts received.)"""
    import torch.distributed as dist

    out = {}
    for name, moe in _moe_layers(model).items():
        group = getattr(moe, "ep_group", None)
        if group is None:
            raise ArchError(f"{name} is not expert-parallel", hint="call apply_expert_parallel(model, ep_mesh) first",
                            kind="distributed")
        mine = moe.ep_load.sum().reshape(1)
        every = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, mine, group=group)
        out[name] = torch.cat(every)
    return out


def average_gradients(model: nn.Module, ep_mesh) -> None:
    """Turn the gradients of the last backward into those of the mean of the ranks' losses: average
    the replicated ones over the ep group, divide the experts' (which already sum every rank's
    rows) by ep. For training with expert parallelism alone (FSDP2 would reduce them itself)."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    ep = ep_mesh.size()
    group = ep_mesh.get_group()
    for p in model.parameters():
        if p.grad is None:
            continue
        if isinstance(p, DTensor):
            p.grad.div_(ep)
        else:
            dist.all_reduce(p.grad, group=group)
            p.grad.div_(ep)
