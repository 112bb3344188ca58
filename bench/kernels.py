"""Kernel speed on a CUDA GPU: each Triton kernel against its PyTorch reference and against
torch.compile of the reference, with achieved GB/s (memory-bound ops) or TFLOP/s (attention) and
the fraction of the device's peak.

    python bench/kernels.py [--dtype bf16]

Targets on an H100: norms, RoPE and GLU at >= 85% of HBM bandwidth; attention forward at >= 0.9x
PyTorch's flash SDPA on the same shapes. Without a GPU it says so and exits cleanly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (HBM bytes/s, dense bf16 FLOP/s) by device name substring.
PEAKS = {"H100": (3.35e12, 989e12), "H200": (4.8e12, 989e12), "A100": (2.0e12, 312e12)}


def peak_for(name: str):
    for key, value in PEAKS.items():
        if key in name:
            return value
    return None


def bench(fn, warmup=10, iters=50) -> float:
    """Median milliseconds of fn() with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/kernels.py needs a CUDA GPU: the kernels run on CPU only in Triton's interpreter, which is "
              "for correctness tests, not timing. Nothing to measure here.")
        return 0
    from archlang.kernels import attention as attn_k
    from archlang.kernels import glu as glu_k
    from archlang.kernels import norm_rope as norm_rope_k
    from archlang.kernels import reference as ref
    from archlang.kernels import rms_norm as rms_k
    from archlang.kernels import rope as rope_k
    from archlang.kernels import router as router_k
    from archlang.runtime.position import RopeTable

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    size = torch.finfo(dtype).bits // 8
    name = torch.cuda.get_device_name()
    peaks = peak_for(name)
    print(f"{name}, {args.dtype}\n")
    print(f"{'op':28s} {'triton ms':>10s} {'ref ms':>8s} {'compiled ms':>12s} {'triton':>14s} {'of peak':>8s} {'vs compiled':>12s}")
    rows, cols = 16384, 8192
    x = torch.randn(rows, cols, device="cuda", dtype=dtype)
    r = torch.randn_like(x)
    w = torch.ones(cols, device="cuda", dtype=dtype)
    q = torch.randn(8, 32, 4096, 128, device="cuda", dtype=dtype)
    k = torch.randn(8, 8, 4096, 128, device="cuda", dtype=dtype)
    cos, sin = RopeTable(128, 4096).cuda()(torch.arange(4096, device="cuda"))
    pos = torch.arange(4096, device="cuda")
    head_w = torch.ones(128, device="cuda", dtype=dtype)
    logits = torch.randn(65536, 256, device="cuda")  # DeepSeek-V3: 256 experts in 8 groups, 8 chosen
    bias = torch.randn(256, device="cuda") * 0.01
    v3 = dict(sigmoid=True, normalize=True, scale=2.5, correction_bias=bias, n_group=8, topk_group=4)
    cases = [
        ("rms_norm (+residual)", lambda: rms_k.rms_norm(x, w, 1e-6, False, r), lambda: ref.rms_norm(x, w, 1e-6, False, r),
         4 * x.numel() * size, None),
        ("glu (silu)", lambda: glu_k.glu(x, "silu"), lambda: ref.glu(x, "silu"), 1.5 * x.numel() * size, None),
        ("rope", lambda: rope_k.rope(q, cos, sin), lambda: ref.rope(q, cos, sin), 2 * q.numel() * size, None),
        ("qk-norm + rope (fused)", lambda: norm_rope_k.norm_rope(q, head_w, 1e-6, cos, sin),
         lambda: ref.rope(ref.rms_norm(q, head_w, 1e-6), cos, sin), 2 * q.numel() * size, None),
        ("router (deepseek-v3)", lambda: router_k.route(logits, 8, **v3), lambda: ref.route(logits, 8, **v3),
         2 * logits.numel() * 4, None),
        ("attention fwd (causal, gqa)",
         lambda: attn_k.attention(q, k, k, pos, pos, causal=True, scale=128 ** -0.5),
         lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True),
         None, 4 * 8 * 32 * 4096 * 4096 * 128 / 2),
    ]
    for label, triton_fn, ref_fn, nbytes, flops in cases:
        with torch.no_grad():
            t_triton = bench(triton_fn)
            t_ref = bench(ref_fn)
            compiled = torch.compile(ref_fn)
            t_comp = bench(compiled)
        if nbytes:
            rate = nbytes / (t_triton / 1e3)
            shown, frac = f"{rate / 1e9:9.0f} GB/s", (rate / peaks[0] if peaks else None)
        else:
            rate = flops / (t_triton / 1e3)
            shown, frac = f"{rate / 1e12:7.0f} TFLOP/s", (rate / peaks[1] if peaks else None)
        frac_s = f"{100 * frac:6.1f}%" if frac is not None else "    n/a"
        print(f"{label:28s} {t_triton:10.3f} {t_ref:8.3f} {t_comp:12.3f} {shown:>14s} {frac_s:>8s} {t_comp / t_triton:11.2f}x")
    print("\n(for attention the reference column is PyTorch's flash SDPA)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
