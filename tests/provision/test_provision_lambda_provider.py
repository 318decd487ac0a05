"""LambdaProvider end to end on the simulator: rent, find, drive over SSH, give back, and pay."""

from __future__ import annotations

import getpass
import time
from decimal import Decimal

import pytest

from provision.base import InstanceStatus
from provision.errors import InsufficientCapacity, InvalidRequest, NodeUnreachable
from provision.lambda_cloud import LambdaProvider
from provision.lambda_cloud.billing import billed_minutes
from provision.simulator.sshd import generate_key_pair
from provision.transport.connection import SshTimeouts
from provision.transport.known_hosts import PinnedHostKeys
from provision_helpers import MINUTE_S, wait_active


@pytest.fixture
def provider(client, key_pair, ssh_port, tmp_path):
    p = LambdaProvider(
        client,
        ssh_key_name="trainyard-provider",
        private_key_file=key_pair[0],
        known_hosts=PinnedHostKeys(tmp_path / "known_hosts"),
        ssh_user=getpass.getuser(),
        ssh_port=ssh_port,
        ssh_timeouts=SshTimeouts(connect_s=2, command_s=20),
    )
    p.ensure_ssh_key(key_pair[1])
    return p


def test_ensure_ssh_key_is_idempotent_and_never_replaces(provider, key_pair):
    provider.ensure_ssh_key(key_pair[1])
    assert [k.name for k in provider.client.list_ssh_keys()].count("trainyard-provider") == 1
    with pytest.raises(InvalidRequest):
        provider.ensure_ssh_key(generate_key_pair("other")[1])


def test_instance_types(provider):
    types = {t.name: t for t in provider.instance_types()}
    a100 = types["gpu_8x_a100_80gb_sxm4"]
    assert (a100.gpus, a100.price_cents_per_hour) == (8, 1432)
    assert set(a100.regions_with_capacity) == {"us-east-1", "us-west-2"}


def test_launch_find_drive_terminate(provider, ssh_port):
    inst = provider.launch(name="ty-run1-0", instance_type="gpu_8x_a100", region="us-west-2")
    assert inst.status is InstanceStatus.booting and inst.price_cents_per_hour == 1032
    with pytest.raises(NodeUnreachable):
        provider.node(inst)  # no address while booting
    assert provider.find_by_name("ty-run1-0").id == inst.id
    inst = wait_active(provider, inst.id)
    assert inst.public_ip.startswith("127.0.0.") and inst.ssh_port == ssh_port
    node = provider.node(inst)
    node.wait_for_ssh(time.monotonic() + 10, interval_s=0.1)
    assert node.run("echo hi") == "hi\n"
    node.close()
    assert provider.known_hosts.keys_for(f"[{inst.public_ip}]:{ssh_port}")
    provider.terminate([inst.id])
    provider.terminate([inst.id, "0" * 32])  # idempotent, unknown ids ignored
    provider.terminate([])
    assert provider.get(inst.id).status in (InstanceStatus.terminating, InstanceStatus.terminated)
    deadline = time.monotonic() + 5
    while provider.get(inst.id).status is not InstanceStatus.terminated:  # terminating: still found
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert provider.find_by_name("ty-run1-0") is None
    # the address goes back to the pool: its pin is forgotten, a new machine there is a first sight
    assert provider.known_hosts.keys_for(f"[{inst.public_ip}]:{ssh_port}") == []
    assert provider.get("f" * 32) is None


@pytest.mark.usefixtures("admin")
def test_launch_without_capacity_spends_no_launch(provider):
    with pytest.raises(InsufficientCapacity) as exc:
        provider.launch(name="ty-none-0", instance_type="gpu_8x_v100", region="us-east-1")
    assert "regions with capacity: none" in str(exc.value)
    with pytest.raises(InvalidRequest):
        provider.launch(name="ty-none-1", instance_type="gpu_8x_nothing", region="us-east-1")


def test_our_cost_matches_the_simulator_ledger_to_the_cent(provider, admin):
    """Billing: one-minute increments from active until terminate (a minute is 0.25 s here)."""
    launched = time.monotonic()
    inst = provider.launch(name="ty-bill-0", instance_type="gpu_8x_h100_sxm5", region="us-south-2")
    inst = wait_active(provider, inst.id)
    seen_active = time.monotonic()
    time.sleep(3.2 * MINUTE_S)
    before_terminate = time.monotonic()
    provider.terminate([inst.id])
    after_terminate = time.monotonic()
    entry = next(e for e in admin.get("/sim/v1/billing").json()["entries"] if e["instance_id"] == inst.id)
    up = entry["ended_at"] - entry["started_at"]
    # what we would compute from the same up-time, to the cent
    ours = Decimal(inst.price_cents_per_hour) * billed_minutes(up, minute_s=MINUTE_S) / 60
    assert ours.quantize(Decimal("0.01")) == Decimal(entry["cost_cents"]).quantize(Decimal("0.01"))
    assert billed_minutes(up, minute_s=MINUTE_S) == entry["billed_minutes"]
    # and the ledger agrees with what we observed from outside
    shortest = before_terminate - seen_active
    longest = after_terminate - launched
    low, high = billed_minutes(shortest, minute_s=MINUTE_S), billed_minutes(longest, minute_s=MINUTE_S)
    assert low <= entry["billed_minutes"] <= high
    assert entry["price_cents_per_hour"] == 2392 and entry["running"] is False
    exact = Decimal(2392) * entry["billed_minutes"] / 60  # the ledger shows six decimals
    assert Decimal(entry["cost_cents"]) == exact.quantize(Decimal("0.000001"))


def test_billing_rule():
    assert billed_minutes(0) == 0
    assert billed_minutes(0.1) == 1
    assert billed_minutes(60) == 1
    assert billed_minutes(60.5) == 2
