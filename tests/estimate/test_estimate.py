"""`archc estimate` against published figures and independent formulas: the KV cache of
Llama-3-8B at 128k tokens, 16 bytes per parameter for mixed-precision AdamW, the activation
formulas of Korthikanti et al. (2022) for a GPT layer with and without selective recomputation
and with tensor (sequence) parallelism, 6ND training FLOPs, and decoding as weights over bandwidth."""

import json
import os
import subprocess
import sys

import pytest

from archlang.api import compile_spec
from archlang.compiler import compute_facts
from archlang.estimate import HARDWARE, Setup, estimate, load_hardware_file
from archlang.estimate.activations import saved_activations
from archlang.spec import ArchError

from ..conftest import EXAMPLES, ROOT

H100 = HARDWARE["h100"]


@pytest.fixture(scope="module")
def llama():
    return compile_spec(EXAMPLES / "llama3_8b.arch").graph


def test_llama3_8b_kv_cache_at_128k_is_16_gib(llama):
    # 32 layers x (k, v) x 8 kv heads x 128 x 2 bytes x 131,072 tokens: the published 16 GiB
    e = estimate(llama, Setup(H100, seq=131072))
    assert e.inference["cache_bytes"] == 32 * 2 * 8 * 128 * 2 * 131072 == 16 * 2**30


def test_mixed_precision_adamw_is_16_bytes_per_parameter():
    g = compile_spec(EXAMPLES / "mistral_7b.arch").graph
    n = compute_facts(g).params_total
    t = estimate(g, Setup(H100)).training
    assert t["weights_bytes"] + t["gradients_bytes"] + t["optimizer_bytes"] == 16 * n
    sharded = estimate(g, Setup(H100, gpus=8, fsdp=True)).training
    assert sharded["weights_bytes"] + sharded["gradients_bytes"] + sharded["optimizer_bytes"] == 16 * n / 8
    fp32 = estimate(g, Setup(H100, dtype="fp32")).training  # no master copy: 4 + 4 + 8
    assert fp32["weights_bytes"] + fp32["gradients_bytes"] + fp32["optimizer_bytes"] == 16 * n


GPT = """
model gpt {{
    vocab = 1024
    d_model = {h}
    context = {s}
    dtype = bf16
    position = learned()
    attention_dropout = 0.1
    residual_dropout = 0.1
    final_norm = layernorm()
    block layer {{
        norm = layernorm()
        attention = mha(heads = {a}, bias = true, out_bias = true)
        ffn = mlp(hidden = {ffn}, act = gelu)
    }}
    layers = layer * 4
}}
"""


@pytest.mark.parametrize("passes", [None, ""], ids=["optimized", "lowered"])
@pytest.mark.parametrize("h,a,s", [(256, 8, 128), (512, 16, 64)])
def test_gpt_layer_activations_match_korthikanti(tmp_path, h, a, s, passes):
    spec = tmp_path / "gpt.arch"
    spec.write_text(GPT.format(h=h, a=a, s=s, ffn=4 * h))
    g = (compile_spec(spec, passes=passes) if passes is not None else compile_spec(spec)).graph
    layer = ("layers", 2)
    # Table 2 / eq. 1: sbh(34 + 5as/h) bytes per layer in 16-bit; per token: 34h + 5as
    eager = saved_activations(g, seq=s, nbytes=2, keep_probabilities=True).by_layer[layer]
    assert eager == 34 * h + 5 * a * s
    # selective recomputation (§5): the attention core's 5as²b is recomputed; FlashAttention keeps
    # its output (the o-projection's input, already counted) and one float32 log-sum-exp per head
    flash = saved_activations(g, seq=s, nbytes=2, keep_probabilities=False).by_layer[layer]
    assert flash == 34 * h + 4 * a


def test_tensor_parallel_divides_activations_and_full_recompute_keeps_layer_inputs(tmp_path):
    spec = tmp_path / "gpt.arch"
    spec.write_text(GPT.format(h=256, a=8, s=128, ffn=1024))
    g = compile_spec(spec).graph
    one = estimate(g, Setup(H100, recompute="none")).training["activations_bytes"]
    four = estimate(g, Setup(H100, gpus=4, tp=4, recompute="none")).training["activations_bytes"]
    assert four == one / 4  # sbh/t (34 + 5as/h) with sequence parallelism
    acts = saved_activations(g, seq=128, nbytes=2, keep_probabilities=False)
    full = estimate(g, Setup(H100, recompute="full")).training["activations_bytes"]
    # 2sbh per layer (its input), one layer's activations while it is recomputed, and the head's
    assert full == 128 * (4 * 2 * 256 + acts.largest_layer() + acts.by_layer[None])
    assert acts.layer_inputs[("layers", 0)] == 2 * 256


def test_training_flops_are_about_6nd(llama):
    e = estimate(llama, Setup(H100, seq=2048, batch=4, gpus=8))
    f = compute_facts(llama)
    n = f.params_total - f.breakdown["embedding"]  # N without the embedding table, a lookup (Kaplan et al.)
    tokens = 4 * 2048 * 8
    assert e.training["tokens_per_step"] == tokens
    ratio = e.training["model_flops_per_step"] / (6 * n * tokens)
    assert 1.0 < ratio < 1.1  # 6ND, plus attention's scores
    assert e.training["step_seconds"] == pytest.approx(e.training["model_flops_per_step"] / (8 * 989.4e12 * 0.4))


def test_decoding_reads_every_weight_and_the_cache(llama):
    f = compute_facts(llama, context=4096)
    e = estimate(llama, Setup(H100, seq=4096))
    embedding = 128256 * 4096
    weights = f.params_total - embedding + 4096  # one row of the embedding table
    assert e.inference["decode_bytes_read_per_step"] == pytest.approx(2 * weights + f.kv_cache_bytes_at_context)
    assert e.inference["bound"] == "bandwidth"
    assert e.inference["decode_step_seconds"] == pytest.approx(e.inference["decode_bytes_read_per_step"] / (3.35e12 * 0.8))


def test_a_decoding_batch_reads_more_experts():
    g = compile_spec(EXAMPLES / "mixtral_8x7b.arch").graph
    one = estimate(g, Setup(H100, seq=1024)).inference["decode_bytes_read_per_step"]
    many = estimate(g, Setup(H100, seq=1024, batch=64)).inference["decode_bytes_read_per_step"]
    expert = 3 * 4096 * 14336 * 2  # bytes of one expert
    # one token reads 2 of 8 experts per layer; 64 tokens read all 8 (1 - (3/4)^64 ≈ 1)
    f = compute_facts(g, context=1024)
    assert many - one == pytest.approx(32 * 6 * expert + 63 * f.kv_cache_bytes_at_context + 63 * 4096 * 2, rel=1e-6)


def test_pipeline_and_expert_parallel_shard_weights():
    g = compile_spec(EXAMPLES / "mixtral_8x7b.arch").graph
    f = compute_facts(g)
    routed = f.breakdown["moe_experts"]
    e = estimate(g, Setup(H100, gpus=16, tp=2, pp=2, ep=4)).inference
    assert e["weights_bytes"] == pytest.approx(2 * ((f.params_total - routed) / 4 + routed / 16))


@pytest.mark.parametrize("kw,words", [
    (dict(gpus=6, tp=4), "do not split into tensor x pipeline"),
    (dict(gpus=8, ep=3), "expert parallelism of 3"),
    (dict(recompute="some"), "unknown recompute"),
    (dict(mfu=1.5), "fractions"),
])
def test_impossible_setups_are_refused(llama, kw, words):
    with pytest.raises(ArchError, match=words):
        estimate(llama, Setup(H100, **kw))


def test_experts_must_split_over_expert_parallel_ranks():
    g = compile_spec(EXAMPLES / "mixtral_8x7b.arch").graph
    with pytest.raises(ArchError, match="8 experts do not split over 16"):
        estimate(g, Setup(H100, gpus=16, ep=16))


def test_a_dtype_the_hardware_lacks_is_refused(llama):
    with pytest.raises(ArchError, match="no fp8 peak"):
        estimate(llama, Setup(HARDWARE["a100"], dtype="fp8"))


def test_hardware_files(tmp_path):
    good = tmp_path / "hw.toml"
    good.write_text('[hardware.x1]\ndescription = "X1"\nmemory_gb = 96\nbandwidth_tb_s = 4\n'
                    'tflops = { bf16 = 800 }\nsource = "the X1 datasheet"\n')
    x1 = load_hardware_file(good)["x1"]
    assert (x1.memory_bytes, x1.bandwidth, x1.peak("bf16")) == (96e9, 4e12, 800e12)
    for text, words in [("[hardware.x]\nmemory_gb = -1\n", "positive"), ("nonsense = [", "not valid TOML"),
                        ("[other]\n", "no \\[hardware.NAME\\]"),
                        ('[hardware.x]\nmemory_gb = 1\nbandwidth_tb_s = 1\ntflops = { int4 = 1 }\n', "unknown dtype"),
                        ('[hardware.x]\nmemory_gb = 1\nspeed = 1\n', "unknown key")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ArchError, match=words):
            load_hardware_file(bad)


def test_every_hardware_entry_names_its_source():
    for hw in HARDWARE.values():
        assert hw.source and hw.memory_bytes > 0 and hw.bandwidth > 0 and "bf16" in hw.flops


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.arch")))
def test_every_example_estimates(name):
    g = compile_spec(EXAMPLES / f"{name}.arch").graph
    e = estimate(g, Setup(H100, seq=min(g.graph["context"], 2048)))
    assert e.training["activations_bytes"] > 0 and e.inference["weights_bytes"] > 0


def archc(*args):
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "archlang", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def test_cli_table_and_json():
    r = archc("estimate", "examples/llama3_8b.arch", "--gpus", "8", "--fsdp", "--seq", "4096", "--hardware", "h200")
    assert r.returncode == 0, r.stderr
    assert "llama3_8b on 8 x h200" in r.stdout and "assumes model FLOPs utilisation 0.4" in r.stdout
    r = archc("estimate", "examples/llama3_8b.arch", "--json", "--seq", "131072")
    data = json.loads(r.stdout)
    assert data["inference"]["cache_bytes"] == 16 * 2**30 and data["hardware"] == "h100"


@pytest.mark.parametrize("args,words", [
    (["--hardware", "tpu9"], "unknown hardware tpu9"),
    (["--gpus", "6", "--tp", "4"], "do not split"),
    (["--hardware", "a100", "--dtype", "fp8"], "no fp8 peak"),
    (["--hardware-file", "missing.toml"], "no such file"),
])
def test_cli_refusals_exit_2_without_a_traceback(args, words):
    r = archc("estimate", "examples/llama3_8b.arch", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr


def test_multi_token_prediction_is_trained_but_not_served():
    from ..conftest import SPECS

    g = compile_spec(SPECS / "tiny_mtp.arch").graph
    f = compute_facts(g)
    assert f.params_mtp > 0
    e = estimate(g, Setup(H100, dtype="fp32"))
    assert e.training["weights_bytes"] == 4 * f.params_total
    assert e.inference["weights_bytes"] == 4 * (f.params_total - f.params_mtp)
