"""Compiler speed: parse → validate → lower → passes → codegen, per stage, for every example and
a synthetic 128-layer hybrid spec, with the peak Python memory of the whole compile.

    python bench/compile.py [--repeat 5]

Target: the 128-layer spec compiles in under 100 ms (importing torch excluded: the compiler
never imports it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
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
    g = lower(model)
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
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
    print(f"torch imported by the compiler: {'torch' in sys.modules}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
