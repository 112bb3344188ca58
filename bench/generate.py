"""Decoding speed: archlang's cached generation against Hugging Face `generate` with the same
weights and against the memory-bandwidth limit, then speculative decoding with a trained pair.

    python bench/generate.py [--quick] [--rounds 3] [--train-seconds 120]

1. For the llama-like, mixtral-like and jamba-like models of bench/forward.py, greedy decode
   tokens/s at batch 1 and 8 (a 16-token prompt, then `new` tokens), archlang and HF timed in turn.
   `limit` is the tokens/s a decoder could reach if a step cost nothing but reading what it must:
   the weights the step touches (all but the embedding table's unread rows; for an MoE, the
   experts the batch's tokens are expected to pick under uniform routing) plus the cache at the
   step's length, divided by the copy bandwidth this script measures (bytes read + written per
   second, STREAM's convention). `of limit` is archlang's share of it.
2. Speculative decoding: a target and a small draft are trained on a corpus generated here (a
   phrase language: deterministic within a phrase, a weighted choice between phrases), so the
   draft's acceptance is that of a real pair, not random-weight noise. Plain greedy decoding
   against speculative decoding with that draft, against self-speculation (the target's own
   first layer), and a copy of the target trained with two multi-token prediction modules that
   draft for it (`draft="mtp"`) against its own plain decoding; outputs are compared token for token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

from forward import families, timed  # noqa: E402  (bench/forward.py: the same benchmark models)


def copy_bandwidth(mib: int = 256, rounds: int = 5) -> float:
    """Bytes moved per second (read + written) copying a buffer far larger than the caches."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    best = min(timed(lambda: dst.copy_(src)) for _ in range(rounds))
    return 2 * src.numel() * 4 / best


def weight_bytes_touched(model, batch: int) -> float:
    """Bytes of weights one decode step of `batch` tokens reads: every parameter, but only the
    embedding rows of the batch's tokens (an untied table) and, for an MoE, the expected share of
    experts that top-k routing of `batch` tokens picks when it is uniform: 1 - (1 - k/E)^batch."""
    from archlang.runtime.moe import MoE

    total = 0.0
    expert_params: set[int] = set()
    for module in model.modules():
        if isinstance(module, MoE):
            share = 1 - (1 - module.top_k / module.experts) ** batch
            for p in module.parameters(recurse=False):
                if p.dim() == 3 and p.shape[0] == module.experts:
                    total += p.numel() * p.element_size() * share
                    expert_params.add(id(p))
    head = getattr(model, "lm_head", None)
    tied = head is None
    for name, p in model.named_parameters():
        if id(p) in expert_params:
            continue
        if name == "embed.weight" and not tied:
            total += batch * p.shape[1] * p.element_size()
        else:
            total += p.numel() * p.element_size()
    return total


def decode_rows(rounds: int, quick: bool, bandwidth: float) -> None:
    from archlang.interop.hf import from_hf
    from archlang.runtime.context import Cache

    new = 4 if quick else 32
    print(f"{'family':14s} {'B':>2s} {'archlang tok/s':>15s} {'HF tok/s':>9s} {'vs HF':>6s} "
          f"{'MiB/step':>9s} {'limit tok/s':>12s} {'of limit':>9s}")
    for family, (cls, config) in families(quick).items():
        config._attn_implementation = "sdpa"
        if quick and family == "jamba-like":
            continue  # HF's Mamba falls back to a slow reference path: the full run covers it
        torch.manual_seed(0)
        hf = cls(config).eval()
        ours = from_hf(hf).eval()
        for batch in (1, 2) if quick else (1, 8):
            prompt = torch.randint(0, config.vocab_size, (batch, 16))
            runs = {"archlang": lambda: ours.generate(prompt, new),
                    "hf": lambda: hf.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                              pad_token_id=0)}
            times = {k: [] for k in runs}
            with torch.no_grad():
                for run in runs.values():  # warm-up
                    run()
                for _ in range(rounds):  # alternately: drift hits both alike
                    for name, run in runs.items():
                        times[name].append(timed(run))
                cache = Cache()  # the cache in the middle of the generation, for the bytes it adds
                ours(torch.randint(0, config.vocab_size, (batch, 16 + new // 2)), cache=cache)
            step_bytes = weight_bytes_touched(ours, batch) + cache.nbytes()
            limit = bandwidth / step_bytes * batch
            tps = {k: batch * new / statistics.median(v) for k, v in times.items()}
            ratio = statistics.median(h / o for o, h in zip(times["archlang"], times["hf"]))
            print(f"{family:14s} {batch:>2d} {tps['archlang']:15,.1f} {tps['hf']:9,.1f} {ratio:5.2f}x "
                  f"{step_bytes / 2**20:9,.1f} {limit:12,.1f} {tps['archlang'] / limit:8.0%}")


# ----------------------------------------------------------------------------- speculative decoding

def phrase_corpus(vocab: int, phrases: int, seed: int = 0):
    """A language of `phrases` phrases of 3-8 tokens, every token used by one phrase position only
    (so the next token inside a phrase is decided), each phrase followed by one of two others
    (70 / 30). Returns a sampler of (B, T) batches."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(vocab - 1, generator=g) + 1
    table, start = [], 0
    for _ in range(phrases):
        n = int(torch.randint(3, 9, (), generator=g))
        table.append(order[start:start + n].tolist())
        start += n
    following = torch.randint(0, phrases, (phrases, 2), generator=g).tolist()

    def sample(batch: int, length: int) -> torch.Tensor:
        rows = []
        for _ in range(batch):
            row, phrase = [], int(torch.randint(0, phrases, (), generator=g))
            while len(row) < length:
                row += table[phrase]
                phrase = following[phrase][0 if float(torch.rand((), generator=g)) < 0.7 else 1]
            rows.append(row[:length])
        return torch.tensor(rows)

    return sample


SPEC = """
model {name} {{
    vocab = {vocab}
    d_model = {d}
    context = 512
    dtype = fp32
    position = rope(theta = 10000)
    final_norm = rmsnorm()
    block layer {{
        norm = rmsnorm()
        attention = gqa(heads = {heads}, kv_heads = {kv})
        ffn = swiglu(hidden = {ffn})
    }}
    layers = layer * {layers}{mtp}
}}
"""
MTP = "\n    mtp = mtp(depth = 2, block = layer, loss_weight = 0.3)"


def train(model, sample, seconds: float, batch: int, length: int) -> tuple[int, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    steps, loss = 0, float("nan")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or steps < 3:
        ids = sample(batch, length + 1)
        loss_t = model.loss(ids[:, :-1], ids[:, 1:])  # with mtp: the next-token and the modules' losses
        opt.zero_grad()
        loss_t.backward()
        opt.step()
        steps, loss = steps + 1, float(loss_t)
    return steps, loss


def speculative_rows(rounds: int, quick: bool, seconds: float) -> None:
    from archlang.api import build

    vocab = 512
    sample = phrase_corpus(vocab, phrases=64)
    big = dict(d=128, heads=4, kv=2, ffn=256, layers=2) if quick else dict(d=512, heads=8, kv=4, ffn=1408, layers=8)
    small = dict(d=64, heads=2, kv=1, ffn=128, layers=1) if quick else dict(d=128, heads=4, kv=2, ffn=256, layers=1)
    torch.manual_seed(0)
    target = build(SPEC.format(name="target", vocab=vocab, mtp="", **big))
    draft = build(SPEC.format(name="draft", vocab=vocab, mtp="", **small))
    # the same target with two multi-token prediction modules, trained as long on their joint loss
    torch.manual_seed(0)
    target_mtp = build(SPEC.format(name="target_mtp", vocab=vocab, mtp=MTP, **big))
    t_steps, t_loss = train(target, sample, seconds, 8, 64)
    d_steps, d_loss = train(draft, sample, seconds / 3, 16, 64)
    m_steps, m_loss = train(target_mtp, sample, seconds, 8, 64)
    target.eval(), draft.eval(), target_mtp.eval()
    print(f"\ntrained on the phrase corpus: target ({sum(p.numel() for p in target.parameters()):,} parameters) "
          f"{t_steps} steps, loss {t_loss:.2f}; draft ({sum(p.numel() for p in draft.parameters()):,}) "
          f"{d_steps} steps, loss {d_loss:.2f}; target with MTP modules "
          f"({sum(p.numel() for p in target_mtp.parameters()):,}) {m_steps} steps, joint loss {m_loss:.2f}")
    prompt = sample(1, 16)
    new = 8 if quick else 128
    # name: (model, the plain run it is compared with, draft, draft tokens); None: plain decoding
    runs = {"plain": (target, "plain", None, 0)}
    for k in (2,) if quick else (2, 4, 6):
        runs[f"draft k={k}"] = (target, "plain", draft, k)
    runs["self k=4"] = (target, "plain", 1, 4)
    runs["plain (mtp)"] = (target_mtp, "plain (mtp)", None, 0)
    runs["mtp k=2"] = (target_mtp, "plain (mtp)", "mtp", 2)

    def run(name, stats=None):
        model, _, drafter, k = runs[name]
        if drafter is None:
            return model.generate(prompt, new)
        return model.generate(prompt, new, draft=drafter, draft_tokens=k, stats=stats)

    outputs, stats = {}, {}
    for name, (_, plain, drafter, _) in runs.items():
        stats[name] = {}
        outputs[name] = run(name, stats[name])
    times = {k: [] for k in runs}
    with torch.no_grad():
        for _ in range(rounds):
            for name in runs:
                times[name].append(timed(lambda: run(name)))
    print(f"{'decoding':14s} {'tok/s':>9s} {'vs plain':>9s} {'accepted':>9s} {'tok/fwd':>8s} {'same tokens':>12s}")
    for name, (_, plain, drafter, _) in runs.items():
        speed = statistics.median(p / t for p, t in zip(times[plain], times[name]))
        tps = new / statistics.median(times[name])
        if drafter is None:
            print(f"{name:14s} {tps:9,.1f} {speed:8.2f}x {'':>9s} {1.0:8.2f} {'':>12s}")
            continue
        s, same = stats[name], torch.equal(outputs[name], outputs[plain])
        print(f"{name:14s} {tps:9,.1f} {speed:8.2f}x {s['acceptance_rate']:8.0%} "
              f"{s['tokens_per_target_forward']:8.2f} {'yes' if same else 'NO':>12s}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test suite runs this)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-seconds", type=float, default=120.0, help="the target's training time")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    bandwidth = copy_bandwidth(16 if args.quick else 256)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; copy bandwidth {bandwidth / 1e9:.1f} GB/s\n")
    decode_rows(rounds, args.quick, bandwidth)
    speculative_rows(rounds, args.quick, 1.0 if args.quick else args.train_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
