"""`archc estimate --advise`: the layouts enumerated (their products, the runtime's refusals),
the advice's sanity (more memory never drops a layout, a small model trains data-parallel, a large
one is sharded, the ranking follows the step times it states), the JSON it prints and the
command's exit codes. Assertions are on properties of the advice, never on a chosen answer."""

import ast
import json
import math
import subprocess
import sys
from dataclasses import replace
from math import comb

import pytest

from archlang.api import compile_spec
from archlang.cli import main
from archlang.estimate import HARDWARE, Setup, estimate
from archlang.estimate.advise import DIMS, TP_UNFUSED, advise, layouts, meta_model
from archlang.spec import ArchError

from .conftest import EXAMPLES, ROOT, SPECS

H100 = HARDWARE["h100"]
EVERY = 10**6  # a `top` that keeps every layout that runs and fits

DENSE = """
model dense {
    vocab = 96
    d_model = 48
    context = 96
    dtype = bf16
    position = rope(theta = 10000)
    final_norm = rmsnorm()
    block layer {
        norm = rmsnorm()
        attention = gqa(heads = 6, kv_heads = 2)
        ffn = swiglu(hidden = 36)
    }
    layers = layer * 3
}
"""

MOE = """
model sparse {
    vocab = 96
    d_model = 48
    context = 96
    dtype = bf16
    position = rope(theta = 10000)
    final_norm = rmsnorm()
    block layer {
        norm = rmsnorm()
        attention = gqa(heads = 4, kv_heads = 4)
        ffn = moe(experts = 6, top_k = 2, expert = swiglu(hidden = 24), aux_loss = 0.01)
    }
    layers = layer * 2
}
"""


def _advise(spec, gpus, **kw):
    compiled = compile_spec(spec, disabled=TP_UNFUSED)
    return advise(compiled.graph, meta_model(compiled), hardware=kw.pop("hardware", H100), gpus=gpus,
                  top=kw.pop("top", EVERY), **kw)


def _count_factorisations(n: int, k: int) -> int:
    """Ordered k-tuples of positive integers with product n: per prime power p^e, C(e + k - 1, k - 1)."""
    total, p = 1, 2
    while n > 1:
        e = 0
        while n % p == 0:
            n //= p
            e += 1
        total *= comb(e + k - 1, k - 1)
        p += 1
    return total


@pytest.mark.parametrize("gpus", [1, 6, 12, 64])
def test_layouts_are_every_mesh_whose_sizes_multiply_to_the_devices(gpus):
    found = layouts(gpus)
    assert all(math.prod(getattr(lay, d) for d in DIMS) == gpus for lay in found)
    assert len(set(found)) == len(found) == _count_factorisations(gpus, len(DIMS))


@pytest.mark.parametrize("gpus", [0, -4])
def test_a_device_count_below_one_is_refused(gpus):
    with pytest.raises(ArchError) as err:
        layouts(gpus)
    assert err.value.kind == "usage" and "--gpus" in err.value.message
    with pytest.raises(ArchError):
        _advise(DENSE, gpus)


def test_every_kept_layout_divides_what_it_splits():
    advice = _advise(DENSE, 12)
    assert advice.layouts and advice.feasible == len(advice.layouts)
    for c in advice.layouts:
        lay = c.layout
        assert 6 % lay.tp == 0 and 2 % lay.tp == 0 and 36 % lay.tp == 0  # heads, kv_heads, FFN width
        assert lay.ep == 1  # no experts to split
        assert lay.pp <= 3
        assert 96 % lay.cp == 0
    dropped = {r.message for r in advice.rejected}
    assert any("tensor parallelism cannot split" in m for m in dropped)
    assert any("no MoE layer" in m for m in dropped)
    assert any("pipeline stages" in m for m in dropped)  # pp=4, 6 or 12 over 3 layers
    # each rejected family counts its layouts once, and with the kept ones they are all there were
    assert advice.feasible + sum(r.count for r in advice.rejected) == advice.considered == len(layouts(12))


def test_multi_token_prediction_keeps_pipelines_out():
    assert any(c.layout.pp > 1 for c in _advise(DENSE, 4).layouts)
    advice = _advise(SPECS / "tiny_mtp.arch", 4)
    assert advice.layouts and all(c.layout.pp == 1 for c in advice.layouts)
    assert any("multi-token prediction" in r.message for r in advice.rejected)


def test_experts_split_over_ep_and_moe_refuses_context_and_pipeline_parallelism():
    advice = _advise(MOE, 12)
    assert any(c.layout.ep > 1 for c in advice.layouts)
    for c in advice.layouts:
        assert 6 % c.layout.ep == 0
        assert c.layout.cp == 1  # routing statistics span one forward
        assert c.layout.pp == 1  # the auxiliary loss would be lost on its stage
    messages = " ".join(r.message for r in advice.rejected)
    assert "context parallelism cannot split" in messages and "pipeline parallelism cannot split" in messages
    assert "experts" in messages  # ep = 4 or 12 do not divide 6
    capped = _advise(SPECS / "tiny_exotic.arch", 2)  # capacity_factor: what is dropped depends on the split
    assert all(c.layout.ep == 1 for c in capped.layouts)
    assert any("capacity_factor" in r.message for r in capped.rejected)


@pytest.mark.parametrize("spec", ["tiny_rwkv.arch", "tiny_bert.arch"])
def test_models_context_parallelism_refuses_get_no_cp(spec):
    advice = _advise(SPECS / spec, 4)
    assert advice.layouts and all(c.layout.cp == 1 for c in advice.layouts)
    assert any("context parallelism" in r.message for r in advice.rejected)


def test_a_sequence_that_does_not_split_gets_no_cp():
    advice = _advise(DENSE, 8, seq=90)  # 90 tokens: no 8 or 16 equal shards
    assert all(90 % (2 * c.layout.cp) == 0 or 90 % c.layout.cp == 0 for c in advice.layouts)
    assert not any(c.layout.cp in (4, 8) for c in advice.layouts)


def test_more_memory_per_device_never_drops_a_layout():
    spec = EXAMPLES / "gpt2.arch"
    kept = []
    for gb in (4, 8, 16, 80):
        advice = _advise(spec, 8, hardware=replace(H100, memory_bytes=gb * 1e9), seq=1024, batch=4)
        kept.append({c.layout for c in advice.layouts})
        assert all(c.memory_bytes <= gb * 1e9 for c in advice.layouts)
    assert all(a <= b for a, b in zip(kept, kept[1:]))
    assert kept[0] < kept[-1]  # the smallest memory did drop some


@pytest.mark.parametrize("spec,dim", [(DENSE, "pp"), (MOE, "ep")], ids=["dense", "moe"])
def test_the_ranking_follows_the_stated_step_times(spec, dim):
    advice = _advise(spec, 8)
    assert any(getattr(c.layout, dim) > 1 for c in advice.layouts)  # the formulas below are exercised
    steps = [c.step_seconds for c in advice.layouts]
    assert steps == sorted(steps)
    for c in advice.layouts:
        s = c.seconds
        assert c.step_seconds == pytest.approx(max(s["compute"] + s["bubble"], s["dp"])
                                               + s["tp"] + s["cp"] + s["ep"] + s["pp"])
        assert c.tokens_per_second == pytest.approx(advice.global_batch * advice.seq / c.step_seconds)
        dp = c.layout.dp_replicate * c.layout.dp_shard * c.layout.ep
        if c.layout.pp > 1:  # 1F1B: (p - 1) / (m + p - 1) of the pipelined time, m = sequences per pipeline
            m = advice.global_batch // dp
            assert c.microbatches == m
            p = c.layout.pp
            assert s["bubble"] / (s["compute"] + s["bubble"]) == pytest.approx((p - 1) / (m + p - 1))
        for dim in ("tp", "cp", "ep", "pp"):
            assert (s[dim] > 0) == (getattr(c.layout, dim) > 1)
    assert advice.why.startswith(advice.layouts[0].layout.label)


def test_a_small_model_trains_data_parallel():
    for gpus in (2, 8):
        best = _advise(EXAMPLES / "gpt2.arch", gpus, seq=1024).layouts[0].layout
        assert best.tp == best.pp == best.cp == best.ep == 1
        assert best.dp_replicate * best.dp_shard == gpus


@pytest.fixture(scope="module")
def llama_advice():
    return _advise(EXAMPLES / "llama3_8b.arch", 8, seq=2048)


def test_a_model_too_large_for_one_device_is_sharded(llama_advice):
    g = compile_spec(EXAMPLES / "llama3_8b.arch").graph
    assert not estimate(g, Setup(H100, seq=2048)).training["fits"]  # the premise: one device cannot train it
    assert llama_advice.layouts
    for c in llama_advice.layouts:  # every layout kept splits the weights: none replicates them whole
        lay = c.layout
        assert lay.dp_shard * lay.ep * lay.cp * lay.tp * lay.pp > 1  # FSDP2 shards over dp_shard, ep and cp
    assert any("more than the 80 GB" in r.message for r in llama_advice.rejected)


def test_the_code_builds_the_best_mesh(llama_advice):
    best = llama_advice.layouts[0].layout
    tree = ast.parse(llama_advice.code)
    calls = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr: n for n in ast.walk(tree)
             if isinstance(n, ast.Call)}
    mesh = calls["init_device_mesh"]
    sizes = ast.literal_eval(mesh.args[1])
    names = ast.literal_eval(next(k.value for k in mesh.keywords if k.arg == "mesh_dim_names"))
    assert dict(zip(names, sizes)) == best.mesh
    assert "shard" in calls
    assert ("disabled" in llama_advice.code) == (best.tp > 1)


def test_hardware_without_interconnect_figures_is_refused():
    bare = replace(H100, node_size=None, intra_node_bandwidth=None, inter_node_bandwidth=None)
    with pytest.raises(ArchError, match="interconnect"):
        _advise(SPECS / "tiny_llama.arch", 2, hardware=bare)


def test_hardware_files_give_all_three_interconnect_figures_or_none(tmp_path):
    from archlang.estimate import load_hardware_file

    base = 'memory_gb = 8\nbandwidth_tb_s = 1\ntflops = { bf16 = 100 }\n'
    f = tmp_path / "hw.toml"
    f.write_text(f"[hardware.x]\n{base}node_size = 4\nintra_node_gb_s = 100\ninter_node_gb_s = 10\n")
    hw = load_hardware_file(f)["x"]
    assert (hw.node_size, hw.intra_node_bandwidth, hw.inter_node_bandwidth) == (4, 100e9, 10e9)
    f.write_text(f"[hardware.x]\n{base}node_size = 4\n")
    with pytest.raises(ArchError, match="intra_node_gb_s"):
        load_hardware_file(f)
    f.write_text(f"[hardware.x]\n{base}node_size = 0\nintra_node_gb_s = 100\ninter_node_gb_s = 10\n")
    with pytest.raises(ArchError, match="node_size"):
        load_hardware_file(f)


def test_every_built_in_accelerator_names_its_interconnect_source():
    for hw in HARDWARE.values():
        assert hw.node_size and hw.intra_node_bandwidth and hw.inter_node_bandwidth and hw.interconnect_source


# ----------------------------------------------------------------------------- the command


def test_json_schema(capsys):
    assert main(["estimate", str(SPECS / "tiny_mixtral.arch"), "--gpus", "8", "--advise", "--json", "--top", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"model", "hardware", "gpus", "seq", "global_batch", "dtype", "considered", "feasible", "layouts",
            "rejected", "why", "code", "assumptions"} <= set(data)
    assert 0 < len(data["layouts"]) <= 3 and data["feasible"] >= len(data["layouts"])
    for lay in data["layouts"]:
        assert math.prod(lay["mesh"].values()) == 8 and set(lay["mesh"]) <= set(DIMS)
        assert {"memory_bytes", "step_seconds", "tokens_per_second", "seconds", "memory", "label"} <= set(lay)
        assert lay["memory_bytes"] == pytest.approx(sum(lay["memory"].values()))
    for r in data["rejected"]:
        assert {"reason", "count", "example", "message"} <= set(r) and r["count"] >= 1
    assert data["feasible"] + sum(r["count"] for r in data["rejected"]) == data["considered"]


def test_table_exit_0(capsys):
    assert main(["estimate", str(SPECS / "tiny_llama.arch"), "--gpus", "4", "--advise"]) == 0
    out = capsys.readouterr().out
    assert "training layouts of 4 x h100" in out and "why:" in out and "init_device_mesh(" in out
    assert "shard(model, mesh)" in out and "dropped:" in out


@pytest.mark.parametrize("args,words", [
    (["--gpus", "0"], "--gpus must be at least 1"),
    (["--gpus", "-8"], "--gpus must be at least 1"),
    (["--gpus", "4", "--tp", "2"], "--advise chooses the layout itself"),
    (["--gpus", "4", "--fsdp"], "drop --fsdp"),
    (["--gpus", "4", "--global-batch", "0"], "--global-batch must be at least 1"),
    (["--gpus", "4", "--top", "0"], "--top must be at least 1"),
])
def test_bad_options_exit_2(capsys, args, words):
    assert main(["estimate", str(SPECS / "tiny_llama.arch"), "--advise", *args]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--global-batch", "--top"])
def test_advice_options_need_advise(capsys, option):
    assert main(["estimate", str(SPECS / "tiny_llama.arch"), option, "8"]) == 2
    assert f"{option} is for --advise" in capsys.readouterr().err


def test_nothing_fits_exits_1(tmp_path, capsys):
    f = tmp_path / "hw.toml"
    f.write_text('[hardware.tiny]\nmemory_gb = 0.000001\nbandwidth_tb_s = 1\ntflops = { bf16 = 100, fp32 = 50 }\n'
                 'node_size = 8\nintra_node_gb_s = 100\ninter_node_gb_s = 10\n')
    spec = str(SPECS / "tiny_llama.arch")
    assert main(["estimate", spec, "--gpus", "2", "--advise", "--hardware-file", str(f), "--hardware", "tiny"]) == 1
    captured = capsys.readouterr()
    assert "no layout of 2 x tiny" in captured.err and "more than the" in captured.out
    args = ["estimate", spec, "--gpus", "2", "--advise", "--hardware-file", str(f), "--hardware", "tiny", "--json"]
    assert main(args) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["layouts"] == [] and data["feasible"] == 0 and data["code"] == ""
    assert sum(r["count"] for r in data["rejected"]) == data["considered"]


def test_the_real_command_prints_no_traceback():
    r = subprocess.run([sys.executable, "-m", "archlang", "estimate", str(SPECS / "tiny_llama.arch"), "--advise",
                        "--gpus", "-1"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--gpus" in r.stderr


def test_tensor_parallel_activations_match_korthikanti_without_sequence_parallelism():
    # Table 2, "tensor parallel (baseline)": sbh(10 + 24/t + 5as/(ht)) bytes per GPT layer in
    # 16-bit, the runtime's tensor parallelism having no sequence parallelism
    from archlang.estimate.activations import saved_activations, tensor_parallel_split

    from .estimate.test_estimate import GPT

    h, a, s = 256, 8, 128
    g = compile_spec(GPT.format(h=h, a=a, s=s, ffn=4 * h), disabled=TP_UNFUSED).graph
    split = tensor_parallel_split(g)
    for t in (1, 2, 4, 8):
        per_token = saved_activations(g, seq=s, nbytes=2, keep_probabilities=True, split=split, ways=t)
        assert per_token.by_layer[("layers", 2)] == 10 * h + 24 * h / t + 5 * a * s / t


def test_tensor_parallelism_repeats_what_it_leaves_replicated():
    # the runtime's tensor parallelism splits attention and dense FFNs, not MoE experts or the LM
    # head: every tp rank computes those whole, so tp costs a MoE model more compute than a dense one
    from archlang.estimate.advise import Layout

    def compute_ratio(spec):
        kept = {c.layout: c for c in _advise(spec, 4).layouts}
        return kept[Layout(dp_replicate=2, tp=2)].seconds["compute"] / kept[Layout(dp_replicate=4)].seconds["compute"]

    dense, sparse = compute_ratio(DENSE), compute_ratio(MOE)
    assert 1 < dense < sparse < 2


def test_the_global_batch_splits_into_micro_batches_on_every_data_parallel_rank():
    advice = _advise(DENSE, 4, global_batch=6)
    assert advice.global_batch == 6 and advice.layouts
    for c in advice.layouts:
        dp = c.layout.data_parallel
        assert 6 % dp == 0 and c.microbatches == 6 // dp >= c.layout.pp
    assert any("does not split into micro-batches" in r.message for r in advice.rejected)  # dp = 4
    few = _advise(DENSE, 4, global_batch=2)
    assert all(c.layout.pp <= c.microbatches for c in few.layouts)
    assert any("needs at least" in r.message for r in few.rejected)  # pp = 4 over 2 micro-batches


def test_activations_follow_the_micro_batch_not_the_layout():
    # one micro-batch of `batch` sequences is in flight on every layout (1F1B's first stage holds p
    # micro-batches of 1/p of the layers): its saved tensors depend on tp and cp alone
    advice = _advise(DENSE, 8, batch=2)
    by_split: dict = {}
    for c in advice.layouts:
        by_split.setdefault((c.layout.tp, c.layout.cp), set()).add(round(c.memory["activations"], 3))
    assert len(by_split) > 2 and all(len(v) == 1 for v in by_split.values())
    one = {k: v.pop() for k, v in by_split.items()}
    assert one[(1, 2)] == pytest.approx(one[(1, 1)] / 2)  # each cp rank keeps its shard's
    assert one[(1, 1)] / 2 < one[(2, 1)] < one[(1, 1)]  # tp splits some of them, not the residual stream


def test_attention_dropout_gets_no_cp():
    # context_parallel refuses it at the first training forward: the advice must not offer it
    from .estimate.test_estimate import GPT

    with_dropout = GPT.format(h=64, a=4, s=64, ffn=128)
    without = with_dropout.replace("    attention_dropout = 0.1\n", "")
    assert any(c.layout.cp > 1 for c in _advise(without, 4).layouts)
    advice = _advise(with_dropout, 4)
    assert all(c.layout.cp == 1 for c in advice.layouts)
    assert any("attention with dropout" in r.message for r in advice.rejected)



def test_the_code_of_every_layout_parses_and_passes_what_shard_needs():
    from archlang.estimate.advise import _code

    advice = _advise(DENSE, 8)
    seen = set()
    for c in advice.layouts:
        code = _code(c, "dense.arch", H100, load_balance=True)
        tree = ast.parse(code)
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
        shard = next(n for n in calls if n.func.id == "shard")
        keywords = {k.arg: ast.literal_eval(k.value) for k in shard.keywords}
        if c.layout.pp > 1:  # shard() needs the pipeline's micro-batches
            assert keywords["microbatches"] == c.microbatches >= c.layout.pp
            seen.add("pp")
        else:
            assert "microbatches" not in keywords
        if c.layout.cp > 1:
            assert "from archlang.context_parallel import context_parallel" in code
            seen.add("cp")
    assert seen == {"pp", "cp"}


def _hybrid(layers: str) -> str:
    return f"""
model hybrid {{
    vocab = 97
    d_model = 32
    context = 64
    dtype = fp32
    final_norm = rmsnorm(eps = 1e-5)
    block m {{
        norm = rmsnorm(eps = 1e-5)
        ssm = mamba2(d_state = 8, heads = 8, chunk = 8)
    }}
    block a {{
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 48)
    }}
    layers = {layers}
}}
"""


def test_context_parallel_state_hand_offs_cost_one_layer_per_run_and_rank():
    """Each run of layers that hand state from shard to shard makes the last cp rank wait one mean
    layer per extra rank; attention ends a run (every rank waits for the ring there)."""
    from archlang.compiler.facts import DTYPE_BYTES
    from archlang.compiler.ops import FactsContext
    from archlang.estimate.advise import _handoff_delay

    def delay(layers):
        g = compile_spec(_hybrid(layers)).graph
        return _handoff_delay(g, FactsContext(context=64, nbytes=DTYPE_BYTES["fp32"]))

    one_run, two_runs = delay("m * 4"), delay("m * 2 + a + m * 2")
    assert one_run > 0 and delay("a * 2") == 0
    assert two_runs == pytest.approx(2 * one_run)  # the same layers, cut into two runs by attention
    assert delay("m + a + m + a + m + a + m") == pytest.approx(4 * one_run)
    # and the advice pays for it: the same hybrid on 2 devices, data parallel beats cp = 2 by more
    # than the compute of the layers that wait
    advice = _advise(_hybrid("m * 4"), 2)
    steps = {c.layout.cp: c for c in advice.layouts if c.layout.dp_shard * c.layout.cp == 2}
    assert steps[2].seconds["compute"] > steps[1].seconds["compute"]
