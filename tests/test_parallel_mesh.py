"""shard(model, mesh) applies every dimension of a multi-dimensional mesh at once: four CPU
processes (gloo) train one step on a 2x2 mesh (or 2x1x2), each combination of dp_replicate, dp_shard, tp,
ep, cp and pp, and the mean loss and every gradient must be those of one process on the whole
batch (to 1e-5). The data-parallel ranks (dp_replicate, dp_shard, ep) each take their own part
of the batch, the cp ranks their part of each sequence, tp and pp ranks the same data."""

import contextlib
import os

import pytest
import torch
import torch.distributed as dist

from .conftest import SPECS
from .ranks import free_port, run_ranks

SPAWN_TIMEOUT_S = 300
WORLD = 4
# No q/k/v or gate/up fusion, so attention heads and FFN units can be split across ranks.
TP_PASSES = "fold-rope,fuse-add-norm,share-constants,dce"
DATA_DIMS = ("dp_replicate", "dp_shard", "dp", "ep")


def _model(spec: str, passes: str | None):
    import archlang

    torch.manual_seed(0)
    return archlang.build((SPECS / spec).read_text(), **({"passes": passes} if passes else {}))


def _batch() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 97, (8, 13))


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def _my_rows(mesh, names) -> torch.Tensor:
    """The sequences this rank trains on: the batch cut over its data-parallel coordinates."""
    ids, index, parts = _batch(), 0, 1
    for name in names:
        if name in DATA_DIMS:
            size = mesh.size(names.index(name))
            index, parts = index * size + mesh.get_local_rank(name), parts * size
    return ids.chunk(parts)[index]


def _step(model, mesh, names):
    """One training step on this rank's data; its loss (None on a pipeline stage that has none)."""
    from archlang.context_parallel import context_parallel
    from archlang.distributed import shard

    rows = _my_rows(mesh, names)
    if "pp" in names:
        plan = shard(model, mesh, microbatches=2)
        first, last = plan.stages[0].is_first, plan.stages[-1].is_last
        losses: list[torch.Tensor] = []
        with contextlib.ExitStack() as stack:
            inputs, targets = rows[:, :-1], rows[:, 1:]
            if "cp" in names:  # each stage runs its part of the sequence
                cp = stack.enter_context(context_parallel(model))
                inputs, targets = cp.shard(inputs), cp.shard(targets)
            args = (inputs,) if first else ()
            if last:
                plan.schedule.step(*args, target=targets, losses=losses)
            else:
                plan.schedule.step(*args)
        return plan.modules, (torch.stack(losses).mean() if losses else None)
    shard(model, mesh)
    if "cp" in names:
        with context_parallel(model) as cp:  # the cp mesh shard() applied
            loss = _loss(model(cp.shard(rows[:, :-1])), cp.shard(rows[:, 1:]))
            loss.backward()
    else:
        loss = _loss(model(rows[:, :-1]), rows[:, 1:])
        loss.backward()
    return [model], loss.detach()


def _worker(rank: int, world: int, port: int, cases: list, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor

        results = {}
        for names, spec, passes in cases:
            shape = (2,) * len(names) if world == 2 ** len(names) else (2, 1, 2)
            mesh = init_device_mesh("cpu", shape, mesh_dim_names=names)
            model = _model(spec, passes)
            modules, loss = _step(model, mesh, names)
            grads = {n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                     for m in modules for n, p in m.named_parameters()}
            sharded = sorted(n for m in modules for n, p in m.named_parameters() if isinstance(p, DTensor))
            # the mean loss over the ranks that hold one (every data and cp rank, or the last stages)
            held = torch.tensor([0.0 if loss is None else loss.item(), 0.0 if loss is None else 1.0],
                                dtype=torch.float64)
            dist.all_reduce(held)
            # the share of each expert weight this rank holds
            experts = {n: p.to_local().numel() / p.numel() for m in modules for n, p in m.named_parameters()
                       if n.rpartition(".")[2].startswith("experts_")}
            results[(names, spec)] = {"loss": held[0] / held[1], "grads": grads, "sharded": sharded,
                                      "experts": experts}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(cases, out_dir, world: int = WORLD) -> list[dict]:
    run_ranks(_worker, cases, str(out_dir), world=world, timeout_s=SPAWN_TIMEOUT_S, what=f"the {world} ranks")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]


def _check(cases, ranks) -> None:
    for names, spec, passes in cases:
        model = _model(spec, passes)
        ids = _batch()
        loss = _loss(model(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        expected = dict(model.named_parameters())
        seen: set[str] = set()
        for rank, results in enumerate(ranks):
            got = results[(names, spec)]
            torch.testing.assert_close(got["loss"].float(), loss.detach(), atol=1e-5, rtol=1e-5,
                                       msg=f"{names} {spec}")
            assert got["sharded"], f"{names} {spec}: nothing was sharded on rank {rank}"
            for n, g in got["grads"].items():
                torch.testing.assert_close(g, expected[n].grad, atol=1e-5, rtol=1e-4, msg=f"{names} {spec} {n}")
                seen.add(n)
        assert seen == set(expected), f"{names} {spec}: no rank held {sorted(set(expected) - seen)}"
        if "ep" in names:  # split over ep, and sharded by FSDP2 over the ranks holding the same ones
            holders = 2 if "dp_shard" in names and (len(names) == 2 or len(ranks) == 8) else 1  # 2x1x2: one
            shares = {share for results in ranks for share in results[(names, spec)]["experts"].values()}
            assert shares == {1 / (2 * holders)}, (names, shares)


FAST = [
    (("dp", "tp"), "tiny_llama.arch", TP_PASSES),
    (("dp_shard", "ep"), "tiny_mixtral.arch", None),  # experts split over ep, FSDP2 over all four
    (("pp", "dp_shard"), "tiny_llama.arch", None),  # FSDP2 inside each pipeline stage
]
SLOW = [
    (("dp_replicate", "dp_shard"), "tiny_llama.arch", None),  # HSDP
    (("dp_shard", "cp"), "tiny_llama.arch", None),  # FSDP2 averages over the sequence shards too
    (("dp_replicate", "ep"), "tiny_deepseek.arch", None),  # experts replicated over dp_replicate
    (("ep", "tp"), "tiny_mixtral.arch", TP_PASSES),
    (("cp", "tp"), "tiny_llama.arch", TP_PASSES),
    (("pp", "tp"), "tiny_llama.arch", TP_PASSES),
    (("pp", "cp"), "tiny_llama.arch", None),  # ring attention inside each stage
    (("pp", "dp_shard"), "tiny_gpt2.arch", None),  # tied embeddings: FSDP2 shards of both copies
    (("pp", "dp_replicate"), "tiny_jamba.arch", None),  # DDP inside each stage of a hybrid
    (("dp_replicate", "tp"), "tiny_gpt2.arch", TP_PASSES),
    # HSDP over two sharded dimensions (flattened into one), the middle one of a single rank
    (("dp_replicate", "dp_shard", "ep"), "tiny_mixtral.arch", None),
]


def test_two_dimensional_meshes_match_one_process(tmp_path):
    _check(FAST, _spawn(FAST, tmp_path))


@pytest.mark.slow
def test_more_two_dimensional_meshes_match_one_process(tmp_path):
    _check(SLOW, _spawn(SLOW, tmp_path))


@pytest.mark.slow
def test_a_three_dimensional_mesh_matches_one_process(tmp_path):
    """Eight processes, 2x2x2: HSDP over dp_replicate with the dense weights sharded over dp_shard
    and ep together, the experts split over ep and sharded over dp_shard."""
    cases = [(("dp_replicate", "dp_shard", "ep"), "tiny_mixtral.arch", None)]
    _check(cases, _spawn(cases, tmp_path, world=8))


class _Mesh:
    """Stands in for a device mesh: the checks run before any process group is needed."""

    def __init__(self, *names: str):
        self.mesh_dim_names = names

    def size(self, dim: int | None = None) -> int:
        return 2

    def __getitem__(self, name: str) -> "_Mesh":
        return _Mesh(name)


@pytest.mark.parametrize("names, message", [
    (("dp", "sp"), "unknown mesh dimension 'sp'"),
    (("dp", "dp_shard"), "which are one dimension"),
    (("pp", "dp"), "microbatches"),
])
def test_meshes_shard_cannot_apply_are_refused(names, message):
    from archlang.distributed import shard
    from archlang.spec.errors import ArchError

    with pytest.raises(ArchError) as err:
        shard(_model("tiny_llama.arch", TP_PASSES), _Mesh(*names))
    assert message in err.value.message + (err.value.hint or "")


def test_microbatches_without_a_pipeline_are_refused():
    from archlang.distributed import shard
    from archlang.spec.errors import ArchError

    with pytest.raises(ArchError, match="no pp dimension"):
        shard(_model("tiny_llama.arch", TP_PASSES), _Mesh("dp"), microbatches=4)


@pytest.mark.slow
def test_the_training_script_takes_its_mesh_from_the_command_line(tmp_path):
    """examples/train_fsdp.py under torchrun: two processes, pipeline x data parallel from flags;
    the loss falls and a sharded checkpoint is written. A mesh that does not fit the processes is
    an error on one line and exit 1."""
    import subprocess
    import sys

    from .conftest import EXAMPLES

    def run(*flags):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                   str(free_port()), str(EXAMPLES / "train_fsdp.py"), *flags]
        return subprocess.run(command, capture_output=True, text=True, timeout=SPAWN_TIMEOUT_S,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    done = run("--pp", "2", "--steps", "12", "--checkpoint", str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stderr[-2000:]
    losses = [float(line.split()[-1]) for line in done.stdout.splitlines() if line.startswith("step")]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    assert (tmp_path / "ckpt" / ".metadata").exists()
    refused = run("--tp", "3", "--steps", "1")
    assert refused.returncode != 0
    assert "error: the other degrees make 3 ranks, which do not divide the 2 processes" in refused.stderr


def test_a_refused_mesh_leaves_the_model_as_it_was():
    """Every dimension is checked before any is applied: here expert parallelism could split the
    experts, but tensor parallelism refuses the fused projections, so nothing is split."""
    from archlang.distributed import shard
    from archlang.spec.errors import ArchError

    model = _model("tiny_mixtral.arch", None)  # the default passes fuse q/k/v
    before = {n: p for n, p in model.named_parameters()}
    with pytest.raises(ArchError, match="qkv_proj"):
        shard(model, _Mesh("ep", "tp"))
    assert {n: p for n, p in model.named_parameters()} == before
    assert not any(hasattr(m, "ep_group") for m in model.modules())
