"""Scale-out: two CPU processes (gloo) run one training step of a sharded model — FSDP2, and
tensor parallelism from the IR-derived plan — and get the loss and gradients of one process."""

import os

import pytest
import torch
import torch.distributed as dist

from .conftest import SPECS
from .ranks import run_ranks

# No q/k/v or gate/up fusion, so attention heads and FFN units can be split across ranks.
TP_PASSES = "fold-rope,fuse-add-norm,share-constants,dce"


def _model(spec: str, passes: str):
    from archlang.api import compile_spec, load_source

    torch.manual_seed(0)
    compiled = compile_spec(SPECS / spec, passes=passes)
    return load_source(compiled.source, compiled.model.name).build()


def _loss(model, ids):
    logits = model(ids[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def _worker(rank: int, world: int, port: int, mode: str, spec: str, passes: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        from archlang.distributed import full_state_dict, shard

        torch.manual_seed(1)
        ids = torch.randint(0, 97, (4, 12))
        model = _model(spec, passes)
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=(mode,))
        shard(model, mesh)
        if mode == "dp":  # each rank takes half of the batch; FSDP averages the gradients
            loss = _loss(model, ids.chunk(world)[rank])
        else:
            loss = _loss(model, ids)
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        grads = {}
        for name, p in model.named_parameters():
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[name] = g
        weights = full_state_dict(model)
        sharded = sum(1 for p in model.parameters() if hasattr(p, "placements") and any(pl.is_shard() for pl in p.placements))
        whole = sorted(name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                       and not any(pl.is_shard() for pl in getattr(m.weight, "placements", ())))
        if rank == 0:  # every rank saw the same loss (tp) or half the batch (dp): the mean is the full loss
            torch.save({"loss": total / world, "grads": grads, "weights": weights, "sharded": sharded, "whole": whole},
                       os.path.join(out_dir, "result.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode,spec,passes", [
    ("dp", "tiny_llama.arch", None),
    ("dp", "tiny_jamba.arch", None),
    ("dp", "tiny_shared.arch", None),  # one shared block at three places: sharded once
    ("tp", "tiny_llama.arch", TP_PASSES),
    ("tp", "tiny_gpt2.arch", TP_PASSES),
])
def test_two_process_step_matches_one_process(mode, spec, passes, tmp_path):
    from archlang.compiler import DEFAULT_PIPELINE

    passes = passes or DEFAULT_PIPELINE
    run_ranks(_worker, mode, spec, passes, str(tmp_path), what="the sharded ranks")
    result = torch.load(tmp_path / "result.pt")

    torch.manual_seed(1)
    ids = torch.randint(0, 97, (4, 12))
    model = _model(spec, passes)
    loss = _loss(model, ids)
    loss.backward()
    torch.testing.assert_close(result["loss"], loss.detach(), atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(result["grads"][name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert result["sharded"] > 0  # the step really ran on sharded parameters
    if mode == "tp":  # and what tensor parallelism left whole, it said it would
        from archlang.distributed import tensor_parallel_layout

        assert result["whole"] == sorted(tensor_parallel_layout(model, 2)[1])
    for name, w in model.state_dict().items():
        torch.testing.assert_close(result["weights"][name], w)  # and they gather back to the full tensors


class _TPMesh:
    """Stands in for a 1-D "tp" device mesh: the checks run before any process group is needed."""

    mesh_dim_names = ("tp",)

    def __init__(self, size: int):
        self._size = size

    def size(self) -> int:
        return self._size


@pytest.mark.parametrize("spec", ["tiny_llama.arch", "tiny_gpt2.arch", "tiny_jamba.arch"])
def test_tensor_parallelism_refuses_fused_projections(spec):
    from archlang.compiler import DEFAULT_PIPELINE
    from archlang.distributed import shard
    from archlang.spec.errors import ArchError

    with pytest.raises(ArchError) as err:
        shard(_model(spec, DEFAULT_PIPELINE), _TPMesh(2))
    assert "qkv_proj" in err.value.message or "gate_up_proj" in err.value.message
    assert "fuse-qkv" in err.value.hint


@pytest.mark.parametrize("spec", ["tiny_llama.arch", "tiny_gpt2.arch", "tiny_jamba.arch", "tiny_mixtral.arch",
                                  "tiny_deepseek.arch"])
def test_every_linear_is_planned_or_listed_as_replicated(spec):
    from archlang.distributed import tensor_parallel_layout

    model = _model(spec, TP_PASSES)
    plan, replicated = tensor_parallel_layout(model, 2)
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert not set(plan) & set(replicated)
    assert set(plan) | set(replicated) == linears
    assert all(replicated.values())  # each with its reason


def test_tensor_parallelism_refuses_widths_that_do_not_split():
    from archlang.distributed import shard
    from archlang.spec.errors import ArchError

    with pytest.raises(ArchError, match="over 3 ranks"):
        shard(_model("tiny_llama.arch", TP_PASSES), _TPMesh(3))


def test_tensor_parallelism_refuses_to_shard_nothing():
    import archlang
    from archlang.distributed import shard
    from archlang.spec.errors import ArchError

    # ALiBi attention and MoE experts have no tensor-parallel role: nothing here can be split.
    spec = (SPECS / "tiny_mixtral.arch").read_text().replace("rope(theta = 1e6)", "alibi()")
    model = archlang.build(spec, passes=TP_PASSES)
    with pytest.raises(ArchError, match="shard nothing"):
        shard(model, _TPMesh(2))
