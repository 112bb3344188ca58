"""Context parallelism: two CPU processes (gloo) each hold half of the sequence, attention runs as
ring attention, and the loss and every gradient match one process on the whole sequence."""

import os

import pytest
import torch
import torch.distributed as dist

from .conftest import SPECS
from .ranks import run_ranks

SPAWN_TIMEOUT_S = 240


def _model(spec: str, source: str | None = None):
    """A test spec by file name, or the model named `spec` of the spec text `source`; "+frozen" after
    the name freezes the embedding and the first layer but for its keys' projection."""
    import archlang

    spec, _, variant = spec.partition("+")
    torch.manual_seed(0)
    model = archlang.build((SPECS / spec).read_text()) if source is None else archlang.build(source, model=spec)
    _unit_gain(model)
    if variant == "frozen":
        for name, p in model.named_parameters():
            p.requires_grad_(name == "layers.0.ssm.k_proj" or not name.startswith(("embed.", "layers.0.")))
    return model


def _unit_gain(model) -> None:
    """Redraw the weights of the recurrent and convolutional mixers with unit gain (std 1/sqrt(fan-in)):
    drawn at std 0.02, a Mamba-2 layer's output is about 1e-8, and a state or conv window lost between
    the shards would change the loss by less than the tolerance."""
    from archlang.context_parallel import _HANDED_OVER

    for module in model.modules():
        if type(module).__name__ in _HANDED_OVER:
            for p in module.parameters():
                if p.dim() >= 2:  # projections (out, in) and depthwise convs (channels, 1, taps)
                    torch.nn.init.normal_(p.data, std=p.shape[-1] ** -0.5)


def _linear_attention_spec() -> str:
    """tiny_exotic (differential, causal linear, multi-query attention) with an MLP for its MoE."""
    text = (SPECS / "tiny_exotic.arch").read_text()
    mlp = "ffn = mlp(hidden = 16, act = relu)\n    }"
    return text.split("ffn = moe(")[0] + mlp + text.split("z_loss = 0.001)\n    }")[1]


def _without_moe(spec: str) -> str:
    """A test spec with each MoE feed-forward replaced by a SwiGLU (MoE's routing statistics are refused)."""
    import re

    return re.sub(r"ffn = moe\((?:[^()]|\([^()]*\))*\)", "ffn = swiglu(hidden = 48)", (SPECS / spec).read_text())


def _ids(length: int = 16) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 97, (2, length + 1))


def _worker(rank: int, world: int, port: int, cases: list, out_dir: str, fsdp: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        from archlang.context_parallel import context_parallel

        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("cp",))
        results = {}
        for spec, source, load_balance in cases:
            model, ids = _model(spec, source), _ids()
            if fsdp:  # as torchtitan folds the cp ranks into FSDP's: its reduction averages over them
                from torch.distributed.fsdp import fully_shard

                for block in model.layers:
                    fully_shard(block, mesh=mesh)
                fully_shard(model, mesh=mesh)
            with context_parallel(model, mesh, load_balance=load_balance) as cp:
                inputs, labels = cp.shard(ids[:, :-1]), cp.shard(ids[:, 1:])
                logits = model(inputs)
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
                loss.backward()
                if not fsdp:
                    cp.average_gradients(model)
            total = loss.detach().clone()
            dist.all_reduce(total)
            grads = {n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                     for n, p in model.named_parameters()}
            results[(spec, load_balance)] = {"loss": total / world, "grads": grads}
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "result.pt"))
    finally:
        dist.destroy_process_group()


def _run_ranks(cases, tmp_path, fsdp: bool = False, world: int = 2):
    run_ranks(_worker, cases, str(tmp_path), fsdp, world=world, timeout_s=SPAWN_TIMEOUT_S,
              what="the context-parallel ranks")
    return torch.load(tmp_path / "result.pt")


def _check_against_one_process(cases, results):
    for spec, source, load_balance in cases:
        model, ids = _model(spec, source), _ids()
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        got = results[(spec, load_balance)]
        torch.testing.assert_close(got["loss"], loss.detach(), atol=1e-5, rtol=1e-5)
        for name, p in model.named_parameters():
            torch.testing.assert_close(got["grads"][name], p.grad, atol=1e-5, rtol=1e-4, msg=f"{spec}: {name}")


def test_two_ranks_match_one_process_attention_linear_attention_and_mamba2(tmp_path):
    # Llama (causal, RoPE) in contiguous shards; Gemma 2 (window 5 beside full layers, soft-capping)
    # in the zig-zag order, where a shard's positions are not contiguous; causal linear attention
    # (its state handed from the first shard to the second) beside differential attention; Mamba-2
    # around attention (each shard's convs read the previous shard's last inputs, its SSD scans
    # start from the previous shard's end states, and their gradients go back).
    cases = [("tiny_llama.arch", None, False), ("tiny_gemma2.arch", None, True),
             ("tiny_exotic", _linear_attention_spec(), False), ("tiny_mamba2.arch", None, False)]
    _check_against_one_process(cases, _run_ranks(cases, tmp_path))


@pytest.mark.slow
def test_two_ranks_match_one_process_gated_linear_and_short_conv(tmp_path):
    # Gated DeltaNet (its short conv beside the delta rule), GLA and retention, LFM2's short conv,
    # Mamba (Jamba's experts left out) and Kimi Delta Attention (its experts left out), each beside attention
    cases = [("tiny_gated_deltanet.arch", None, False), ("tiny_gla_retention.arch", None, False),
             ("tiny_lfm2.arch", None, False), ("tiny_jamba", _without_moe("tiny_jamba.arch"), False),
             ("tiny_kimi_linear", _without_moe("tiny_kimi_linear.arch"), False)]
    _check_against_one_process(cases, _run_ranks(cases, tmp_path))


@pytest.mark.slow
def test_four_ranks_match_one_process(tmp_path):
    # the middle ranks receive a state and send one on, in forward and in backward; shards of
    # 4 tokens hold the 3 conv inputs the next shard reads
    cases = [("tiny_mamba2.arch", None, False), ("tiny_gated_deltanet.arch", None, False)]
    _check_against_one_process(cases, _run_ranks(cases, tmp_path, world=4))


@pytest.mark.slow
def test_two_ranks_with_frozen_weights_match_one_process(tmp_path):
    # The first layer's queries need no gradient and its keys do: the first shard's end state
    # still gets its gradient from the second shard (nothing waits for a gradient never sent)
    cases = [("tiny_gla_retention.arch+frozen", None, False)]
    _check_against_one_process(cases, _run_ranks(cases, tmp_path))


@pytest.mark.slow
def test_two_ranks_match_one_process_modern_attention(tmp_path):
    # sinks and sink tokens beside a window; qk-norms, Llama 4's chunks and temperature tuning;
    # the other order of the fast test's models; every other test model that is accepted
    text = (SPECS / "tiny_modern_attention.arch").read_text()
    qk_norm = text.split("# gpt-oss")[0]
    sinks = text.split("model tiny_longrope")[0].replace("scaling = dynamic(factor = 2, original_context = 16)", "")
    sinks = sinks.replace("model tiny_qk_norm", "model tiny_qk_norm_base").replace("extends tiny_qk_norm",
                                                                                 "extends tiny_qk_norm_base")
    positions = (SPECS / "tiny_positions.arch").read_text()
    cases = [("tiny_qk_norm", qk_norm, True), ("tiny_sinks", sinks, False), ("tiny_llama.arch", None, True),
             ("tiny_gemma2.arch", None, False), ("tiny_gpt2.arch", None, True),  # learned positions, LayerNorm
             *((name, positions, False) for name in ("tiny_sinusoidal", "tiny_rope_linear", "tiny_rope_llama3",
                                                     "tiny_rope_ntk")),
             # multi-head latent attention with YaRN, its MoE blocks left out
             ("tiny_deepseek", (SPECS / "tiny_deepseek.arch").read_text().replace("dense + sparse * 2", "dense * 2"),
              True)]
    _check_against_one_process(cases, _run_ranks(cases, tmp_path))


@pytest.mark.slow
def test_two_ranks_under_fsdp_match_one_process(tmp_path):
    cases = [("tiny_llama.arch", None, True), ("tiny_exotic", _linear_attention_spec(), False),
             ("tiny_mamba2.arch", None, False)]
    _check_against_one_process(cases, _run_ranks(cases, tmp_path, fsdp=True))


class _Mesh:
    """Stands in for a 1-D "cp" device mesh: the checks run before any process group is needed."""

    def get_group(self):
        return None

    def size(self) -> int:
        return 2

    def get_local_rank(self) -> int:
        return 0


@pytest.mark.parametrize("spec,layer", [
    ("tiny_rwkv7.arch", "RWKV7TimeMix"),
    ("tiny_xlstm.arch", "MLSTMLayer"),
    ("tiny_rglru.arch", "RGLRU"),
    ("tiny_s4d.arch", "S4D"),
    ("tiny_lightning.arch", "Lightning"),
    ("tiny_mixtral.arch", "MoE"),
    ("tiny_sparse.arch", "LightningIndexer"),
    ("tiny_mod.arch", "DepthRouter"),
])
def test_refuses_layers_it_cannot_split(spec, layer):
    from archlang.context_parallel import context_parallel
    from archlang.spec.errors import ArchError

    model = _model(spec)
    with pytest.raises(ArchError, match=f"cannot split the sequence through .*\\({layer}\\)") as err:
        with context_parallel(model, _Mesh()):
            pass
    assert err.value.kind == "distributed"
    assert "make_context" not in vars(model)  # refused before anything was swapped in


def test_refuses_linear_attention_in_zig_zag_order():
    from archlang.context_parallel import check_context_parallel
    from archlang.spec.errors import ArchError

    model = _model("tiny_exotic", _linear_attention_spec())
    check_context_parallel(model)  # in order, the state passes from shard to shard
    with pytest.raises(ArchError, match=r"\(LinearAttention\): its state passes .* not in order"):
        check_context_parallel(model, load_balance=True)


@pytest.mark.parametrize("spec,layer", [
    ("tiny_mamba2.arch", "Mamba2"), ("tiny_gated_deltanet.arch", "GatedDeltaNetLayer"),
    ("tiny_gla_retention.arch", "GLALayer"), ("tiny_lfm2.arch", "ShortConv"),
    ("tiny_jamba", "Mamba"), ("tiny_kimi_linear", "KDALayer"),
])
def test_refuses_recurrent_and_conv_mixers_in_zig_zag_order(spec, layer):
    from archlang.context_parallel import check_context_parallel
    from archlang.spec.errors import ArchError

    model = _model(spec, None if spec.endswith(".arch") else _without_moe(f"{spec}.arch"))
    check_context_parallel(model)  # in order, the conv inputs and the state pass from shard to shard
    with pytest.raises(ArchError, match=f"\\({layer}\\): its conv inputs or state pass .* not in order") as err:
        check_context_parallel(model, load_balance=True)
    assert err.value.kind == "distributed"


def test_refuses_shards_shorter_than_a_conv_window():
    from archlang.context_parallel import ContextParallel
    from archlang.spec.errors import ArchError

    # a conv of 4 taps reads the previous shard's last 3 inputs, which a shard of 2 tokens does not hold
    with pytest.raises(ArchError, match="last 3 inputs, and this rank's shard holds 2 tokens"):
        ContextParallel(_Mesh(), False).conv_history(torch.zeros(1, 8, 2), 3)


@pytest.mark.parametrize("spec", ["tiny_bert.arch", "tiny_t5.arch", "tiny_modernbert.arch"])
def test_refuses_encoders(spec):
    from archlang.context_parallel import check_context_parallel
    from archlang.spec.errors import ArchError

    # BERT's pooler reads the first token, which only the first rank holds
    with pytest.raises(ArchError, match="decoder models only"):
        check_context_parallel(_model(spec))


def test_refuses_length_dependent_rope_scaling():
    from archlang.context_parallel import check_context_parallel
    from archlang.spec.errors import ArchError

    text = (SPECS / "tiny_modern_attention.arch").read_text().split("model tiny_longrope")[0]
    with pytest.raises(ArchError, match="dynamic RoPE scaling"):
        check_context_parallel(_model("tiny_sinks", text))


def test_refuses_alibi_padding_masks_and_caches():
    import archlang.runtime as rt
    from archlang.context_parallel import ContextParallel, context_parallel
    from archlang.spec.errors import ArchError

    alibi = _model("tiny_llama", (SPECS / "tiny_llama.arch").read_text().replace("rope(theta = 10000)", "alibi()"))
    with pytest.raises(ArchError, match=r"alibi_slopes \(AlibiSlopes\)"):
        with context_parallel(alibi, _Mesh()):
            pass
    q, pos = torch.randn(1, 2, 4, 8), torch.arange(4)
    with pytest.raises(ArchError, match="position biases"):  # a bias reaching the ring however it came
        ContextParallel(_Mesh(), False).attention(q, q, q, pos, pos, causal=True, scale=1.0,
                                                  bias=torch.zeros(2, 4, 4))
    model = _model("tiny_llama.arch")
    ids = _ids()[:, :8]
    with context_parallel(model, _Mesh()):
        with pytest.raises(ArchError, match="padding mask"):
            model(ids, attention_mask=torch.ones_like(ids))
        with pytest.raises(ArchError, match="a cache"):
            model(ids, cache=rt.Cache())
    with pytest.raises(ArchError, match="into 4 equal shards"):
        with context_parallel(model, _Mesh(), load_balance=True) as cp:
            cp.shard(_ids(length=10))
    assert rt.attention.attend.__name__ == "attention"  # the ring was swapped out again


def test_shard_positions_cover_the_sequence_once():
    from archlang.context_parallel import shard_positions

    for world in (1, 2, 4):
        for load_balance in (False, True):
            held = torch.cat([shard_positions(16, world, r, load_balance=load_balance) for r in range(world)])
            assert sorted(held.tolist()) == list(range(16))
    assert shard_positions(16, 4, 1, load_balance=True).tolist() == [2, 3, 12, 13]


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_hand_off_recomputed_by_activation_checkpointing_is_refused(reentrant):
    """A state hand-off sends and waits once per step in rank order; activation checkpointing would
    run it again inside the backward, where the neighbour is not waiting: refused there."""
    from torch.utils.checkpoint import checkpoint

    from archlang.context_parallel import _not_recomputed
    from archlang.spec.errors import ArchError

    def layer(x):
        _not_recomputed("send a shard's state on")  # what both hand-off Functions check first
        return (x * x).sin().sum()

    x = torch.ones(3, requires_grad=True)
    layer(x).backward()  # a plain forward and backward: no recomputation, nothing refused
    loss = checkpoint(layer, x, use_reentrant=reentrant)
    with pytest.raises(ArchError, match="activation checkpointing"):
        loss.backward()
