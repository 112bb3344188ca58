"""Long fuzzing run of the front end and compiler (the test suite runs a CI-sized sample).

    python bench/fuzz.py --cases 20000          # mutated specs, random text, random valid specs

Prints how many cases of each kind were tried and exits non-zero on the first input that
raises anything but archlang's own error (hypothesis shrinks it and prints it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import torch  # noqa: E402

from archlang.api import build, compile_spec, load_model  # noqa: E402
from archlang.spec import ArchError, ArchErrors  # noqa: E402
from tests.strategies import mutated, valid_spec  # noqa: E402

SOURCES = [p.read_text() for p in sorted((ROOT / "examples").glob("*.arch")) + sorted((ROOT / "tests/specs").glob("*.arch"))]


def run(name: str, strategy, cases: int, counts: dict[str, int], valid: bool = False) -> None:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=5000, help="cases per kind")
    args = parser.parse_args()
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
