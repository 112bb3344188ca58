"""Forward and generation speed of archlang models against the Hugging Face transformers models
people would use instead, with the same config and weights, on the CPU.

    python bench/forward.py [--quick] [--rounds 7] [--scans-only]

For each family (a Llama-like dense model, a Mixtral-like MoE, a Jamba-like Mamba/attention
hybrid) and batch x sequence size it prints forward tokens/s of archlang, HF sdpa and HF eager,
measured alternately in one run (the machine is noisy, so compare the ratios), then cached
greedy generation tokens/s, and the peak RSS growth of one forward of each.

Then one training step (forward, cross-entropy, backward) of archlang models of about the same
size: a Mamba-1 stack, a Mamba-2 stack and a Llama-like dense stack, timed alternately, each as a
ratio to the dense model's step; and the gated linear family's chunked form (training and prefill)
against its step-by-step recurrence (decoding) over 2,048 tokens, forward and forward+backward.
`--scans-only` runs just these two. Last, the SSM kernels: Mamba-2's chunked SSD and the gated
linear scan (retention, GLA, Gated DeltaNet), PyTorch reference vs Triton kernel, where a CUDA GPU exists (on the CPU
the kernel rows say skipped).

The `ceiling` column bounds what any implementation with the same weights can reach against HF
eager on this machine: HF eager's wall time divided by the time it spends in the linear layers'
matrix multiplies alone (aten mm/addmm/_grouped_mm, recorded from one forward and replayed with the
same operands, timed alternately with the models), which every implementation has to do as well.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")


def families(quick: bool):
    import transformers as T

    d = 128 if quick else 512
    layers = 2 if quick else 8
    common = dict(vocab_size=1024 if quick else 32000, hidden_size=d, num_attention_heads=8, num_key_value_heads=4,
                  max_position_embeddings=4096)
    return {
        "llama-like": (T.LlamaForCausalLM, T.LlamaConfig(**common, intermediate_size=int(2.75 * d), num_hidden_layers=layers)),
        "mixtral-like": (T.MixtralForCausalLM, T.MixtralConfig(**common, intermediate_size=2 * d, num_hidden_layers=max(2, layers // 2),
                                                               num_local_experts=8, num_experts_per_tok=2)),
        "jamba-like": (T.JambaForCausalLM, T.JambaConfig(**common, intermediate_size=2 * d, num_hidden_layers=layers if layers >= 4 else 4,
                                                         num_experts=4, attn_layer_period=4, attn_layer_offset=2,
                                                         expert_layer_period=2, expert_layer_offset=1, mamba_d_state=16,
                                                         mamba_expand=2)),
    }


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> float:
    """Return freed heap to the OS, reset the RSS high-water mark (Linux), return the RSS now."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def _rss_in_subprocess(family: str, impl: str, b: int, t: int, quick: bool) -> float:
    import os
    import subprocess

    cmd = [sys.executable, __file__, "--rss", family, impl, str(b), str(t)] + (["--quick"] if quick else [])
    # A fixed mmap threshold: glibc otherwise raises it as large blocks are freed, after which
    # tensors of up to 32 MiB come from (and stay on) the heap, so the high-water mark would
    # depend on the allocator's history rather than on the tensors alive at the peak.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
    return float(out)


GEMMS = ("mm", "addmm", "_grouped_mm")  # the linear layers' and the experts' matrix multiplies


def gemm_replay(model, ids):
    """Record the matrix multiplies of the linear layers in one forward of `model`; return a
    function that runs just those, with the same operands, back to back."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in GEMMS:
                calls.append((func, args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Recorder():
        model(ids)

    def replay():
        for func, args, kwargs in calls:
            func(*args, **kwargs)

    return replay


def rss_one(family: str, impl: str, b: int, t: int, quick: bool) -> float:
    """RSS growth of one forward pass, with the model already built (run in a fresh process)."""
    from archlang.interop.hf import from_hf

    cls, config = families(quick)[family]
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = cls(config).eval()
    if impl == "archlang":
        model = from_hf(model).eval()
    ids = torch.randint(0, config.vocab_size, (b, t))
    before = reset_peak_rss()
    with torch.no_grad():
        model(ids)
    return _status_mib("VmHWM") - before


TRAINING_SPEC = """
model {name} {{
    vocab = {vocab}
    d_model = {d}
    context = 4096
    dtype = fp32
    final_norm = rmsnorm(eps = 1e-5)
{position}
    block layer {{
        norm = rmsnorm(eps = 1e-5)
{body}
    }}

    layers = layer * {layers}
}}
"""


def training_models(quick: bool):
    """Three stacks of about the same parameter count at one width: a Mamba block (expand 2) has
    about 6.5·d² parameters, a dense layer (attention 4·d², SwiGLU 8·d²) about 12·d², so the
    SSM stacks have twice the dense model's layers, as in the Mamba papers' comparisons."""
    from archlang.api import build

    d, vocab, layers = (64, 256, 2) if quick else (256, 4096, 4)
    bodies = {
        "mamba-1": ("", "        ssm = mamba(d_state = 16, d_conv = 4, expand = 2)", 2 * layers),
        "mamba-2": ("", "        ssm = mamba2(d_state = 64, d_conv = 4, expand = 2, head_dim = 64)", 2 * layers),
        "dense": ("    position = rope(theta = 10000)\n",
                  f"        attention = gqa(heads = {d // 32}, kv_heads = {d // 32})\n"
                  f"        ffn = swiglu(hidden = {8 * d // 3})", layers),
    }
    models = {}
    for family, (position, body, n) in bodies.items():
        spec = TRAINING_SPEC.format(name=family.replace("-", "_"), vocab=vocab, d=d, position=position, body=body,
                                    layers=n)
        torch.manual_seed(0)
        models[family] = build(spec, dtype=torch.float32).train()
    return models, vocab


def training_steps(quick: bool, rounds: int) -> None:
    """Forward + backward of each model, alternately, as ratios to the dense model's step."""
    import torch.nn.functional as F

    models, vocab = training_models(quick)
    shapes = [(1, 16)] if quick else [(4, 512), (1, 2048)]
    print(f"\ntraining step (forward + backward), {len(models)} models of about the same size:")
    print("  " + "   ".join(f"{name} {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M params"
                            for name, m in models.items()))
    print(f"{'model':10s} {'B x T':>8s} {'step ms':>9s} {'tok/s':>9s} {'vs dense':>9s}")
    worst = {}
    for b, t in shapes:
        ids = torch.randint(0, vocab, (b, t))

        def step(model):
            model.zero_grad(set_to_none=True)
            logits = model(ids)
            F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten()).backward()

        runs = {name: (lambda m=m: step(m)) for name, m in models.items()}
        times = {k: [] for k in runs}
        for run in runs.values():  # warm-up
            run()
        for _ in range(rounds):
            for name, run in runs.items():
                times[name].append(timed(run))
        for name in runs:
            ratio = statistics.median(x / y for x, y in zip(times[name], times["dense"]))
            worst[name] = max(worst.get(name, 0.0), ratio)
            median = statistics.median(times[name])
            print(f"{name:10s} {b:>3d} x{t:<4d} {median * 1e3:9.1f} {b * t / median:9,.0f} {ratio:8.2f}x")
    print("slowest step vs dense: " + ", ".join(f"{name} {r:.2f}x" for name, r in worst.items() if name != "dense")
          + " (target: within 3x)")


def gated_linear_forms(quick: bool, rounds: int) -> None:
    """Chunked vs step-by-step recurrent form of each gated linear scan, one sequence, 4 heads of
    64 x 64, alternately: forward, then forward + backward."""
    import torch.nn.functional as F

    from archlang.kernels import reference as R

    b, heads, t, dk = 1, 4, (24 if quick else 2048), (8 if quick else 64)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, heads, t, dk, generator=g) for _ in range(3))
    k = F.normalize(k, dim=-1)
    per_head, per_dim = -torch.rand(b, heads, t, generator=g) * 0.1, -torch.rand(b, heads, t, dk, generator=g) * 0.1
    beta = torch.rand(b, heads, t, generator=g)
    a = -F.normalize(torch.randn(b, heads, t, dk, generator=g), dim=-1)
    kappa = -a * torch.rand(b, heads, t, dk, generator=g)
    cases = {  # name: (chunked, recurrent), each a function of the leaves
        "retention": lambda f: f[0](q, k, v, per_head),
        "GLA": lambda f: f[0](q, k, v, per_dim),
        "gated deltanet": lambda f: f[0](q, k, v, per_head, beta),
        "RWKV-7": lambda f: f[1](q, k, v, per_dim, a, kappa),
    }
    forms = {"chunked": (R.gated_linear_chunked, R.generalized_delta_chunked),
             "recurrent": (R.gated_linear_recurrent, R.generalized_delta_recurrent)}
    leaves = (q, k, v, per_head, per_dim, beta, a, kappa)
    print(f"\ngated linear scans over {t} tokens ({heads} heads of {dk} x {dk}), chunked vs recurrent:")
    print(f"{'scan':16s} {'pass':>8s} {'chunked ms':>11s} {'recurrent ms':>13s} {'chunked x':>10s}")
    worst = float("inf")
    for name, case in cases.items():
        for grad in (False, True):
            for x in leaves:
                x.requires_grad_(grad)

            def run(fns, case=case, grad=grad):
                if not grad:
                    with torch.no_grad():
                        return case(fns)
                out, state = case(fns)
                (out.sum() + state.sum()).backward()

            times = {form: [] for form in forms}
            for fns in forms.values():  # warm-up
                run(fns)
            for _ in range(rounds):
                for form, fns in forms.items():
                    times[form].append(timed(lambda fns=fns: run(fns)))
            ratio = statistics.median(r / c for c, r in zip(times["chunked"], times["recurrent"]))
            worst = min(worst, ratio)
            print(f"{name:16s} {'fwd+bwd' if grad else 'fwd':>8s} {statistics.median(times['chunked']) * 1e3:11.1f} "
                  f"{statistics.median(times['recurrent']) * 1e3:13.1f} {ratio:9.2f}x")
    print(f"slowest chunked vs recurrent: {worst:.2f}x faster (target: at least 2x at 2,048 tokens)")


def ssm_kernels(quick: bool, rounds: int) -> None:
    """The PyTorch reference of each SSM scan against its Triton kernel, alternately, forward then
    forward + backward, on the GPU when there is one. Without one the kernels run only in Triton's
    interpreter (for tests, not for timing): the reference rows print, the kernel rows say skipped."""
    import torch.nn.functional as F

    from archlang.kernels import reference as R

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    g = torch.Generator().manual_seed(0)
    b, t = (1, 32) if quick else (2, 2048)
    heads, p, n, dk = (2, 8, 8, 8) if quick else (16, 64, 64, 64)
    x, dt = torch.randn(b, t, heads, p, generator=g), torch.rand(b, t, heads, generator=g) * 0.1
    A = -torch.rand(heads, generator=g) - 0.5
    B, C = torch.randn(b, t, 1, n, generator=g), torch.randn(b, t, 1, n, generator=g)
    q, k, v = (torch.randn(b, heads, t, dk, generator=g) for _ in range(3))
    k = F.normalize(k, dim=-1)
    per_head, per_dim = -torch.rand(b, heads, t, generator=g) * 0.1, -torch.rand(b, heads, t, dk, generator=g) * 0.1
    beta = torch.rand(b, heads, t, generator=g)
    leaves = [y.to(device) for y in (x, dt, A, B, C, q, k, v, per_head, per_dim, beta)]
    x, dt, A, B, C, q, k, v, per_head, per_dim, beta = leaves

    def kernel(module, name):
        from importlib import import_module

        return getattr(import_module(f"archlang.kernels.{module}"), name)

    cases = {  # name: (reference, kernel module and function, the call)
        "mamba-2 SSD": (R.ssd_chunked, ("ssd", "ssd_chunked"), lambda f: f(x, dt, A, B, C, 64)),
        "retention": (R.gated_linear_chunked, ("gated_linear", "gated_linear_chunked"),
                      lambda f: f(q, k, v, per_head)),
        "GLA": (R.gated_linear_chunked, ("gated_linear", "gated_linear_chunked"), lambda f: f(q, k, v, per_dim)),
        "gated deltanet": (R.gated_linear_chunked, ("gated_linear", "gated_linear_chunked"),
                           lambda f: f(q, k, v, per_head, beta)),
    }

    def clock(fn) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    print(f"\nSSM kernels over {t} tokens, batch {b}, {heads} heads, on {device}: reference vs Triton kernel")
    print(f"{'scan':16s} {'pass':>8s} {'reference ms':>13s} {'kernel ms':>10s} {'kernel x':>9s}")
    for name, (ref_fn, (module, fn_name), call) in cases.items():
        impls = {"reference": ref_fn}
        if cuda:
            impls["kernel"] = kernel(module, fn_name)
        for grad in (False, True):
            for leaf in leaves:
                leaf.requires_grad_(grad)

            def run(fn, call=call, grad=grad):
                if not grad:
                    with torch.no_grad():
                        return call(fn)
                out, state = call(fn)
                (out.sum() + state.sum()).backward()

            times = {impl: [] for impl in impls}
            for fn in impls.values():  # warm-up (and the kernels' compilation)
                run(fn)
            for _ in range(rounds):
                for impl, fn in impls.items():
                    times[impl].append(clock(lambda fn=fn: run(fn)))
            ref_ms = statistics.median(times["reference"]) * 1e3
            if cuda:
                ratio = statistics.median(r / k for r, k in zip(times["reference"], times["kernel"]))
                kernel_cols = f"{statistics.median(times['kernel']) * 1e3:10.2f} {ratio:8.2f}x"
            else:
                kernel_cols = f"{'skipped':>10s} {'(no GPU)':>9s}"
            print(f"{name:16s} {'fwd+bwd' if grad else 'fwd':>8s} {ref_ms:13.2f} {kernel_cols}")
    for leaf in leaves:
        leaf.requires_grad_(False)


def main() -> int:
    from archlang.interop.hf import from_hf

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test suite runs this)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scans-only", action="store_true",
                        help="only the training steps of the SSM models, the gated linear forms and the SSM kernels")
    parser.add_argument("--rss", nargs=4, metavar=("FAMILY", "IMPL", "B", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss:
        family, impl, b, t = args.rss
        print(rss_one(family, impl, int(b), int(t), args.quick))
        return 0
    torch.manual_seed(0)
    shapes = [(1, 32), (2, 64)] if args.quick else [(1, 128), (4, 128), (1, 512), (1, 2048)]
    rounds = 2 if args.quick else args.rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    if args.scans_only:
        training_steps(args.quick, rounds)
        gated_linear_forms(args.quick, rounds)
        ssm_kernels(args.quick, rounds)
        return 0
    print(f"{'family':14s} {'B x T':>8s} {'archlang tok/s':>15s} {'HF sdpa':>10s} {'HF eager':>10s} {'vs sdpa':>8s} "
          f"{'vs eager':>9s} {'ceiling':>8s}")
    summary = []
    for family, (cls, config) in families(args.quick).items():
        models = {}
        for impl in ("sdpa", "eager"):
            config._attn_implementation = impl
            torch.manual_seed(0)
            models[impl] = cls(config).eval()
        models["sdpa"].load_state_dict(models["eager"].state_dict())
        models["archlang"] = from_hf(models["eager"]).eval()
        for b, t in shapes:
            ids = torch.randint(0, config.vocab_size, (b, t))
            runs = {name: (lambda m=m: m(ids)) for name, m in models.items()}
            runs["gemms"] = gemm_replay(models["eager"], ids)  # HF eager's GEMMs alone
            times = {k: [] for k in runs}
            with torch.no_grad():
                for run in runs.values():  # warm-up
                    run()
                for _ in range(rounds):  # alternate so drift hits all of them alike
                    for name, run in runs.items():
                        times[name].append(timed(run))
            runs.clear()  # frees the recorded operands
            tps = {k: b * t / statistics.median(v) for k, v in times.items() if k != "gemms"}
            # ratios are medians of per-round ratios: the runs of one round saw the same machine
            r_sdpa, r_eager, ceiling = (statistics.median(x / y for x, y in zip(times[num], times[den]))
                                        for num, den in (("sdpa", "archlang"), ("eager", "archlang"), ("eager", "gemms")))
            summary.append((family, f"{b}x{t}", r_sdpa, r_eager, ceiling))
            print(f"{family:14s} {b:>3d} x{t:<4d} {tps['archlang']:15,.0f} {tps['sdpa']:10,.0f} {tps['eager']:10,.0f} "
                  f"{r_sdpa:7.2f}x {r_eager:8.2f}x {ceiling:7.2f}x")
        # cached greedy generation
        prompt = torch.randint(0, config.vocab_size, (1, 16))
        new = 8 if args.quick else 32
        gen = {"archlang": [], "sdpa": []}
        with torch.no_grad():
            for _ in range(max(1, rounds // 2)):
                gen["archlang"].append(timed(lambda: models["archlang"].generate(prompt, new)))
                gen["sdpa"].append(timed(lambda: models["sdpa"].generate(prompt, max_new_tokens=new, min_new_tokens=new,
                                                                         do_sample=False, pad_token_id=0)))
        g_ours, g_hf = (new / statistics.median(gen[k]) for k in ("archlang", "sdpa"))
        print(f"{family:14s} {'generate':>8s} {g_ours:15,.1f} {g_hf:10,.1f} {'':>10s} {g_ours / g_hf:7.2f}x")
        models.clear()
        gc.collect()
    # Peak memory of one forward: each measured in a fresh process (RSS high-water mark growth).
    fresh = 1 if args.quick else 3  # each a process importing torch and transformers: seconds apiece
    print(f"\npeak RSS growth of one forward (MiB), largest shape, best of {fresh} fresh processes:")
    b, t = shapes[-1]
    for family in families(args.quick):
        # the lowest of three fresh-process measurements each: RSS is noisy on a shared machine
        growth = {impl: min(_rss_in_subprocess(family, impl, b, t, args.quick) for _ in range(fresh))
                  for impl in ("archlang", "sdpa")}
        print(f"  {family:14s} archlang {growth['archlang']:7.1f}   HF sdpa {growth['sdpa']:7.1f}   "
              f"ratio {growth['archlang'] / max(growth['sdpa'], 1e-9):.2f}")
    training_steps(args.quick, rounds)
    gated_linear_forms(args.quick, rounds)
    ssm_kernels(args.quick, rounds)
    worst = min(summary, key=lambda s: s[2])
    worst_eager = min(summary, key=lambda s: s[3])
    print(f"\nworst ratio vs HF sdpa: {worst[2]:.2f}x ({worst[0]} {worst[1]}); "
          f"vs HF eager: {worst_eager[3]:.2f}x ({worst_eager[0]} {worst_eager[1]}, ceiling {worst_eager[4]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
