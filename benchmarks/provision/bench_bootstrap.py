"""Bootstrap overhead: seconds from an instance turning active to the trainer's first step.

    .venv/bin/python benchmarks/provision/bench_bootstrap.py [--runs 3] [--data upload|prepare]

Starts a simulator in-process (boot delay 0, no rate limits). Each run rents a FRESH instance and
times, from the moment it is active: SSH answering, `provision.bootstrap.bootstrap` (each phase),
the config upload (`Node.write_json`) and the trainer's start (`provision.launch.torchrun_command`,
1 node x 1 process, through `Node.start_detached` as the controller does), and the first
`train` line in metrics.jsonl (`log_every: 1`, so that is step 1, timed by the line's own
timestamp). Then it stops the trainer and terminates the instance.

cold: an empty wheel cache (the trainer wheel is built during the bootstrap).
warm: a wheel cache that already holds the wheel for these sources (how a long-running
      controller bootstraps every node after its first).
Either way the node itself is new: its venv, install and import check are always part of it.

Data: `upload` (default) sends a folder prepared once beforehand, as a controller with a data cache
would; `prepare` runs `trainer.prepare` on each node. Prints one JSON object (medians and every run).
"""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from provision.bootstrap import BootstrapSpec, bootstrap
from provision.lambda_cloud import LambdaClient, LambdaProvider, RetryPolicy
from provision.launch import torchrun_command
from provision.placement import place
from provision.simulator import SimConfig, SimulatorServer
from provision.simulator.catalog import load_catalog
from provision.simulator.sshd import address_free, find_sshd, generate_key_pair
from provision.transport.connection import SshTimeouts
from provision.transport.known_hosts import PinnedHostKeys
from provision.wheels import REPO_ROOT, WheelCache

KEY = "bench-key"
#: the simulated nodes are this machine: its base interpreter, and the .venv's torch (see
#: tests/provision/test_bootstrap.py)
NODE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")
TORCH_SITE = str(Path(importlib.util.find_spec("torch").origin).parent.parent)
CONFIG = {
    "model": "gpt2-tiny",
    "model_overrides": {"n_layer": 1, "n_embd": 64, "n_head": 2},
    "data_dir": "set per node",
    "seq_len": 64,
    "micro_batch": 4,
    "max_tokens": 12288,
    "warmup_steps": 2,
    "log_every": 1,
    "eval_every": 1000,
    "eval_tokens": 256,
    "checkpoint_every": 1000,
    "device": "cpu",
    "dtype": "fp32",
}


def one_run(provider: LambdaProvider, wheels: WheelCache, name: str, data: str, local_data: Path) -> dict:
    inst = place(provider, name=name, instance_types=["cpu_4x_general"], timeout_s=30, poll_s=0.5)
    while (inst := provider.get(inst.id)).status.value != "active":
        time.sleep(0.02)
    active_at = time.time()
    node = provider.node(inst)
    node.wait_for_ssh(time.monotonic() + 30, interval_s=0.05)
    ssh_at = time.time()
    spec = BootstrapSpec(
        run_dir="runs/bench",
        python=NODE_PYTHON,
        torch_site_packages=TORCH_SITE,
        data_local_dir=local_data if data == "upload" else None,
        prepare_args=("--max-tokens", "60000"),
    )
    result = bootstrap(node, spec, wheels=wheels)
    boot_at = time.time()
    config = f"{result.run_dir}/config.json"
    node.write_json(config, {**CONFIG, "data_dir": result.data_dir})
    torchrun_command(
        python=result.python, nproc_per_node=1, config=config, run_dir=result.run_dir, env={"OMP_NUM_THREADS": "1"}
    ).start(node)
    started_at = time.time()
    first_step = None
    deadline = time.monotonic() + 180
    while first_step is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"no training step after 180 s:\n{node.read_text(result.run_dir + '/train.log')}")
        for line in (node.read_text(f"{result.run_dir}/metrics.jsonl") or "").splitlines():
            row = json.loads(line)
            if row.get("kind") == "train":
                first_step = row["time"]
                break
        else:
            time.sleep(0.1)
    node.stop(workdir=result.run_dir, name="train", grace_s=5)
    node.close()
    provider.terminate([inst.id])
    return {
        "active_to_first_step_s": round(first_step - active_at, 2),
        "ssh_s": round(ssh_at - active_at, 2),
        "bootstrap_s": round(boot_at - ssh_at, 2),
        "start_s": round(started_at - boot_at, 2),
        "torchrun_to_first_step_s": round(first_step - started_at, 2),
        "wheel_built": "wheel" in result.done,
        "phases": {k: round(v, 2) for k, v in result.timings.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per mode (cold, warm)")
    ap.add_argument("--data", choices=("upload", "prepare"), default="upload")
    ap.add_argument("--ssh-port", type=int, default=0, help="sshd port of the machines (0: a free one)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ty-bench-boot-"))
    private, public = generate_key_pair("bench")
    (tmp / "id").write_text(private)
    (tmp / "id").chmod(0o600)
    ssh_port = args.ssh_port or next(
        p
        for p in iter(lambda: random.randrange(20000, 30000), None)
        if all(address_free(f"127.0.0.{n}", p) for n in range(11, 16))
    )
    local_data = tmp / "data"
    if args.data == "upload":
        subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer.prepare",
                "--source",
                "builtin:corpus",
                "--out",
                str(local_data),
                "--max-tokens",
                "60000",
            ],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            timeout=300,
        )
    config = SimConfig(
        state_dir=tmp / "sim",
        catalog=load_catalog(),
        api_key=SecretStr(KEY),
        boot_s=0,
        launch_interval_s=0,
        requests_per_s=0,
        ssh_port=ssh_port,
        sshd=find_sshd() or "",
        quota=4,
        linger_s=1,
    )
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    with (
        SimulatorServer(config) as server,
        LambdaClient(KEY, base_url=server.url, launch_interval_s=0, retry=RetryPolicy(attempts=2)) as client,
    ):
        provider = LambdaProvider(
            client,
            ssh_key_name="bench",
            private_key_file=tmp / "id",
            known_hosts=PinnedHostKeys(tmp / "known_hosts"),
            ssh_user=getpass.getuser(),
            ssh_port=ssh_port,
            ssh_timeouts=SshTimeouts(connect_s=2, command_s=120),
        )
        provider.ensure_ssh_key(public)
        warm = WheelCache(tmp / "warm-cache")
        warm.get()
        n = 0
        for i in range(args.runs):
            for mode in ("cold", "warm"):  # interleaved, so machine load drifts affect both alike
                wheels = WheelCache(tmp / f"cold-cache-{i}") if mode == "cold" else warm
                runs[mode].append(one_run(provider, wheels, f"bench-{n}", args.data, local_data))
                n += 1
                print(f"{mode} {i}: {runs[mode][-1]}", file=sys.stderr)
    summary = {
        "command": " ".join(["benchmarks/provision/bench_bootstrap.py", *sys.argv[1:]]),
        "data": args.data,
        "median_active_to_first_step_s": {
            m: statistics.median(r["active_to_first_step_s"] for r in rows) for m, rows in runs.items()
        },
        "median_bootstrap_s": {m: statistics.median(r["bootstrap_s"] for r in rows) for m, rows in runs.items()},
        "runs": runs,
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
