"""Pipeline parallelism: two CPU processes (gloo) each run one stage of a decoder under torch's
1F1B / GPipe / interleaved schedules, and get the loss and every gradient of one process; where
the stack is cut (balanced by the IR's costs); and what it refuses."""

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .conftest import SPECS

SPAWN_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compiled(spec: str):
    from archlang.api import compile_spec

    return compile_spec(SPECS / spec)


def _model(spec: str):
    from archlang.api import load_source

    compiled = _compiled(spec)
    torch.manual_seed(0)
    return load_source(compiled.source, compiled.model.name).build()


def _batch() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 97, (4, 12))


def _worker(rank: int, world: int, port: int, spec: str, schedule: str, microbatches: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        from archlang.pipeline_parallel import apply_pipeline, pipeline_stages

        ids = _batch()
        model = _model(spec)
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("pp",))
        per_rank = 2 if schedule == "interleaved" else 1
        stages = pipeline_stages(_compiled(spec), world * per_rank)
        plan = apply_pipeline(model, mesh, microbatches=microbatches, schedule=schedule, stages=stages)
        inputs, targets = ids[:, :-1], ids[:, 1:]
        losses: list[torch.Tensor] = []
        args = (inputs,) if rank == 0 else ()
        if rank == world - 1:
            plan.schedule.step(*args, target=targets, losses=losses)
        else:
            plan.schedule.step(*args)
        grads = {name: p.grad for m in plan.modules for name, p in m.named_parameters()}
        torch.save({"grads": grads, "losses": losses, "layers": [(r.start, r.stop) for r in plan.layers]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(*args) -> None:
    """Two processes, bounded in time: a hang fails the test instead of blocking the suite."""
    context = mp.spawn(_worker, args=(2, _free_port(), *args), nprocs=2, join=False)
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for p in context.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail(f"the pipeline did not finish in {SPAWN_TIMEOUT_S} s")


def _check_against_one_process(spec: str, schedule: str, microbatches: int, out_dir) -> None:
    _spawn(spec, schedule, microbatches, str(out_dir))
    ranks = [torch.load(out_dir / f"rank{r}.pt") for r in range(2)]

    ids = _batch()
    model = _model(spec)
    from archlang.pipeline_parallel import next_token_loss

    loss = next_token_loss(model(ids[:, :-1]), ids[:, 1:])
    loss.backward()
    # the last rank holds one loss per microbatch; their mean is the whole batch's mean
    assert len(ranks[1]["losses"]) == microbatches
    torch.testing.assert_close(torch.stack(ranks[1]["losses"]).mean(), loss.detach(), atol=1e-5, rtol=1e-5)
    grads = {**ranks[0]["grads"], **ranks[1]["grads"]}
    assert not set(ranks[0]["grads"]) & set(ranks[1]["grads"])  # every weight lives on one stage
    assert set(grads) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert grads[name] is not None, name
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_two_stage_1f1b_matches_one_process(tmp_path):
    _check_against_one_process("tiny_llama.arch", "1F1B", 4, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("spec,schedule,microbatches", [
    ("tiny_llama.arch", "gpipe", 2),
    ("tiny_jamba.arch", "1F1B", 2),  # SSM layers, MoE without auxiliary losses
    ("tiny_jamba.arch", "gpipe", 4),
    ("tiny_jamba.arch", "interleaved", 2),  # four stages, two per rank
])
def test_pipeline_schedules_match_one_process(spec, schedule, microbatches, tmp_path):
    _check_against_one_process(spec, schedule, microbatches, tmp_path)


# ----------------------------------------------------------------------------- without processes


def test_stage_modules_in_one_process_equal_the_model_and_share_its_weights():
    from archlang.pipeline_parallel import PipelineStageModule, pipeline_stages

    model = _model("tiny_jamba.arch")
    ranges = pipeline_stages(_compiled("tiny_jamba.arch"), 3)
    modules = [PipelineStageModule(model, r, first=i == 0, last=i == 2) for i, r in enumerate(ranges)]
    ids = _batch()
    x = ids
    for m in modules:
        x = m(x)
    torch.testing.assert_close(x, model(ids), atol=0, rtol=0)
    own = {id(p) for p in model.parameters()}
    names = [name for m in modules for name, _ in m.named_parameters()]
    assert sorted(names) == sorted(name for name, _ in model.named_parameters())  # the model's names, once each
    assert all(id(p) in own for m in modules for p in m.parameters())  # its tensors, not copies


def _brute_force_cut(costs, n_stages):
    """The least costliest stage over every way to cut the layers into n_stages ranges."""
    from itertools import combinations

    best = None
    for cuts in combinations(range(1, len(costs)), n_stages - 1):
        bounds = (0, *cuts, len(costs))
        worst = max(tuple(map(sum, zip(*costs[a:b]))) for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None or worst < best else best
    return best


@pytest.mark.parametrize("spec,n_stages", [("tiny_jamba.arch", 2), ("tiny_jamba.arch", 3), ("tiny_shared.arch", 2),
                                           ("tiny_mixtral.arch", 2)])
def test_the_cut_balances_flops_then_parameters(spec, n_stages):
    from archlang.compiler.facts import compute_facts
    from archlang.pipeline_parallel import layer_costs, pipeline_stages

    compiled = _compiled(spec)
    costs = layer_costs(compiled)
    facts = compute_facts(compiled.graph)
    assert sum(f for f, _ in costs) == facts.flops_per_token  # every FLOP of the model is on some stage
    assert sum(p for _, p in costs) == facts.params_total
    ranges = pipeline_stages(compiled, n_stages)
    assert [i for r in ranges for i in r] == list(range(len(costs)))
    assert all(len(r) for r in ranges)
    worst = max(tuple(map(sum, zip(*costs[r.start:r.stop]))) for r in ranges)
    assert worst == _brute_force_cut(costs, n_stages)


def test_the_cut_follows_the_costs_not_the_layer_count():
    from archlang.pipeline_parallel import pipeline_stages

    class Graphless:  # stands in for a compiled spec: costs per layer given directly
        pass

    import archlang.pipeline_parallel as pp

    costs = [(10, 1), (10, 1), (10, 1), (30, 1)]
    original = pp.layer_costs
    pp.layer_costs = lambda model: costs
    try:
        assert pipeline_stages(Graphless(), 2) == [range(0, 3), range(3, 4)]
    finally:
        pp.layer_costs = original


def test_more_stages_than_layers_is_refused():
    from archlang.pipeline_parallel import pipeline_stages
    from archlang.spec.errors import ArchError

    with pytest.raises(ArchError, match="cannot cut 2 layers into 3 pipeline stages") as err:
        pipeline_stages(_compiled("tiny_llama.arch"), 3)
    assert err.value.kind == "distributed"


@pytest.mark.parametrize("spec,message", [
    ("tiny_gpt2.arch", "tied embeddings"),
    ("tiny_mtp.arch", "multi-token prediction"),
    ("tiny_t5.arch", "decoders with one layer stack"),
])
def test_what_cannot_be_split_exactly_is_refused(spec, message):
    from archlang.pipeline_parallel import check_pipeline
    from archlang.spec.errors import ArchError

    model = _model(spec)
    n = len(model.layers) if hasattr(model, "layers") else 2
    with pytest.raises(ArchError, match=message) as err:
        check_pipeline(model, [range(0, 1), range(1, n)])
    assert err.value.kind == "distributed"


def test_a_shared_block_on_two_stages_is_refused():
    from archlang.pipeline_parallel import check_pipeline
    from archlang.spec.errors import ArchError

    model = _model("tiny_shared.arch")
    first, again = model.repeated_modules()[0].split(".")[:2], None
    layers = model.layers
    uses = [i for i, layer in enumerate(layers) if layer is layers[int(first[1])]]
    cut = uses[0] + 1  # the first use on stage 0, a later one on stage 1
    with pytest.raises(ArchError, match="shared block"):
        check_pipeline(model, [range(0, cut), range(cut, len(layers))])


def test_auxiliary_losses_are_refused():
    from archlang.pipeline_parallel import check_pipeline
    from archlang.spec.errors import ArchError

    model = _model("tiny_mixtral.arch")
    moe = next(m for m in model.modules() if hasattr(m, "aux_coef"))
    moe.aux_coef = 0.01
    with pytest.raises(ArchError, match="auxiliary losses"):
        check_pipeline(model, [range(0, 1), range(1, len(model.layers))])
