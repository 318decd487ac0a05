"""The Lambda simulator for tests in any folder: its config, keys, ports and the node interpreter.

Imported as `simhelpers` (pytest puts `tests/` on sys.path for its conftest.py). The provision
tests use a shared session simulator (tests/provision/conftest.py); the orchestrator's end-to-end
tests start their own with a slower clock, from the same pieces.

The simulated machines are this machine, whose torch lives only in this checkout's `.venv` (its
base interpreter has none): the node interpreter is that base interpreter, and
`TORCH_SITE` is the `.venv`'s site-packages, which bootstrap adds to the node venv.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from provision.lambda_cloud.client import LambdaClient
from provision.lambda_cloud.transport import RetryPolicy
from provision.simulator import SimConfig
from provision.simulator.catalog import load_catalog
from provision.simulator.sshd import address_free, find_sshd, generate_key_pair

API_KEY = "sim-test-key-0123456789abcdef"
FAST_RETRY = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05)
BOOT_S = 0.2
MINUTE_S = 0.25
LAUNCH_INTERVAL_S = 0.2

NODE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")
TORCH_SITE = str(Path(importlib.util.find_spec("torch").origin).parent.parent)


def sim_config(state_dir: Path, sshd: str, ssh_port: int, **overrides) -> SimConfig:
    values = dict(
        state_dir=state_dir,
        catalog=load_catalog(),
        api_key=SecretStr(API_KEY),
        boot_s=BOOT_S,
        terminate_s=0.2,
        linger_s=1.0,
        minute_s=MINUTE_S,
        launch_interval_s=LAUNCH_INTERVAL_S,
        requests_per_s=0,
        quota=6,
        ssh_port=ssh_port,
        sshd=sshd,
    )
    values.update(overrides)
    return SimConfig(**values)


def require_sshd() -> str:
    """OpenSSH's sshd, or skip the test where it is missing (fail under CI, which must run it)."""
    path = find_sshd()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("OpenSSH's sshd is missing; CI must run the SSH tests (run scripts/install-sshd.sh)")
        pytest.skip("OpenSSH's sshd is not installed (run scripts/install-sshd.sh to run these tests)")
    return path


def free_ssh_port(addresses=(11, 12, 13, 14, 200, 201)) -> int | None:
    """A random port free on the first instance addresses: test sessions running side by side
    (other checkouts, other suites) then use different ports and never reach each other's sshd."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 40000)
        if all(address_free(f"127.0.0.{n}", port) for n in addresses):
            return port
    return None


def write_key_pair(folder: Path, comment: str = "trainyard-test") -> tuple[Path, str]:
    """A new ed25519 login key: (private key file, public key line)."""
    private, public = generate_key_pair(comment)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "id_ed25519"
    path.write_text(private)
    path.chmod(0o600)
    return path, public


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
