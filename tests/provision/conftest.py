"""Fixtures for provision tests: a real Lambda simulator on loopback, with real sshd machines.

The simulator runs in a thread of the test process (uvicorn on a free 127.0.0.1 port); the Lambda
client talks real HTTP to it, and Fabric talks real SSH to its sshd instances on 127.0.0.x. Times
are compressed (boot in 0.2 s, a billing "minute" of 0.25 s, launches 0.2 s apart).

Tests that need sshd skip when OpenSSH's server is missing, except under CI, where they fail:
CI must run them (scripts/install-sshd.sh installs it).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from provision.lambda_cloud.client import LambdaClient
from provision.simulator import SimulatorServer
from provision_helpers import (
    API_KEY,
    FAST_RETRY,
    LAUNCH_INTERVAL_S,
    free_ssh_port,
    require_sshd,
    sim_config,
    write_key_pair,
)


@pytest.fixture(scope="session")
def sshd_path() -> str:
    return require_sshd()


@pytest.fixture(scope="session")
def ssh_port() -> int:
    """A random port free on the first instance addresses: test sessions running side by side
    (other checkouts, other suites) then use different ports and never reach each other's sshd."""
    port = free_ssh_port()
    if port is None:
        pytest.fail("no free port for the simulated machines' sshd on 127.0.0.x")
    return port


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory) -> tuple[Path, str]:
    """(private key file, public key line) used to log in to simulated machines."""
    return write_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def sim(tmp_path_factory, sshd_path, ssh_port):
    """The shared simulator (one per test session)."""
    server = SimulatorServer(sim_config(tmp_path_factory.mktemp("sim"), sshd_path, ssh_port)).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clean_sim(request):
    """Instances, faults and capacity changes never leak from one test into the next."""
    yield
    if "sim" not in request.fixturenames:
        return
    cloud = request.getfixturevalue("sim").cloud
    live = [i for i, inst in cloud.instances.items() if inst.status in ("booting", "active", "unhealthy")]
    if live:
        cloud.terminate(live)
    with cloud.lock:
        cloud.faults.rate_limited = 0
        cloud.faults.server_errors.clear()
        cloud.faults.no_capacity.clear()
        cloud.capacity = {
            (t, r): n for t, item in cloud.catalog.instance_types.items() for r, n in item.capacity.items()
        }
        for inst in cloud.instances.values():
            inst.capacity_returned = True


@pytest.fixture
def admin(sim):
    with httpx.Client(base_url=sim.url, timeout=10, trust_env=False) as client:
        yield client


@pytest.fixture
def client(sim):
    with LambdaClient(
        API_KEY, base_url=sim.url, retry=FAST_RETRY, launch_interval_s=LAUNCH_INTERVAL_S, timeout_s=10
    ) as c:
        yield c


@pytest.fixture
def registered_key(client, key_pair) -> str:
    """The name of the test public key, registered with the simulator."""
    name = "trainyard-test"
    if not any(k.name == name for k in client.list_ssh_keys()):
        client.add_ssh_key(name, key_pair[1])
    return name
