"""Pipeline parallelism: two CPU processes (gloo) each run one stage of a decoder under torch's
1F1B / GPipe / interleaved schedules, and get the loss and every gradient of one process; where
the stack is cut (balanced by the IR's costs); and what it refuses."""

import os

import pytest
import torch
import torch.distributed as dist

from .conftest import SPECS
from .ranks import run_ranks

SPAWN_TIMEOUT_S = 240

# A scale after the final norm, in features(): it must run on the last stage only.
LOGIT_SCALED = """
model logit_scaled {
    vocab = 97
    d_model = 32
    context = 64
    dtype = fp32
    position = rope(theta = 10000)
    logit_scale = 0.25
    final_norm = rmsnorm(eps = 1e-5)
    block layer {
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 48)
    }
    layers = layer * 3
}
"""


def _compiled(spec: str):
    from archlang.api import compile_spec

    return compile_spec(spec if "{" in spec else SPECS / spec)


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
    run_ranks(_worker, *args, timeout_s=SPAWN_TIMEOUT_S, what="the pipeline")


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
    # every weight lives on one stage, but a tied embedding (also the LM head) on the first and the
    # last, each copy with the whole tied gradient
    both = set(ranks[0]["grads"]) & set(ranks[1]["grads"])
    assert both == ({"embed.weight"} if model.config.get("tie_embeddings") else set())
    for name in both:
        torch.testing.assert_close(ranks[0]["grads"][name], ranks[1]["grads"][name], atol=1e-6, rtol=1e-5)
    assert set(grads) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert grads[name] is not None, name
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_two_stage_1f1b_matches_one_process(tmp_path):
    # tied embeddings: the last stage's LM head is a copy of the first stage's embedding matrix
    _check_against_one_process("tiny_gpt2.arch", "1F1B", 4, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("spec,schedule,microbatches", [
    ("tiny_llama.arch", "1F1B", 4),
    ("tiny_llama.arch", "gpipe", 2),
    ("tiny_jamba.arch", "1F1B", 2),  # SSM layers, MoE without auxiliary losses
    ("tiny_jamba.arch", "gpipe", 4),
    ("tiny_jamba.arch", "interleaved", 2),  # four stages, two per rank
])
def test_pipeline_schedules_match_one_process(spec, schedule, microbatches, tmp_path):
    _check_against_one_process(spec, schedule, microbatches, tmp_path)


# ----------------------------------------------------------------------------- without processes


@pytest.mark.parametrize("spec,training,ranges", [
    ("tiny_jamba.arch", True, None),
    ("tiny_exotic.arch", False, None),  # learned positions, added on the first stage only (MoE aux losses: inference)
    ("tiny_rwkv.arch", True, None),  # a norm of the embeddings, on the first stage only
    # a shared block with a LoRA adapter per use, every use on the second stage: each use keeps its index
    ("tiny_zamba2.arch", True, [range(0, 1), range(1, 6)]),
    pytest.param(LOGIT_SCALED, True, None, id="logit_scaled"),
])
def test_stage_modules_in_one_process_equal_the_model_and_share_its_weights(spec, training, ranges):
    from archlang.pipeline_parallel import PipelineStageModule, check_pipeline, pipeline_stages

    model = _model(spec).train(training)
    ranges = ranges or pipeline_stages(model, 3)
    if training:  # (tiny_exotic's auxiliary losses are refused for training)
        check_pipeline(model, ranges)
    n = len(ranges)
    modules = [PipelineStageModule(model, r, first=i == 0, last=i == n - 1).train(training)
               for i, r in enumerate(ranges)]
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


def test_the_cut_follows_the_costs_not_the_layer_count(monkeypatch):
    import archlang.pipeline_parallel as pp

    monkeypatch.setattr(pp, "layer_costs", lambda model: [(10, 1), (10, 1), (10, 1), (30, 1)])
    assert pp.pipeline_stages(None, 2) == [range(0, 3), range(3, 4)]  # 30 | 30, not 20 | 40
    monkeypatch.setattr(pp, "layer_costs", lambda model: [(10, 1), (0, 5), (0, 1), (10, 1)])
    assert pp.pipeline_stages(None, 2) == [range(0, 2), range(2, 4)]  # 10 FLOPs each way: 6 | 2 parameters


def test_a_built_module_is_cut_by_its_parameters():
    from archlang.pipeline_parallel import layer_costs, pipeline_stages

    model = _model("tiny_jamba.arch")
    costs = layer_costs(model)
    assert sum(p for _, p in costs) == sum(p.numel() for p in model.parameters())
    assert pipeline_stages(model, 2) == pipeline_stages(_compiled("tiny_jamba.arch"), 2)


def test_more_stages_than_layers_is_refused():
    from archlang.pipeline_parallel import pipeline_stages
    from archlang.spec.errors import ArchError

    with pytest.raises(ArchError, match="cannot cut 2 layers into 3 pipeline stages") as err:
        pipeline_stages(_compiled("tiny_llama.arch"), 3)
    assert err.value.kind == "distributed"


@pytest.mark.parametrize("spec,message", [
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
    layers = model.layers
    shared = layers[int(model.repeated_modules()[0].split(".")[1])]
    uses = [i for i, layer in enumerate(layers) if layer is shared]
    cut = uses[0] + 1  # the first use on stage 0, a later one on stage 1
    with pytest.raises(ArchError, match="shared block"):
        check_pipeline(model, [range(0, cut), range(cut, len(layers))])


@pytest.mark.parametrize("spec,message", [
    ("tiny_mixtral.arch", "auxiliary losses"),  # load balancing
    ("tiny_mod.arch", "auxiliary loss"),  # the depth router's predictor
])
def test_auxiliary_losses_are_refused(spec, message):
    from archlang.pipeline_parallel import check_pipeline
    from archlang.spec.errors import ArchError

    model = _model(spec)
    with pytest.raises(ArchError, match=message):
        check_pipeline(model, [range(0, 1), range(1, len(model.layers))])


ZAMBA2_HYBRID = """
model zamba2_hybrid {
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    position = rope()
    final_norm = rmsnorm()
    block m {
        norm = rmsnorm()
        ssm = mamba2(d_state = 8, heads = 4, head_dim = 16, chunk = 4)
    }
    block s {
        norm = rmsnorm()
        attention = mha(heads = 4)
        ffn = geglu(hidden = 48)
        shared = true
        hybrid = zamba2()
    }
    layers = [m, s, m, s, m]
}
"""


def test_layers_that_talk_through_the_context_are_refused():
    """zamba2's shared blocks read the stack's input, which only the first stage has, even when every
    use of them is on one stage."""
    from archlang.pipeline_parallel import check_pipeline
    from archlang.spec.errors import ArchError

    from archlang.api import compile_spec, load_source

    compiled = compile_spec(ZAMBA2_HYBRID)
    model = load_source(compiled.source, compiled.model.name).build()
    with pytest.raises(ArchError, match="through the context"):
        check_pipeline(model, [range(0, 1), range(1, 5)])


class _PPMesh:
    """Stands in for a 1-D "pp" device mesh: the checks run before any process group is needed."""

    device_type = "cpu"

    def __init__(self, size: int):
        self._size = size

    def size(self) -> int:
        return self._size


@pytest.mark.parametrize("kwargs,message", [
    (dict(microbatches=4, schedule="zero-bubble"), "unknown pipeline schedule"),
    (dict(microbatches=1, schedule="1F1B"), "needs at least 2 microbatches"),
    (dict(microbatches=0, schedule="gpipe"), "needs at least 1 microbatches"),
    (dict(microbatches=5, schedule="interleaved", stages=[range(0, 1), range(1, 2)] * 2), "do not divide"),
    (dict(microbatches=4, schedule="gpipe", stages_per_rank=2), "runs one stage per rank"),
    (dict(microbatches=4, schedule="interleaved"), "cannot cut 2 layers into 4 pipeline stages"),
    (dict(microbatches=4, stages=[range(0, 2)]), "1 layer ranges for 2 stages"),
    (dict(microbatches=4, stages=[range(0, 1), range(0, 2)]), "consecutive ranges"),
])
def test_bad_pipeline_requests_are_refused(kwargs, message):
    from archlang.pipeline_parallel import apply_pipeline
    from archlang.spec.errors import ArchError

    with pytest.raises(ArchError, match=message) as err:
        apply_pipeline(_model("tiny_llama.arch"), _PPMesh(2), **kwargs)
    assert err.value.kind == "distributed"
