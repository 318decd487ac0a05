"""How fast the simulator and our SSH path are: API round trips, launch to first command, terminate.

    .venv/bin/python benchmarks/provision/bench_simulator.py [--instances 3] [--ssh-port 22022]

Starts a simulator in-process (boot delay 0, no rate limits), then for each instance measures:
launch call, launch -> active, first SSH command (connect + pin + run), a warm command, and
terminate -> sshd gone. Prints a JSON summary. Useful to see what the controller's loop costs on
the simulator apart from the waits Lambda itself imposes (boot minutes, launch spacing).
"""

from __future__ import annotations

import argparse
import getpass
import json
import statistics
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

from provision.lambda_cloud import LambdaClient, RetryPolicy
from provision.simulator import SimConfig, SimulatorServer
from provision.simulator.catalog import load_catalog
from provision.simulator.sshd import find_sshd, generate_key_pair
from provision.transport.connection import SshNode, SshTarget
from provision.transport.known_hosts import PinnedHostKeys

KEY = "bench-key"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--ssh-port", type=int, default=22022)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ty-bench-"))
    private, public = generate_key_pair("bench")
    (tmp / "id").write_text(private)
    (tmp / "id").chmod(0o600)
    config = SimConfig(
        state_dir=tmp / "sim",
        catalog=load_catalog(),
        api_key=SecretStr(KEY),
        boot_s=0,
        launch_interval_s=0,
        requests_per_s=0,
        ssh_port=args.ssh_port,
        sshd=find_sshd() or "",
        quota=args.instances + 1,
    )
    rows: dict[str, list[float]] = {
        k: [] for k in ("api_get", "launch_call", "to_active", "first_cmd", "warm_cmd", "terminate")
    }
    with (
        SimulatorServer(config) as server,
        LambdaClient(KEY, base_url=server.url, launch_interval_s=0, retry=RetryPolicy(attempts=1)) as client,
    ):
        client.add_ssh_key("bench", public)
        for _ in range(20):
            t = time.perf_counter()
            client.list_instances()
            rows["api_get"].append(time.perf_counter() - t)
        known = PinnedHostKeys(tmp / "known_hosts")
        for n in range(args.instances):
            t0 = time.perf_counter()
            iid = client.launch(
                region="us-east-1",
                instance_type="cpu_4x_general" if n < 2 else "gpu_1x_a10",
                ssh_key_name="bench",
                name=f"bench-{n}",
            )
            rows["launch_call"].append(time.perf_counter() - t0)
            while (inst := client.get_instance(iid)).status != "active":
                time.sleep(0.01)
            rows["to_active"].append(time.perf_counter() - t0)
            node = SshNode.to(SshTarget(inst.ip, getpass.getuser(), tmp / "id", args.ssh_port), known)
            t = time.perf_counter()
            node.run("true")
            rows["first_cmd"].append(time.perf_counter() - t)
            t = time.perf_counter()
            node.run("true")
            rows["warm_cmd"].append(time.perf_counter() - t)
            node.close()
            t = time.perf_counter()
            client.terminate([iid])
            rows["terminate"].append(time.perf_counter() - t)
            known.forget(inst.ip, args.ssh_port)  # as LambdaProvider.terminate does: the address is reused
    print(
        json.dumps(
            {k: {"median_ms": round(statistics.median(v) * 1000, 1), "n": len(v)} for k, v in rows.items()}, indent=2
        )
    )


if __name__ == "__main__":
    main()
