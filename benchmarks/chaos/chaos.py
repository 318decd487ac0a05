"""Chaos run: kill -9 and SIGSTOP trainyard's processes, and black-hole a node, at chosen moments
of real runs, and check each run still ends exactly once, billed to the cent.

    .venv/bin/python benchmarks/chaos/chaos.py [--events 30] [--seed S] [--only SCENARIO]
                                               [--out benchmarks/chaos/results.md]

One event = one fresh small run, one fault, then a wait for convergence (plan.py lists them,
inject.py says how each moment is reached, verdict.py what is checked). Deployments, each started
once and reused by its events (a killed process is restarted, a paused one resumed):

- local: `trainyard serve` on SQLite with the local provider;
- lambda, blackhole: the Lambda simulator in this process (real sshd machines on 127.0.0.x, a
  20 s billing minute) and, per scenario, a fresh PostgreSQL database (127.0.0.1:5432, or
  TRAINYARD_TEST_PG_URL's server) with `trainyard serve` + 2 `trainyard worker`s on it.

Prints a line per event and writes the markdown report to --out (and the same as JSON next to it).
Exit status 0 when every event passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# the checkout (when not pip-installed) and the tests' helpers, imported by name as pytest does
for folder in (REPO, REPO / "tests", REPO / "tests" / "orchestrator"):
    sys.path.insert(0, str(folder))

from benchmarks.chaos.deployment import (  # noqa: E402 - needs the paths above
    HEARTBEAT_S,
    LEASE_S,
    Deployment,
    LambdaFleet,
    LocalServe,
    start_simulator,
)
from benchmarks.chaos.inject import CONVERGE_TIMEOUT_S, EventRunner  # noqa: E402
from benchmarks.chaos.plan import PLAN, SCENARIOS, choose  # noqa: E402
from benchmarks.chaos.report import Summary, as_json, markdown, progress_line  # noqa: E402
from benchmarks.chaos.verdict import Outcome  # noqa: E402
from orchestrator_helpers import LAMBDA_MINUTE_S, create_pg_database, drop_pg_database  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=len(PLAN), help=f"how many events (the plan has {len(PLAN)})")
    p.add_argument("--seed", type=int, default=None, help="seeds every random moment (default: from the clock)")
    p.add_argument(
        "--only", default=None, help=f"scenarios ({', '.join(SCENARIOS)}) or texts of event labels, comma-separated"
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "chaos" / "results.md")
    p.add_argument("--converge-timeout", type=float, default=CONVERGE_TIMEOUT_S, help="seconds after the fault")
    p.add_argument("--keep", action="store_true", help="keep the work folder and the databases")
    return p.parse_args(argv)


#: the harness's own files (this folder, its CI subset, the simulator's `slow` fault): uncommitted
#: changes elsewhere (but documentation) mean the run did not test the committed code alone
HARNESS_FILES = (
    "benchmarks/chaos/",
    "tests/orchestrator/test_chaos.py",
    "provision/simulator/admin.py",
    "provision/simulator/api.py",
    "provision/simulator/cloud.py",
)


def code_version() -> str:
    """The commit, and which uncommitted files the run's processes ran besides it: the harness's
    own, documentation (not run), anything else (named: the committed code was not all it ran)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return f"{REPO} (not a git checkout)"
    status = subprocess.run(
        ["git", "status", "--porcelain", "-z", "--untracked-files=all"], cwd=REPO, capture_output=True, text=True
    ).stdout
    changed = [entry[3:] for entry in status.split("\0") if len(entry) > 3]  # "XY path"
    harness = [p for p in changed if p.startswith(HARNESS_FILES)]
    docs = [p for p in changed if p not in harness and p.endswith(".md")]
    other = [p for p in changed if p not in harness and p not in docs]
    text = f"commit {head}"
    if not other:
        text += " (committed code), plus only the harness's own uncommitted files"
    text += f": {len(harness)} harness file(s) ({', '.join(sorted({_top(p) for p in harness})) or 'none'})"
    if docs:
        text += f"; documentation (not run): {', '.join(docs)}"
    if other:
        text += f"; OTHER UNCOMMITTED CHANGES: {', '.join(other)}"
    return text


def _top(path: str) -> str:
    return "benchmarks/chaos/" if path.startswith("benchmarks/chaos/") else path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so every process started is stopped
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    events = choose(args.events, args.only)
    load = os.getloadavg()
    code = code_version()  # the processes run the code as it is now; an edit meanwhile is noted below
    started = time.time()
    command = shlex.join([".venv/bin/python", "benchmarks/chaos/chaos.py", *(argv or sys.argv[1:])])
    print(f"chaos: {len(events)} events, seed {seed}, load average {load[0]:.2f} at start", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="trainyard-chaos-"))
    outcomes: list[Outcome] = []
    sim = None
    databases: list[str] = []
    try:
        for scenario in SCENARIOS:
            mine = [e for e in events if e.scenario == scenario]
            if not mine:
                continue
            deployment: Deployment
            if scenario == "local":
                deployment = LocalServe(work / "local")
            else:
                sim = sim or start_simulator(work / "sim")
                databases.append(create_pg_database(f"trainyard_chaos_{scenario}"))
                deployment = LambdaFleet(sim, work / scenario, databases[-1])
            runner = EventRunner(deployment, rng, converge_timeout_s=args.converge_timeout)
            try:
                for event in mine:
                    outcomes.append(runner.run(event, len(outcomes) + 1))
                    print(progress_line(len(outcomes), len(events), outcomes[-1]), file=sys.stderr, flush=True)
            finally:
                deployment.close()
    finally:
        if sim is not None:
            sim.stop()
        if not args.keep:
            for url in databases:
                drop_pg_database(url)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"chaos: kept {work} and the databases {databases}", file=sys.stderr)

    took = time.time() - started
    header = [
        "# Chaos run",
        "",
        f"    {command}",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; took {took / 60:.1f} min; seed {seed}",
        f"- machine: {os.cpu_count()} cores, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at start",
        f"- code: {code}" + ("" if code_version() == code else f" at the start; {code_version()} at the end"),
        f"- settings: lease {LEASE_S:g} s, heartbeat {HEARTBEAT_S:g} s (dead after 3 missed), "
        f"simulator billing minute {LAMBDA_MINUTE_S:g} s",
    ]
    report = markdown(header, outcomes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    args.out.with_suffix(".json").write_text(as_json(outcomes))
    print(report)
    print(Summary.of(outcomes).line(), file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
