"""The `ssh` provider: claim and release the user's own hosts, and drive them like any node."""

from __future__ import annotations

import getpass
import json

import pytest

from provision.base import InstanceStatus
from provision.errors import InsufficientCapacity, InvalidRequest
from provision.simulator.sshd import Machine, address_free
from provision.ssh_hosts import SshProvider, load_hosts
from provision.transport.connection import SshTimeouts
from provision.transport.known_hosts import PinnedHostKeys


@pytest.fixture
def box(sshd_path, ssh_port, key_pair, tmp_path):
    """A real sshd on a free loopback address, standing in for the user's GPU box."""
    address = next(f"127.0.0.{n}" for n in range(200, 250) if address_free(f"127.0.0.{n}", ssh_port))
    machine = Machine(tmp_path / "box", "own-box", key_pair[1], sim_tag="test-own-box")
    machine.start(address, ssh_port, sshd=sshd_path)
    yield machine
    machine.destroy()


@pytest.fixture
def hosts_file(box, ssh_port, key_pair, tmp_path):
    path = tmp_path / "hosts.json"
    path.write_text(
        json.dumps(
            {
                "hosts": [
                    {
                        "name": "box1",
                        "host": box.address,
                        "port": ssh_port,
                        "user": getpass.getuser(),
                        "key_file": str(key_pair[0]),
                        "gpus": 8,
                        "instance_type": "gpu_8x_local",
                        "region": "home",
                        "price_cents_per_hour": 0,
                    },
                    {
                        "name": "laptop",
                        "host": "127.0.0.9",
                        "port": ssh_port,
                        "user": getpass.getuser(),
                        "key_file": str(key_pair[0]),
                        "gpus": 1,
                    },
                ]
            }
        )
    )
    return path


def make(hosts_file, tmp_path) -> SshProvider:
    return SshProvider(
        load_hosts(hosts_file),
        state_file=tmp_path / "claims.json",
        known_hosts=PinnedHostKeys(tmp_path / "known_hosts"),
        ssh_timeouts=SshTimeouts(connect_s=2, command_s=20),
    )


def test_claim_drive_release(hosts_file, tmp_path):
    provider = make(hosts_file, tmp_path)
    types = {t.name: t for t in provider.instance_types()}
    assert types["gpu_8x_local"].regions_with_capacity == ("home",) and types["ssh_1x"].gpus == 1
    inst = provider.launch(name="ty-own-0", instance_type="gpu_8x_local", region="home")
    assert inst.status is InstanceStatus.active and inst.extra["host_name"] == "box1"
    with pytest.raises(InsufficientCapacity):
        provider.launch(name="ty-own-1", instance_type="gpu_8x_local", region="home")
    with pytest.raises(InvalidRequest):
        provider.launch(name="ty-own-2", instance_type="gpu_4x_nothing", region="home")
    assert provider.instance_types()[0].regions_with_capacity == ()
    # another process (a restarted service) sees the claim
    again = make(hosts_file, tmp_path)
    assert again.get(inst.id) == inst and again.find_by_name("ty-own-0").id == inst.id
    node = again.node(inst)
    try:
        assert node.run("echo hi") == "hi\n"
    finally:
        node.close()
    again.terminate([inst.id])
    again.terminate([inst.id, "ssh-unknown"])  # idempotent
    assert provider.get(inst.id) is None and provider.list() == []
    assert provider.launch(name="ty-own-3", instance_type="gpu_8x_local", region="home").extra["host_name"] == "box1"


def test_config_is_validated(tmp_path, key_pair):
    bad = tmp_path / "hosts.yaml"
    bad.write_text(
        f"hosts:\n  - {{name: a, host: h, user: u, key_file: {key_pair[0]}}}\n"
        f"  - {{name: a, host: h2, user: u, key_file: {key_pair[0]}}}\n"
    )
    with pytest.raises(ValueError, match="unique"):
        load_hosts(bad)
