"""Long fuzzing run of the front end and compiler (the test suite runs a CI-sized sample).

    python bench/fuzz.py --cases 20000          # mutated specs, random text, random valid specs
    python bench/fuzz.py --coverage-guided --seconds 600

The default mode prints how many cases of each kind were tried and exits non-zero on the first
input that raises anything but archlang's own error (hypothesis shrinks it and prints it).

`--coverage-guided` runs libFuzzer through atheris (`pip install atheris`; not a dependency of
archlang) over parse → validate → lower → codegen and `fmt`, with archlang's own code
instrumented, seeded with examples/, tests/specs/ and tests/fuzz_corpus/. An input that raises
anything but ArchError, or runs longer than `--timeout`, is a failure; failures are grouped by
exception type and the archlang line that raised, and one input of each is saved. It reports
inputs per second, the inputs that reached new coverage, and the distinct failures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = [p.read_text() for p in sorted((ROOT / "examples").glob("*.arch")) + sorted((ROOT / "tests/specs").glob("*.arch"))]


def run(name: str, strategy, cases: int, counts: dict[str, int], valid: bool = False) -> None:
    # Imported here, not at the top: the coverage-guided child must import archlang itself,
    # under atheris' instrumentation.
    import torch
    from hypothesis import HealthCheck, given, settings

    from archlang.api import build, compile_spec, load_model
    from archlang.spec import ArchError, ArchErrors

    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(text):
        counts[name] += 1
        try:
            compile_spec(text)
        except (ArchError, ArchErrors):
            if valid:
                raise
        if valid:  # a valid spec must also build and run to finite outputs
            model = build(text)
            out = model(torch.randint(0, load_model(text).vocab, (1, 6)))
            out = out[0] if isinstance(out, tuple) else out
            assert torch.isfinite(out).all()
    prop()


# ----------------------------------------------------------------------------- coverage-guided


class Hang(BaseException):
    """An input ran past the per-input time limit (a BaseException, so no `except Exception` in
    the code under test can swallow it)."""


def _failure_key(exc: BaseException) -> str:
    """Exception type and the innermost archlang line it passed through: one key per bug."""
    import traceback

    if isinstance(exc, Hang):  # where the clock ran out says little: all hangs are one kind
        return "Hang (over the per-input limit)"
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if str(ROOT) in f.filename and f"{os.sep}bench{os.sep}" not in f.filename]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    loc = f"{os.path.relpath(where.filename, ROOT)}:{where.lineno}" if where else "?"
    return f"{type(exc).__name__} at {loc}"


def guided_child(work: Path, timeout: float, seconds: int) -> None:
    """Runs inside the child process: libFuzzer never returns, so stats go to a file."""
    import signal

    import atheris

    with atheris.instrument_imports(include=["archlang"]):
        from archlang.api import compile_spec as compile_
        from archlang.spec import ArchError as Err, ArchErrors as Errs
        from archlang.spec.format import format_source

    stats = {"inputs": 0, "started": time.time(), "failures": {}}
    last_save = [0.0]
    (work / "failures").mkdir(exist_ok=True)

    def save() -> None:
        last_save[0] = time.time()
        stats["elapsed"] = time.time() - stats["started"]
        tmp = work / "stats.json.tmp"
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, work / "stats.json")

    def on_alarm(_signum, _frame):
        raise Hang(f"ran past {timeout}s")

    signal.signal(signal.SIGALRM, on_alarm)

    def one_input(data: bytes) -> None:
        stats["inputs"] += 1
        text = data.decode("utf-8", errors="replace")
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            for step in (lambda: compile_(text), lambda: format_source(text)):
                try:
                    step()
                except (Err, Errs):
                    pass
        except Hang as exc:
            record(exc, data)
        except Exception as exc:  # noqa: BLE001 - every other exception is what we look for
            record(exc, data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if time.time() - last_save[0] > 1:  # libFuzzer ends the process without returning here
            save()

    def record(exc: BaseException, data: bytes) -> None:
        key = _failure_key(exc)
        entry = stats["failures"].setdefault(key, {"count": 0, "example": None, "message": str(exc)[:200]})
        entry["count"] += 1
        if entry["example"] is None:
            name = f"failure-{len(stats['failures']):03d}.arch"
            (work / "failures" / name).write_bytes(data)
            entry["example"] = name
            save()

    save()
    atheris.Setup([sys.argv[0], str(work / "corpus"), f"-max_total_time={seconds}", "-max_len=4096", "-rss_limit_mb=4096",
                   "-print_final_stats=1"], one_input)
    atheris.Fuzz()


def guided(seconds: int, timeout: float, keep: Path | None) -> int:
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("--coverage-guided needs atheris: pip install atheris (it is not a dependency of archlang)")
        return 2
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="archlang-fuzz-"))
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = sorted((ROOT / "examples").glob("*.arch")) + sorted((ROOT / "tests/specs").glob("*.arch")) + \
        sorted((ROOT / "tests/fuzz_corpus").glob("*.arch"))
    for seed in seeds:
        shutil.copyfile(seed, corpus / f"seed-{seed.parent.name}-{seed.name}")
    before = len(list(corpus.iterdir()))
    with open(work / "libfuzzer.log", "w") as log:
        child = subprocess.run([sys.executable, __file__, "--guided-child", str(work), "--timeout", str(timeout),
                                "--seconds", str(seconds)], stdout=log, stderr=subprocess.STDOUT)
    stats = json.loads((work / "stats.json").read_text())
    new = len(list(corpus.iterdir())) - before
    rate = stats["inputs"] / max(stats["elapsed"], 1e-9)
    print(f"coverage-guided (atheris/libFuzzer) over parse → validate → lower → codegen and fmt, {seconds}s")
    print(f"{'seeds':28s} {len(seeds):8,d}")
    print(f"{'inputs tried':28s} {stats['inputs']:8,d}  ({rate:,.0f} inputs/s)")
    print(f"{'inputs with new coverage':28s} {new:8,d}")
    print(f"{'distinct failures':28s} {len(stats['failures']):8,d}")
    for key, entry in sorted(stats["failures"].items()):
        print(f"  {key}: {entry['count']:,}x, e.g. {work / 'failures' / entry['example']} ({entry['message'][:80]})")
    if child.returncode not in (0,) and not stats["failures"]:
        print(f"libFuzzer stopped with exit {child.returncode}; see {work / 'libfuzzer.log'}")
        return 1
    return 1 if stats["failures"] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=5000, help="cases per kind")
    parser.add_argument("--coverage-guided", action="store_true", help="libFuzzer through atheris (see above)")
    parser.add_argument("--seconds", type=int, default=600, help="how long the coverage-guided run lasts")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds one input may take before it counts as a hang")
    parser.add_argument("--work", type=Path, help="keep the corpus and failures here (default: a temporary folder)")
    parser.add_argument("--guided-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.guided_child:
        guided_child(args.guided_child, args.timeout, args.seconds)
        return 0
    if args.coverage_guided:
        return guided(args.seconds, args.timeout, args.work)
    from hypothesis import strategies as st

    from tests.strategies import mutated, valid_spec

    counts = {"mutated": 0, "random text": 0, "valid": 0}
    start = time.perf_counter()
    run("mutated", mutated(SOURCES), args.cases, counts)
    run("random text", st.text(max_size=400), args.cases, counts)
    run("valid", valid_spec(), max(1, args.cases // 10), counts, valid=True)
    took = time.perf_counter() - start
    for name, n in counts.items():
        print(f"{name:12s} {n:8,d} cases")
    print(f"{'total':12s} {sum(counts.values()):8,d} cases in {took:.1f}s, no unexpected exception")
    print("(valid specs were also built and run to finite outputs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
