"""Helpers shared by the provision tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import SecretStr

from provision.lambda_cloud.client import LambdaClient
from provision.lambda_cloud.transport import RetryPolicy
from provision.simulator import SimConfig
from provision.simulator.catalog import load_catalog

API_KEY = "sim-test-key-0123456789abcdef"
FAST_RETRY = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05, jitter=0.5)
BOOT_S = 0.2
MINUTE_S = 0.25
LAUNCH_INTERVAL_S = 0.2


def sim_config(state_dir: Path, sshd: str, ssh_port: int, **overrides) -> SimConfig:
    values = dict(
        state_dir=state_dir, catalog=load_catalog(), api_key=SecretStr(API_KEY), boot_s=BOOT_S,
        terminate_s=0.2, linger_s=1.0, minute_s=MINUTE_S, launch_interval_s=LAUNCH_INTERVAL_S,
        requests_per_s=0, quota=6, ssh_port=ssh_port, sshd=sshd,
    )
    values.update(overrides)
    return SimConfig(**values)


def wait_status(client: LambdaClient, instance_id: str, status: str, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        inst = client.get_instance(instance_id)
        if inst.status == status:
            return inst
        if time.monotonic() > deadline:
            raise AssertionError(f"{instance_id} is {inst.status}, not {status}, after {timeout_s}s")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False
