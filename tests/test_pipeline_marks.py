"""Pipeline stage marks (`layers = mamba | pattern("EAE", ...)`): they reach the IR and the built
module's config, define the stages pipeline_stages and apply_pipeline use, and change nothing else."""

import os
import re

import pytest
import torch
import torch.distributed as dist

from archlang.spec.errors import ArchError

from .conftest import SPECS
from .ranks import run_ranks
from .test_pipeline_parallel import SPAWN_TIMEOUT_S, _batch, _PPMesh

UNMARKED = (SPECS / "tiny_jamba.arch").read_text()
STACK = 'layers = pattern("MEAE", M = mamba, E = mamba_moe, A = attn)'
assert STACK in UNMARKED
# Cuts the cost balance would not choose (it cuts 2 stages at layer 2, 3 stages at layers 1 and 3).
TWO_STAGES = UNMARKED.replace(STACK, 'layers = mamba | pattern("EAE", E = mamba_moe, A = attn)')
THREE_STAGES = UNMARKED.replace(STACK, "layers = mamba + mamba_moe | attn | mamba_moe")


def _compiled(text: str):
    from archlang.api import compile_spec

    return compile_spec(text)


def _model(text: str):
    from archlang.api import load_source

    compiled = _compiled(text)
    torch.manual_seed(0)
    return load_source(compiled.source, compiled.model.name).build()


def test_marks_reach_the_ir_and_the_built_modules_config():
    compiled = _compiled(THREE_STAGES)
    assert compiled.model.stage_marks == (2, 3)
    assert compiled.lowered.graph["stage_marks"] == [2, 3] and compiled.graph.graph["stage_marks"] == [2, 3]
    assert _model(THREE_STAGES).config["stage_marks"] == [2, 3]
    assert "stage_marks" not in _model(UNMARKED).config  # an unmarked spec's module is as it was


def test_marks_change_nothing_but_the_config():
    from archlang.compiler import compute_facts

    plain, marked = _compiled(UNMARKED), _compiled(TWO_STAGES)
    assert compute_facts(plain.graph) == compute_facts(marked.graph)  # parameters, FLOPs, memory

    def without_marks(source: str) -> str:
        source = re.sub(r"# spec sha256: \w+", "", source)
        return source.replace("'stacks': {'layers': 4},\n 'stage_marks': [1]}", "'stacks': {'layers': 4}}")

    assert marked.source != plain.source
    assert without_marks(marked.source) == re.sub(r"# spec sha256: \w+", "", plain.source)
    a, b = _model(UNMARKED), _model(TWO_STAGES)
    ids = _batch()
    torch.testing.assert_close(b(ids), a(ids), atol=0, rtol=0)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_archc_diff_reports_a_change_of_marks_and_no_other():
    from archlang.compiler import compute_facts
    from archlang.compiler.diff import diff_models

    plain, two, three = _compiled(UNMARKED), _compiled(TWO_STAGES), _compiled(THREE_STAGES)
    d = diff_models(plain.model, two.model, compute_facts(plain.graph), compute_facts(two.graph))
    assert [str(c) for c in d.changes] == ["layers: pipeline stage marks none → 0 | 1–3"]
    assert all(before == after for before, after in d.facts.values())
    d = diff_models(two.model, three.model)
    assert [str(c) for c in d.changes if "marks" in c.what] == ["layers: pipeline stage marks 0 | 1–3 → 0–1 | 2 | 3"]


@pytest.mark.parametrize("text,n,ranges", [
    (TWO_STAGES, 2, [range(0, 1), range(1, 4)]),
    (THREE_STAGES, 3, [range(0, 2), range(2, 3), range(3, 4)]),
])
def test_pipeline_stages_are_the_marked_stages(text, n, ranges):
    from archlang.pipeline_parallel import pipeline_stages

    compiled = _compiled(text)
    assert pipeline_stages(_compiled(UNMARKED), n) != ranges  # the cost balance cuts elsewhere
    assert pipeline_stages(compiled, n) == ranges
    assert pipeline_stages(compiled.graph, n) == ranges
    assert pipeline_stages(_model(text), n) == ranges


def test_another_stage_count_is_refused_unless_marks_are_ignored():
    from archlang.pipeline_parallel import pipeline_stages

    compiled, model = _compiled(THREE_STAGES), _model(THREE_STAGES)
    for n in (2, 6):  # fewer, and a multiple (an interleaved schedule's): either would move a marked boundary
        for m in (compiled, model):
            with pytest.raises(ArchError, match=rf"the spec marks 3 pipeline stages with `\|` \(layers 0–1, 2–2, "
                               rf"3–3\), and {n} were asked for") as err:
                pipeline_stages(m, n)
            assert err.value.kind == "distributed" and "marks=False" in err.value.hint
    assert pipeline_stages(compiled, 2, marks=False) == pipeline_stages(_compiled(UNMARKED), 2)
    assert pipeline_stages(model, 2, marks=False) == pipeline_stages(_model(UNMARKED), 2)


def test_marks_a_module_config_does_not_fit_are_refused():
    from archlang.pipeline_parallel import pipeline_stages

    model = _model(TWO_STAGES)
    model.config = {**model.config, "stage_marks": [3, 9]}
    with pytest.raises(ArchError, match="do not cut the 4 layers"):
        pipeline_stages(model, 3)


def test_apply_pipeline_without_stages_uses_the_marks(monkeypatch):
    from archlang import pipeline_parallel as pp

    class Checked(Exception):
        pass

    seen = []

    def check(model, stages):  # everything after it needs a process group
        seen.append(stages)
        raise Checked

    monkeypatch.setattr(pp, "check_pipeline", check)
    with pytest.raises(Checked):
        pp.apply_pipeline(_model(TWO_STAGES), _PPMesh(2), microbatches=2, schedule="gpipe")
    with pytest.raises(Checked):
        pp.apply_pipeline(_model(UNMARKED), _PPMesh(2), microbatches=2, schedule="gpipe")
    assert seen == [[range(0, 1), range(1, 4)], [range(0, 2), range(2, 4)]]
    with pytest.raises(ArchError, match="marks 2 pipeline stages .* and 4 were asked for"):
        pp.apply_pipeline(_model(TWO_STAGES), _PPMesh(2), microbatches=2, schedule="interleaved")


# ----------------------------------------------------------------------------- two processes


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        from archlang.pipeline_parallel import apply_pipeline

        ids = _batch()
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("pp",))
        plan = apply_pipeline(_model(TWO_STAGES), mesh, microbatches=2, schedule="gpipe")  # stages from the marks
        losses: list[torch.Tensor] = []
        if rank == world - 1:
            plan.schedule.step(target=ids[:, 1:], losses=losses)
        else:
            plan.schedule.step(ids[:, :-1])
        grads = {name: p.grad for m in plan.modules for name, p in m.named_parameters()}
        torch.save({"grads": grads, "losses": losses, "layers": [(r.start, r.stop) for r in plan.layers]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_marked_pipeline_over_two_processes_matches_one_process(tmp_path):
    from archlang.pipeline_parallel import next_token_loss

    run_ranks(_worker, str(tmp_path), timeout_s=SPAWN_TIMEOUT_S, what="the pipeline")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["layers"] for r in ranks] == [[(0, 1)], [(1, 4)]]
    ids = _batch()
    model = _model(TWO_STAGES)
    loss = next_token_loss(model(ids[:, :-1]), ids[:, 1:])
    loss.backward()
    torch.testing.assert_close(torch.stack(ranks[1]["losses"]).mean(), loss.detach(), atol=1e-5, rtol=1e-5)
    grads = {**ranks[0]["grads"], **ranks[1]["grads"]}
    assert set(grads) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_an_ir_graph_is_cut_as_its_compiled_spec_is():
    from archlang.pipeline_parallel import layer_costs, pipeline_stages

    compiled = _compiled(UNMARKED)
    assert layer_costs(compiled.graph) == layer_costs(compiled)
    assert pipeline_stages(compiled.graph, 2) == pipeline_stages(compiled, 2)


def test_the_numerics_stand_in_drops_marks_that_index_the_full_stack():
    from archlang.compiler.tiny import stand_in

    short, origin = stand_in(_compiled(THREE_STAGES).model)
    assert origin["layers"] == (0, 1, 2) and short.stage_marks == ()  # the marks (2, 3) would point past it
