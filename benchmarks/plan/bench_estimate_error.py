"""Estimate error of `measured` plan rows against the Lambda simulator's real runs.

Runs the end-to-end test that does it (tests/orchestrator/test_e2e_throughput.py, "...within 15
percent": one finished run on a type, then the plan's `measured` row for that type, then a second
run of the same spec, timed) `--rounds` times, each in a fresh service and simulator, and reports
the estimate against what the second run took: per round and the median and spread of the
relative error. The test prints one line per round, which this script reads.

    .venv/bin/python benchmarks/plan/bench_estimate_error.py --rounds 3
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"estimate (?P<est>[\d.]+) s \(setup (?P<setup>[\d.]+), training (?P<train>[\d.]+), "
    r"evaluation (?P<eval>[\d.]+)\); the next run took (?P<took>[\d.]+) s"
)


def one_round() -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "-k",
            "15_percent",
            "tests/orchestrator/test_e2e_throughput.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    found = LINE.search(out.stdout)
    if found is None:
        raise SystemExit(f"the test printed no estimate (exit {out.returncode}):\n{out.stdout[-3000:]}")
    return {k: float(v) for k, v in found.groupdict().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    errors = []
    for i in range(args.rounds):
        r = one_round()
        error = r["est"] / r["took"] - 1
        errors.append(error)
        print(
            f"round {i + 1}: estimate {r['est']:.1f} s (setup {r['setup']:.1f} + training {r['train']:.1f} "
            f"+ evaluation {r['eval']:.1f}), the run took {r['took']:.1f} s: error {100 * error:+.1f}%",
            flush=True,
        )
    print(
        f"median error {100 * statistics.median(errors):+.1f}%, "
        f"range {100 * min(errors):+.1f}% to {100 * max(errors):+.1f}% over {len(errors)} rounds"
    )


if __name__ == "__main__":
    main()
