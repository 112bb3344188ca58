"""Expert parallelism: two CPU processes (gloo), each feeding its own half of the batch, hold half
of every MoE layer's experts and exchange rows with all-to-alls; the mean of their losses and
their averaged gradients must be those of one process on the whole batch. Likewise with FSDP2
sharding everything but the experts over the same two ranks."""

import os

import pytest
import torch
import torch.distributed as dist

from .conftest import SPECS
from .ranks import run_ranks

SPAWN_TIMEOUT_S = 240


def _model(spec: str, name: str | None):
    import archlang

    torch.manual_seed(0)
    return archlang.build(SPECS / spec, model=name)


def _batch():
    torch.manual_seed(1)
    return torch.randint(0, 97, (4, 12)), torch.randint(0, 3, (4,))


def _loss(model, ids, labels):
    out = model(ids[:, :-1])
    if out.dim() == 2:  # a classifier: one prediction per sequence
        return torch.nn.functional.cross_entropy(out.float(), labels)
    return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]).float(), ids[:, 1:].reshape(-1))


def _worker(rank: int, world: int, port: int, cases: list, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor

        from archlang.distributed import full_state_dict
        from archlang.expert_parallel import apply_expert_parallel, average_gradients, expert_load, shard_with_experts
        from archlang.spec.errors import ArchError

        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
        results = {}
        for spec, name, train, fsdp in cases:
            ids, labels = _batch()
            model = _model(spec, name).train(train)
            if fsdp:  # FSDP2 reduces the gradients itself
                shard_with_experts(model, mesh)
            else:
                apply_expert_parallel(model, mesh)
            loss = _loss(model, ids.chunk(world)[rank], labels.chunk(world)[rank])
            loss.backward()
            if not fsdp:
                average_gradients(model, mesh)
            total = loss.detach().clone()
            dist.all_reduce(total)
            grads = {n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                     for n, p in model.named_parameters()}
            local_experts = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()
                             if n.rpartition(".")[2].startswith("experts_")}
            try:  # a second application meets DTensor parameters: refused, not stacked
                apply_expert_parallel(model, mesh)
                again = None
            except ArchError as err:
                again = err.message
            results[(spec, name, fsdp)] = {"loss": total / world, "grads": grads, "weights": full_state_dict(model),
                                     "load": expert_load(model), "local": local_experts, "again": again,
                                     "rank0_experts": {n: m.ep_load.clone() for n, m in model.named_modules()
                                                       if hasattr(m, "ep_load")},
                                     "buffers": {n: b.clone() for n, b in model.named_buffers()}}
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "result.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(cases, out_dir):
    run_ranks(_worker, cases, str(out_dir), timeout_s=SPAWN_TIMEOUT_S, what="the expert-parallel ranks")
    return torch.load(out_dir / "result.pt")


def _rows_per_expert(model):
    """Record, in one process, how many rows each expert of each MoE layer gets in a forward."""
    from archlang.runtime.moe import MoE

    seen = {}

    def record(name):
        def dispatch(moe, xs, expert_of, counts):
            seen[name] = counts.clone()
            return moe.expert_ffn(xs, expert_of, counts, {n: getattr(moe, n) for n in moe.expert_weight_names()})
        return dispatch

    for name, module in model.named_modules():
        if isinstance(module, MoE):
            module.expert_dispatch = record(name)
    return seen


def _check_against_one_process(cases, results):
    for spec, name, train, fsdp in cases:
        got = results[(spec, name, fsdp)]
        ids, labels = _batch()
        model = _model(spec, name).train(train)
        seen = _rows_per_expert(model)
        loss = _loss(model, ids, labels)
        loss.backward()
        torch.testing.assert_close(got["loss"], loss.detach(), atol=1e-5, rtol=1e-5)
        for n, p in model.named_parameters():
            torch.testing.assert_close(got["grads"][n], p.grad, atol=1e-5, rtol=1e-5, msg=f"{spec} {n}")
        for n, w in model.state_dict().items():
            torch.testing.assert_close(got["weights"][n], w, msg=f"{spec} {n}")  # gathered back whole
        for n, b in model.named_buffers():  # e.g. the correction bias, moved by the whole batch's load
            torch.testing.assert_close(got["buffers"][n], b, msg=f"{spec} {n}")
        # each rank held half of each layer's experts, and received the rows routed to them
        assert got["local"] and all(shape[0] == dict(model.named_parameters())[n].shape[0] // 2
                                    for n, shape in got["local"].items())
        assert set(got["load"]) == set(seen)
        for layer, counts in seen.items():
            assert got["load"][layer].tolist() == counts.reshape(2, -1).sum(dim=1).tolist(), layer
            assert got["rank0_experts"][layer].tolist() == counts.reshape(2, -1)[0].tolist(), layer
        assert "already sharded" in got["again"]


def test_two_process_expert_parallel_step_matches_one_process(tmp_path):
    # top-k softmax routing without shared experts; sigmoid routing with a shared expert after a
    # dense layer, with FSDP2 sharding all but the experts
    cases = [("tiny_mixtral.arch", None, True, False), ("tiny_deepseek.arch", None, True, True)]
    _check_against_one_process(cases, _spawn(cases, tmp_path))


@pytest.mark.slow
def test_two_process_expert_parallel_other_routers(tmp_path):
    cases = [("tiny_moe_routing.arch", None, True, False),  # groups, correction bias and its update, biased experts
             ("tiny_encoder_heads.arch", "tiny_hash_moe", True, False),  # hash routing: per token, by its id
             ("tiny_encoder_heads.arch", "tiny_classifier", False, False),  # expert choice: per sequence (no dropout)
             ("tiny_mixtral.arch", None, True, True),
             ("tiny_deepseek.arch", None, True, False)]
    _check_against_one_process(cases, _spawn(cases, tmp_path))


class _Mesh:
    """Stands in for a device mesh: the checks run before any process group is needed."""

    def __init__(self, size: int, names=("ep",)):
        self._size, self.mesh_dim_names = size, names

    def size(self) -> int:
        return self._size


def _refusal(spec: str, mesh, name: str | None = None, text: str | None = None):
    import archlang
    from archlang.expert_parallel import apply_expert_parallel
    from archlang.spec.errors import ArchError

    model = archlang.build(text, model=name) if text else _model(spec, name)
    with pytest.raises(ArchError) as err:
        apply_expert_parallel(model, mesh)
    assert err.value.kind == "distributed"
    return err.value


def test_refuses_experts_that_do_not_split_evenly():
    err = _refusal("tiny_mixtral.arch", _Mesh(3))
    assert "4 experts" in err.message and "over 3 ranks" in err.message


def test_refuses_a_mesh_with_other_dimensions_and_points_to_shard():
    err = _refusal("tiny_mixtral.arch", _Mesh(2, ("ep", "tp")))
    assert "'tp'" in err.message and "shard(model, mesh)" in err.hint


def test_refuses_a_model_without_experts():
    assert "no MoE layer" in _refusal("tiny_llama.arch", _Mesh(2)).message


def test_refuses_capacity_factor():
    text = (SPECS / "tiny_mixtral.arch").read_text().replace("z_loss = 0.001", "z_loss = 0.001, capacity_factor = 1.5")
    assert "capacity_factor" in _refusal("", _Mesh(2), text=text).message
