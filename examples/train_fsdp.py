"""Train a compiled model on any device mesh: data parallelism (FSDP2, HSDP), tensor, expert,
context and pipeline parallelism, each a dimension of the mesh, all applied by one
`archlang.distributed.shard(model, mesh)`. Tiny and on CPU (gloo) here; the same script runs on
GPUs (NCCL) across machines with torchrun.

    torchrun --nproc-per-node 2 examples/train_fsdp.py                         # FSDP2 over 2 processes
    torchrun --nproc-per-node 4 examples/train_fsdp.py --dp-shard 2 --tp 2     # FSDP2 x tensor parallel
    torchrun --nproc-per-node 4 examples/train_fsdp.py --pp 2 --dp-shard 2     # pipeline x FSDP2
    torchrun --nproc-per-node 4 examples/train_fsdp.py --moe --ep 2 --dp-shard 2
    torchrun --nproc-per-node 4 examples/train_fsdp.py --cp 2 --dp-shard 2 --seq 64
    torchrun --nproc-per-node 8 examples/train_fsdp.py --spec examples/llama3_8b.arch ...  # a real spec

The product of the degrees must be the number of processes; the dp-shard degree left out takes
what the others leave. Every rank builds the same weights (same seed), then keeps its shards.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

import archlang
from archlang.distributed import shard
from archlang.spec.errors import ArchError

SPEC = """
model tiny {
    vocab = 256
    d_model = 64
    context = 256
    dtype = fp32
    position = rope(theta = 10000)
    final_norm = rmsnorm(eps = 1e-5)
    block layer {
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = FFN
    }
    layers = layer * 4
}
"""
DENSE_FFN = "swiglu(hidden = 4 * d_model)"
MOE_FFN = "moe(experts = 4, top_k = 2, expert = swiglu(hidden = 2 * d_model))"
# Mesh dimensions, outermost first: pipeline stages talk least, tensor-parallel ranks most, so
# tp is innermost (within a node), as torchtitan lays them out.
DIMS = ("pp", "dp_replicate", "dp_shard", "ep", "cp", "tp")
# Tensor parallelism splits heads and hidden units: keep q/k/v and gate/up unfused.
TP_DISABLED = ("fuse-qkv", "fuse-gate-up")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", help="an .arch file (default: a tiny built-in decoder)")
    p.add_argument("--moe", action="store_true", help="the built-in decoder with MoE layers (for --ep)")
    for dim in DIMS:
        p.add_argument(f"--{dim.replace('_', '-')}", type=int, default=None if dim == "dp_shard" else 1,
                       help=f"{dim} degree" + (" (default: the processes the others leave)" if dim == "dp_shard"
                                               else " (default 1)"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="sequences per step, over all data-parallel ranks")
    p.add_argument("--seq", type=int, default=32, help="tokens per sequence")
    p.add_argument("--microbatches", type=int, default=None, help="pipeline microbatches (default: the pp degree)")
    p.add_argument("--schedule", default="1F1B", help="pipeline schedule: 1F1B, gpipe or interleaved")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--checkpoint", help="save the trained weights here (torch.distributed.checkpoint, sharded)")
    return p.parse_args()


def build_mesh(args, world: int, device: str):
    degrees = {dim: getattr(args, dim) for dim in DIMS}
    others = 1
    for dim, n in degrees.items():
        if dim != "dp_shard":
            others *= n
    if degrees["dp_shard"] is None:
        if world % others:
            raise ValueError(f"the other degrees make {others} ranks, which do not divide the {world} processes")
        degrees["dp_shard"] = world // others
    used = {dim: n for dim, n in degrees.items() if n != 1}
    if others * degrees["dp_shard"] != world:
        raise ValueError(f"the degrees {used} make {others * degrees['dp_shard']} ranks, and there are {world} "
                         "processes: their product must be the number of processes")
    if not used:  # one process: a 1-D mesh of one data-parallel rank
        used = {"dp_shard": 1}
    return init_device_mesh(device, tuple(used.values()), mesh_dim_names=tuple(used))


def batch_coordinate(mesh) -> tuple[int, int]:
    """(this rank's part, parts): the data-parallel ranks (dp_replicate, dp_shard, ep) each train
    on their own part of the batch; cp, tp and pp ranks share theirs."""
    index, parts = 0, 1
    for i, name in enumerate(mesh.mesh_dim_names):
        if name in ("dp_replicate", "dp_shard", "ep"):
            index, parts = index * mesh.size(i) + mesh.get_local_rank(name), parts * mesh.size(i)
    return index, parts


def main() -> None:
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        mesh = build_mesh(args, world, device)
        torch.manual_seed(0)  # the same initial weights on every rank
        spec = open(args.spec).read() if args.spec else SPEC.replace("FFN", MOE_FFN if args.moe else DENSE_FFN)
        model = archlang.build(spec, disabled=TP_DISABLED if args.tp > 1 else ()).to(device)
        vocab = model.config["vocab"]
        names = mesh.mesh_dim_names
        pipeline = "pp" in names
        plan = shard(model, mesh, **({"microbatches": args.microbatches or args.pp, "schedule": args.schedule}
                                     if pipeline else {}))
        modules = plan.modules if pipeline else [model]
        params = [p for m in modules for p in m.parameters()]
        opt = torch.optim.AdamW(params, lr=args.lr)
        part, parts = batch_coordinate(mesh)
        gen = torch.Generator().manual_seed(1000)  # every rank draws the whole batch, then takes its part
        for step in range(args.steps):
            start = torch.randint(0, vocab, (args.batch, 1), generator=gen)
            ids = ((start + torch.arange(args.seq + 1)) % vocab).chunk(parts)[part].to(device)  # counting: learnable
            opt.zero_grad()
            if pipeline:
                losses: list[torch.Tensor] = []
                first, last = plan.stages[0].is_first, plan.stages[-1].is_last
                kwargs = {"target": ids[:, 1:], "losses": losses} if last else {}
                plan.schedule.step(*((ids[:, :-1],) if first else ()), **kwargs)
                loss = torch.stack(losses).mean() if losses else None
            elif "cp" in names:
                from archlang.context_parallel import context_parallel

                with context_parallel(model) as cp:  # each rank a part of every sequence
                    logits = model(cp.shard(ids[:, :-1]))
                    loss = F.cross_entropy(logits.flatten(0, 1), cp.shard(ids[:, 1:]).flatten())
                    loss.backward()
            else:
                logits = model(ids[:, :-1])
                loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()) + model.aux_loss
                loss.backward()
            opt.step()
            if step % 5 == 0 or step == args.steps - 1:
                # the mean over the ranks that hold a loss (pipelines: the last stage's)
                held = torch.tensor([loss.item() if loss is not None else 0.0, float(loss is not None)],
                                    device=device)
                dist.all_reduce(held)
                if rank == 0:
                    print(f"step {step:3d}  loss {(held[0] / held[1]).item():.4f}", flush=True)
        if args.checkpoint:
            import torch.distributed.checkpoint as dcp

            state = {k: v for m in modules for k, v in m.state_dict().items()}  # the model's own names
            dcp.save({"model": state}, checkpoint_id=args.checkpoint)
            if rank == 0:
                print(f"saved {args.checkpoint}")
    except (ArchError, ValueError) as err:  # a mesh this model cannot take: say why, on one rank, and exit 1
        if rank == 0:
            hint = getattr(err, "hint", None)
            print(f"error: {getattr(err, 'message', err)}" + (f"\n  hint: {hint}" if hint else ""), file=sys.stderr)
        dist.destroy_process_group()
        raise SystemExit(1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
