"""Train a compiled model with FSDP2 (and, on a 2-D mesh, tensor parallelism) — tiny and on the
CPU here; the same script runs on GPUs across machines with torchrun.

    torchrun --nproc-per-node 2 examples/train_fsdp.py            # FSDP2 over 2 processes
    torchrun --nproc-per-node 4 examples/train_fsdp.py --tp 2     # 2-way FSDP x 2-way TP
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

import archlang
from archlang.distributed import shard

SPEC = """
model tiny {
    vocab = 256
    d_model = 64
    context = 128
    dtype = fp32
    position = rope(theta = 10000)
    final_norm = rmsnorm(eps = 1e-5)
    block layer {
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 4 * d_model)
    }
    layers = layer * 2
}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.manual_seed(0)  # the same initial weights on every rank
    # Tensor parallelism splits heads and hidden units, so keep q/k/v and gate/up unfused
    # (shard() refuses fused projections).
    disabled = ("fuse-qkv", "fuse-gate-up") if args.tp > 1 else ()
    model = archlang.build(SPEC, disabled=disabled).to(device)
    dp = world // args.tp
    mesh = init_device_mesh(device, (dp, args.tp), mesh_dim_names=("dp", "tp")) if args.tp > 1 else \
        init_device_mesh(device, (world,), mesh_dim_names=("dp",))
    shard(model, mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1000 + (rank // args.tp))  # tp ranks share their batch
    for step in range(args.steps):
        start = torch.randint(0, 256, (8, 1), generator=gen)
        ids = ((start + torch.arange(33)) % 256).to(device)  # counting sequences: learnable
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and step % 5 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
