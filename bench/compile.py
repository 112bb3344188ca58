"""Compiler speed: parse → validate → lower → passes → codegen, per stage, for every example and
a synthetic 128-layer hybrid spec, with the peak Python memory of the whole compile; then, at
the documented limits (4,096 layers, encoder_decoder 2,048 + 2,048, many distinct blocks, MoE
with 4,096 experts), `archc check`, `archc compile` and the `check --run` stand-in (built and run
with torch, last) at two depths, with the time per layer and the ratio between the depths.

    python bench/compile.py [--repeat 5] [--no-scale]

Targets: the 128-layer spec compiles in under 100 ms (importing torch excluded: the compiler
never imports it); check and compile take at most ~1 s at the limits and grow at most linearly
(4x the layers, at most ~4x the time); the stand-in's cost does not grow with depth.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HYBRID_128 = """
model hybrid_128 {
    vocab = 65536
    d_model = 4096
    context = 32k
    let eps = 1e-6
    position = rope(theta = 1000000)
    final_norm = rmsnorm(eps = eps)
    block mamba {
        norm = rmsnorm(eps = eps)
        ssm = mamba(d_state = 16, expand = 2)
        ffn = swiglu(hidden = 14336)
    }
    block mamba_moe extends mamba {
        ffn = moe(experts = 16, top_k = 2, expert = swiglu(hidden = 14336), shared_experts = 1)
    }
    block attn {
        norm = rmsnorm(eps = eps)
        attention = gqa(heads = 32, kv_heads = 8, window = 4096)
        ffn = swiglu(hidden = 14336)
    }
    block mla_moe {
        norm = rmsnorm(eps = eps)
        attention = mla(heads = 32, kv_lora_rank = 512, q_lora_rank = 1536)
        ffn = moe(experts = 64, top_k = 6, expert = swiglu(hidden = 1408), shared_experts = 2)
    }
    layers = pattern("MEMEAEMX", M = mamba, E = mamba_moe, A = attn, X = mla_moe) * 16
}
"""


def stages(text: str, name: str) -> dict[str, float]:
    from archlang.compiler import generate, lower, run_pipeline, validate
    from archlang.spec import parse_source
    from archlang.spec.resolve import build_model, load_program

    t: dict[str, float] = {}
    t0 = time.perf_counter()
    parse_source(text, name)
    t["parse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    program = load_program(source=text, name=name, root=ROOT)
    model = build_model(program, program.entry_models[0])
    t["parse+validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = lower(model, folded=True)  # as check and compile do (compiler/fold.py)
    t["lower"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    validate(g)
    t["check IR"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = run_pipeline(g)
    t["passes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate(g, spec_name=name, spec_text=text)
    t["codegen"] = time.perf_counter() - t0
    t["total"] = sum(v for k, v in t.items() if k != "parse")
    return t


def _llama(n: int) -> str:
    return f"""
model llama_deep {{
    vocab = 128256
    d_model = 4096
    context = 8k
    position = rope(theta = 500000)
    final_norm = rmsnorm(eps = 1e-5)
    block layer {{
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 32, kv_heads = 8)
        ffn = swiglu(hidden = 14336)
    }}
    layers = layer * {n}
}}
"""


def _jamba(periods: int) -> str:
    return HYBRID_128.replace("* 16", f"* {periods}")


def _enc_dec(n: int) -> str:
    return f"""
model t5_deep {{
    family = encoder_decoder
    vocab = 32128
    d_model = 512
    context = 512
    tie_embeddings = true
    position = relative(buckets = 32, max_distance = 128)
    final_norm = rmsnorm(eps = 1e-6)
    block encoder {{
        norm = rmsnorm(eps = 1e-6)
        attention = mha(heads = 8, head_dim = 64, scale = 1)
        ffn = mlp(hidden = 2048, act = relu, bias = false)
    }}
    block decoder extends encoder {{
        cross_attention = mha(heads = 8, head_dim = 64, scale = 1)
    }}
    encoder_layers = encoder * {n}
    decoder_layers = decoder * {n}
}}
"""


def _distinct(blocks: int, repeat: int) -> str:
    body = "".join(f"""
    block b{i} {{
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 32, kv_heads = 8, window = {1024 + i})
        ffn = swiglu(hidden = {8192 + 64 * i})
    }}""" for i in range(blocks))
    # Sums are split into `let`s of 32 terms: one expression nests at most 100 levels deep.
    groups = [" + ".join(f"b{i} * {repeat}" for i in range(g, min(g + 32, blocks))) for g in range(0, blocks, 32)]
    lets = "".join(f"\n    let part{k} = {group}" for k, group in enumerate(groups))
    layers = " + ".join(f"part{k}" for k in range(len(groups)))
    return f"""
model distinct {{
    vocab = 32000
    d_model = 4096
    context = 8k
    position = rope(theta = 500000)
    final_norm = rmsnorm(eps = 1e-5){lets}{body}
    layers = {layers}
}}
"""


def _moe(n: int) -> str:
    return _llama(n).replace("ffn = swiglu(hidden = 14336)",
                             "ffn = moe(experts = 4096, top_k = 8, expert = swiglu(hidden = 1024), shared_experts = 2)")


# (row, small spec, its layers, large spec, its layers): each large spec is at a documented limit.
SCALE = [
    ("llama-like", _llama(1024), 1024, _llama(4096), 4096),
    ("hybrid pattern x", _jamba(128), 1024, _jamba(512), 4096),
    ("enc-dec n + n", _enc_dec(512), 1024, _enc_dec(2048), 4096),
    ("MoE 4096 experts", _moe(1024), 1024, _moe(4096), 4096),
    ("distinct blocks x32", _distinct(32, 32), 1024, _distinct(128, 32), 4096),
]


def _timed(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def scale(repeat: int, tmp: Path) -> None:
    from archlang.api import check_file, compile_spec, load_model

    print(f"\n{'at the limits':22s}{'layers':>8s}{'check':>11s}{'per layer':>12s}{'compile':>11s}{'per layer':>12s}"
          f"{'check x':>9s}{'compile x':>11s}")
    worst = 0.0
    for row, small, n_small, big, n_big in SCALE:
        times = []
        for i, (text, n) in enumerate(((small, n_small), (big, n_big))):
            path = tmp / f"{row.split()[0]}_{i}.arch"
            path.write_text(text)
            check = _timed(lambda: check_file(path), repeat)
            comp = _timed(lambda: compile_spec(path), repeat)
            times.append((check, comp))
            ratio = ""
            if i:
                ratio = f"{check / times[0][0]:8.1f}x{comp / times[0][1]:10.1f}x"
                worst = max(worst, check, comp)
            print(f"{row:22s}{n:8d}{check * 1e3:8.0f} ms{check / n * 1e6:9.1f} us{comp * 1e3:8.0f} ms"
                  f"{comp / n * 1e6:9.1f} us" + ratio)
    print(f"\nslowest check or compile at the limits: {worst * 1e3:.0f} ms (target ~1 s: {'met' if worst < 1.2 else 'NOT met'})")


def stand_ins(repeat: int) -> None:
    """`check --run`: build and run the stand-in (imports torch; run after the compiler rows)."""
    from archlang.api import check_numerics, load_model

    print(f"\n{'check --run stand-in':22s}{'layers':>8s}{'build+run':>12s}{'x':>7s}")
    for row, small, n_small, big, n_big in SCALE:
        times = []
        for text, n in ((small, n_small), (big, n_big)):
            model = load_model(text)
            check_numerics(model)  # warm: torch import, first kernels
            times.append(_timed(lambda: check_numerics(model), repeat))
            ratio = f"{times[1] / times[0]:6.1f}x" if len(times) > 1 else ""
            print(f"{row:22s}{n:8d}{times[-1] * 1e3:9.0f} ms{ratio}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-scale", action="store_true", help="only the examples and the 128-layer spec")
    args = parser.parse_args()
    specs = [(p.stem, p.read_text()) for p in sorted((ROOT / "examples").glob("*.arch"))] + [("hybrid_128 (synthetic)", HYBRID_128)]
    cols = ["parse+validate", "lower", "check IR", "passes", "codegen", "total"]
    print(f"{'spec':24s}" + "".join(f"{c:>16s}" for c in cols) + f"{'peak MiB':>10s}")
    result = {}
    for name, text in specs:
        runs = [stages(text, name) for _ in range(args.repeat)]
        med = {c: statistics.median(r[c] for r in runs) for c in cols}
        tracemalloc.start()
        stages(text, name)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        result[name] = med
        print(f"{name:24s}" + "".join(f"{med[c] * 1e3:13.1f} ms" for c in cols) + f"{peak:10.1f}")
    total = result["hybrid_128 (synthetic)"]["total"] * 1e3
    print(f"\n128-layer hybrid: {total:.1f} ms (target < 100 ms: {'met' if total < 100 else 'NOT met'})")
    if not args.no_scale:
        with tempfile.TemporaryDirectory() as tmp:
            scale(max(1, args.repeat // 2), Path(tmp))
    print(f"torch imported by the compiler: {'torch' in sys.modules}")
    if not args.no_scale:
        stand_ins(max(1, args.repeat // 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
