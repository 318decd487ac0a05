"""Orchestration overhead of a local run: what the service adds beyond the trainer's own time.

    .venv/bin/python benchmarks/orchestration/bench_overhead.py [--reps 3] [--interval 1.0]

For the same small run it measures two things, alternating, `--reps` times each:

- direct: the exact command lines the controller would run (`trainer.prepare`, torchrun
  `trainer.train`, `trainer.evaluate`), started one after the other by this script, no service;
- service: the same run submitted to a real service (REST API + controller in one process,
  SQLite, `local` provider), polled over HTTP until it ends.

and reports, per path, the two intervals that matter to a user:

- submit -> first training step (direct: start of prepare -> first step): everything before
  the model trains (placement, data, config, process start, torch import);
- last step -> succeeded (direct: last step -> evaluation exit): evaluation plus bookkeeping.

The overhead is the service's interval minus the direct one (medians). Step times are the
trainer's own (`time` in metrics.jsonl); submit and succeeded are the service's timestamps.

On a shared or busy machine the trainer's own time varies by seconds from run to run, which
swamps that difference. So the script also measures the controller's own latency directly, as
the gaps between what the node shows and what the controller did next:

- submit -> data preparation launched (claim, placement, run directory);
- prepared data committed (manifest.json written) -> trainer launched (config, torchrun start);
- trainer exited (train.exit written) -> evaluation launched (final metrics read, transition);
- evaluation exited (eval.exit written) -> succeeded (result stored, instance terminated, cost).

Their sum is the time the service adds to a run, independent of how fast the trainer ran.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, when not pip-installed

from orchestrator.controller import commands
from orchestrator.db.migrations import upgrade
from orchestrator.spec import validate_spec
from provision.launch import Launch

REPO = Path(__file__).resolve().parents[2]

SPEC = {
    "name": "bench-overhead",
    "model": {"preset": "gpt2-tiny", "overrides": {"n_layer": 2, "n_embd": 64, "n_head": 2}},
    "data": {"source": "builtin:corpus", "max_tokens": 60000},
    "training": {
        "seq_len": 64,
        "micro_batch": 8,
        "max_tokens": 8192,
        "warmup_steps": 2,
        "log_every": 1,
        "eval_every": 1000,
        "eval_tokens": 2048,
        "checkpoint_every": 1000,
    },
    "evaluation": {"test_loss": True, "test_max_tokens": 2048},
}

# the real service command, as users run it (python -m orchestrator.cli is `trainyard`)
SERVE = (sys.executable, "-m", "orchestrator.cli", "serve")


def _metric_times(run_dir: Path) -> tuple[float, float]:
    """(time of the first train step, time of the `done` line) from metrics.jsonl."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = min(m["time"] for m in lines if m["kind"] == "train")
    done = max(m["time"] for m in lines if m["kind"] == "done")
    return first, done


def direct(work: Path, env: dict[str, str]) -> tuple[float, float]:
    spec = validate_spec(SPEC)
    run_dir = work / f"direct-{time.time_ns()}"
    run_dir.mkdir(parents=True)
    wd = str(run_dir)
    extra_env = {"PYTHONPATH": str(REPO)}
    t0 = time.time()
    _run(commands.prepare_command(sys.executable, extra_env, spec, wd), env)
    (run_dir / commands.CONFIG).write_text(json.dumps(commands.trainer_config(spec, wd)))
    _run(commands.train_command(sys.executable, extra_env, spec, wd, node_rank=0, master_addr=None), env)
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    manifest = json.loads((run_dir / commands.DATA / "manifest.json").read_text())
    _run(
        commands.eval_command(
            sys.executable, extra_env, spec, wd, checkpoint=latest, test_sha256=manifest["splits"]["test"]["sha256"]
        ),
        env,
    )
    t_end = time.time()
    first, done = _metric_times(run_dir)
    return first - t0, t_end - done


def _run(launch: Launch, env: dict[str, str]) -> None:
    """What Launch.start does, in the foreground: its env file (mode 600), then its line."""
    fd = os.open(launch.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(launch.env_file_text)
    subprocess.run(
        launch.command,
        shell=True,
        check=True,
        cwd=launch.workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _event_time(events: list[dict], prefix: str) -> float:
    return next(_ts(e["time"]) for e in events if e["message"].startswith(prefix))


def via_service(client: httpx.Client, data_dir: Path) -> tuple[tuple[float, float], list[float]]:
    r = client.post("/runs", json=SPEC)
    r.raise_for_status()
    run = r.json()
    while run["status"] not in ("succeeded", "failed", "cancelled", "stopped"):
        time.sleep(0.2)  # the service's times are its own timestamps; polling only waits
        run = client.get(f"/runs/{run['id']}").json()
    if run["status"] != "succeeded":
        raise SystemExit(f"benchmark run {run['id']} ended {run['status']}: {run['status_reason']}")
    run_dir = data_dir / "runs" / f"ty-{run['id']}-0"
    first, done = _metric_times(run_dir)
    submitted, finished = _ts(run["created_at"]), _ts(run["finished_at"])
    events = client.get(f"/runs/{run['id']}/events", params={"limit": 1000}).json()["events"]

    def mtime(name: str) -> float:
        return (run_dir / name).stat().st_mtime

    gaps = [
        _event_time(events, "preparing data") - submitted,
        _event_time(events, "trainer launched") - mtime("data/manifest.json"),
        _event_time(events, "evaluating") - mtime("train.exit"),
        finished - mtime("eval.exit"),
    ]
    return (first - submitted, finished - done), gaps


GAPS = (
    "submit -> prepare launched",
    "data ready -> trainer launched",
    "trainer exited -> eval launched",
    "eval exited -> succeeded",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--interval", type=float, default=1.0, help="the controller's reconcile_interval_s")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the service below is stopped too

    work = Path(tempfile.mkdtemp(prefix="trainyard-bench-"))
    db = f"sqlite:///{work / 'trainyard.db'}"
    upgrade(db)
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TRAINYARD_DATA_DIR": str(work / "data"),
        "TRAINYARD_DATABASE_URL": db,
        "TRAINYARD_PORT": str(port),
        "TRAINYARD_TRAINER_PYTHON": sys.executable,
        "TRAINYARD_RECONCILE_INTERVAL_S": str(args.interval),
    }
    service = subprocess.Popen([*SERVE], env=env, cwd=REPO)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30)
    try:
        for _ in range(100):
            try:
                client.get("/health").raise_for_status()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        results: dict[str, list[tuple[float, float]]] = {"direct": [], "service": []}
        gaps: list[list[float]] = []
        for rep in range(args.reps):
            results["direct"].append(direct(work / "direct", env))
            service_times, run_gaps = via_service(client, work / "data")
            results["service"].append(service_times)
            gaps.append(run_gaps)
            print(
                f"rep {rep + 1}: direct {results['direct'][-1]}, service {service_times}, controller gaps {run_gaps}",
                file=sys.stderr,
            )
    finally:
        service.terminate()
        service.wait(timeout=30)

    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in results.items()}
    print(f"reconcile_interval_s={args.interval}, {args.reps} reps, medians in seconds")
    print(f"{'':<34}{'direct':>9}{'service':>9}{'diff':>9}")
    for i, label in enumerate(("submit -> first training step", "last step -> succeeded")):
        d, s = med["direct"][i], med["service"][i]
        print(f"{label:<34}{d:>9.2f}{s:>9.2f}{s - d:>9.2f}")
    print("the controller's own latency (median per gap):")
    for i, label in enumerate(GAPS):
        print(f"  {label:<32}{statistics.median(g[i] for g in gaps):>9.2f}")
    print(f"  {'total':<32}{statistics.median(sum(g) for g in gaps):>9.2f}")
    print(json.dumps({"interval_s": args.interval, "reps": args.reps, "raw": results, "gaps": gaps}))


if __name__ == "__main__":
    main()
