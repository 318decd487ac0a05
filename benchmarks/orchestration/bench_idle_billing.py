"""Idle billing on the Lambda simulator: seconds an instance bills after its last useful work.

    .venv/bin/python benchmarks/orchestration/bench_idle_billing.py [--runs 5] [--nodes 2] [--interval 1.0]

Every run is a real `provider: lambda` run through a real service (REST API + controller in one
process, SQLite) against the simulator in this process (its instances are sshd machines on
127.0.0.x): placement, bootstrap, torchrun on every node, evaluation on node 0, termination.

For each instance the script measures, from the simulator's own records:

- last work: node 0's is the end of the evaluation (the mtime of `eval.json`, the evaluation's
  last write); every other node's is the last training step (the trainer's `done` line, which
  rank 0 writes when every rank has finished its last step);
- termination call: when the simulator took the terminate request (its billing ledger's
  `ended_at`, where Lambda stops billing).

Idle billing is the gap between the two. The goal is under 10 s. Bootstrap overhead (instance
active -> first training step) is measured in benchmarks/provision/.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, when not pip-installed

from orchestrator.db.migrations import upgrade
from provision.lambda_cloud import LambdaClient
from provision.simulator import SimConfig, SimulatorServer
from provision.simulator.catalog import load_catalog
from provision.simulator.sshd import address_free, find_sshd, generate_key_pair

REPO = Path(__file__).resolve().parents[2]

API_KEY = "bench-idle-billing-key-0123456789"
KEY_NAME = "trainyard-bench"
#: the simulated nodes are this machine, whose torch lives in this checkout's .venv
NODE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")
TORCH_SITE = str(Path(importlib.util.find_spec("torch").origin).parent.parent)

# the real service command, as users run it (python -m orchestrator.cli is `trainyard`)
SERVE = (sys.executable, "-m", "orchestrator.cli", "serve")


def spec(nodes: int) -> dict:
    return {
        "name": "bench-idle-billing",
        "model": {"preset": "gpt2-tiny", "overrides": {"n_layer": 1, "n_embd": 64, "n_head": 2}},
        "data": {"source": "builtin:corpus", "max_tokens": 60000},
        "training": {
            "seq_len": 64,
            "micro_batch": 4,
            "max_tokens": 8192,
            "warmup_steps": 2,
            "log_every": 4,
            "eval_every": 1000,
            "eval_tokens": 512,
            "checkpoint_every": 1000,
        },
        "compute": {"provider": "lambda", "instance_type": "cpu_4x_general", "nodes": nodes},
        "evaluation": {"test_loss": True, "test_max_tokens": 1024},
    }


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ssh_port() -> int:
    for port in range(31000, 40000, 7):
        if all(address_free(f"127.0.0.{n}", port) for n in (11, 12, 13, 14)):
            return port
    raise SystemExit("no free port for the simulated machines' sshd")


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def measure(sim: SimulatorServer, run_id: str) -> list[dict]:
    """Idle seconds per instance of an ended run (from the simulator's disks and ledger)."""
    ledger = {e["instance_id"]: e for e in sim.cloud.ledger.snapshot(time.time())["entries"]}
    rows = []
    done_time = None
    for entry in sorted(
        (e for e in ledger.values() if (e["name"] or "").startswith(f"ty-{run_id}-")), key=lambda e: e["name"]
    ):
        rank = int(entry["name"].rsplit("-", 1)[1])
        run_dir = (
            sim.cloud.state_dir / "instances" / entry["instance_id"] / "disk" / "trainyard" / "runs" / entry["name"]
        )
        if rank == 0:
            metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            done_time = max(m["time"] for m in metrics if m["kind"] == "done")
            last, what = (run_dir / "eval.json").stat().st_mtime, "evaluation written"
        else:
            last, what = done_time, "last training step"
        rows.append(
            {
                "name": entry["name"],
                "last_work": what,
                "idle_s": entry["ended_at"] - last,
                "billed_minutes": entry["billed_minutes"],
                # when torchrun exited after the last step (None: terminated before it did)
                "train_exit_after_done_s": _mtime(run_dir / "train.exit") - done_time
                if (run_dir / "train.exit").exists()
                else None,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--interval", type=float, default=1.0, help="the controller's reconcile_interval_s")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the service below is stopped too
    sshd = find_sshd()
    if sshd is None:
        raise SystemExit("OpenSSH's sshd is needed (scripts/install-sshd.sh)")

    work = Path(tempfile.mkdtemp(prefix="trainyard-bench-idle-"))
    private, public = generate_key_pair(KEY_NAME)
    key_file = work / "id_ed25519"
    key_file.write_text(private)
    key_file.chmod(0o600)
    sim = SimulatorServer(
        SimConfig(
            state_dir=work / "sim",
            catalog=load_catalog(),
            api_key=SecretStr(API_KEY),
            boot_s=1.0,
            terminate_s=1.0,
            linger_s=3600,
            minute_s=60.0,
            launch_interval_s=0.5,
            requests_per_s=0,
            quota=8,
            ssh_port=_ssh_port(),
            sshd=sshd,
        )
    ).start()
    with LambdaClient(API_KEY, base_url=sim.url, launch_interval_s=0) as lambda_client:
        lambda_client.add_ssh_key(KEY_NAME, public)

    db = f"sqlite:///{work / 'trainyard.db'}"
    upgrade(db)
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TRAINYARD_DATA_DIR": str(work / "data"),
        "TRAINYARD_DATABASE_URL": db,
        "TRAINYARD_PORT": str(port),
        "TRAINYARD_RECONCILE_INTERVAL_S": str(args.interval),
        "TRAINYARD_LAMBDA_API_KEY": API_KEY,
        "TRAINYARD_LAMBDA_API_URL": sim.url,
        "TRAINYARD_LAMBDA_SSH_KEY_NAME": KEY_NAME,
        "TRAINYARD_LAMBDA_SSH_PORT": str(sim.cloud.config.ssh_port),
        "TRAINYARD_LAMBDA_LAUNCH_INTERVAL_S": "0.5",
        "TRAINYARD_SSH_PRIVATE_KEY_FILE": str(key_file),
        "TRAINYARD_SSH_USER": getpass.getuser(),
        "TRAINYARD_NODE_PYTHON": NODE_PYTHON,
        "TRAINYARD_NODE_TORCH_SITE_PACKAGES": TORCH_SITE,
        "TRAINYARD_NODE_SOCKET_IFNAME": "lo",
        "TRAINYARD_NODE_ENV": json.dumps({"OMP_NUM_THREADS": "1"}),
        "TRAINYARD_NODE_ACTIVE_POLL_S": "0.5",
    }
    with open(work / "service.log", "w") as log:  # the service writes through its own copy
        service = subprocess.Popen([*SERVE], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30)
    results: list[list[dict]] = []
    try:
        for _ in range(150):
            try:
                client.get("/health").raise_for_status()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        for n in range(args.runs):
            run = client.post("/runs", json=spec(args.nodes)).json()
            while run["status"] not in ("succeeded", "failed", "cancelled", "stopped"):
                time.sleep(0.5)
                run = client.get(f"/runs/{run['id']}").json()
            if run["status"] != "succeeded":
                raise SystemExit(
                    f"run {run['id']} ended {run['status']}: {run['status_reason']} "
                    f"(service log: {work / 'service.log'})"
                )
            time.sleep(3)  # the last terminations are confirmed a pass or two later
            results.append(measure(sim, run["id"]))
            print(
                f"run {n + 1}: "
                + ", ".join(f"{r['name'].rsplit('-', 1)[1]}: {r['idle_s']:.2f} s" for r in results[-1]),
                file=sys.stderr,
            )
    finally:
        service.terminate()
        service.wait(timeout=30)
        client.close()
        sim.stop()

    worst = [max(r["idle_s"] for r in rows) for rows in results]
    per_rank: dict[str, list[float]] = {}
    for rows in results:
        for r in rows:
            per_rank.setdefault(f"node {r['name'].rsplit('-', 1)[1]} ({r['last_work']})", []).append(r["idle_s"])
    print(f"{args.runs} runs x {args.nodes} nodes, reconcile_interval_s={args.interval}; idle billing, seconds")
    print(f"{'':<44}{'median':>8}{'min':>8}{'max':>8}")
    for label, values in sorted(per_rank.items()):
        print(f"{label:<44}{statistics.median(values):>8.2f}{min(values):>8.2f}{max(values):>8.2f}")
    print(f"{'worst instance of a run':<44}{statistics.median(worst):>8.2f}{min(worst):>8.2f}{max(worst):>8.2f}")
    print(json.dumps({"runs": args.runs, "nodes": args.nodes, "interval_s": args.interval, "raw": results}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
