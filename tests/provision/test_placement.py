"""Placement on the simulator: preferred type and region first, then fallbacks, waiting, and retries."""

from __future__ import annotations

import getpass

import pytest

from provision.errors import InvalidRequest, PlacementFailed
from provision.lambda_cloud import LambdaProvider
from provision.placement import place
from provision.transport.connection import SshTimeouts
from provision.transport.known_hosts import PinnedHostKeys


def make_provider(client, key_pair, ssh_port, tmp_path, **kwargs) -> LambdaProvider:
    p = LambdaProvider(
        client,
        ssh_key_name="trainyard-placement",
        private_key_file=key_pair[0],
        known_hosts=PinnedHostKeys(tmp_path / "known_hosts"),
        ssh_user=getpass.getuser(),
        ssh_port=ssh_port,
        ssh_timeouts=SshTimeouts(connect_s=2, command_s=20),
        **kwargs,
    )
    p.ensure_ssh_key(key_pair[1])
    return p


@pytest.fixture
def provider(client, key_pair, ssh_port, tmp_path):
    return make_provider(client, key_pair, ssh_port, tmp_path)


def no_capacity(admin, instance_type="*", region="*"):
    admin.post(
        "/sim/v1/faults", json={"kind": "no_capacity", "instance_type": instance_type, "region": region}
    ).raise_for_status()


def named(client, name):
    return [i for i in client.list_instances() if i.name == name]


@pytest.mark.usefixtures("client")
def test_first_region_full_places_in_the_next(provider, admin):
    no_capacity(admin, "gpu_1x_a10", "us-east-1")
    events: list[str] = []
    inst = place(
        provider,
        name="ty-p1-0",
        instance_types=["gpu_1x_a10"],
        regions=["us-east-1", "us-west-1"],
        timeout_s=5,
        poll_s=0.1,
        on_event=events.append,
    )
    assert (inst.instance_type, inst.region, inst.name) == ("gpu_1x_a10", "us-west-1", "ty-p1-0")
    assert any("launched ty-p1-0: gpu_1x_a10 in us-west-1" in e for e in events)


def test_preferred_type_full_falls_back_to_the_next_type(provider, admin):
    no_capacity(admin, "gpu_8x_h100_sxm5", "*")
    events: list[str] = []
    inst = place(
        provider,
        name="ty-p2-0",
        instance_types=["gpu_8x_h100_sxm5", "gpu_1x_a10"],
        regions=[],
        timeout_s=5,
        poll_s=0.1,
        on_event=events.append,
    )
    assert inst.instance_type == "gpu_1x_a10"
    assert any("gpu_8x_h100_sxm5: no capacity in any region" in e for e in events)
    assert any("fallback for gpu_8x_h100_sxm5" in e for e in events)


def test_capacity_gone_between_read_and_launch_moves_on(client, key_pair, ssh_port, tmp_path, admin):
    # the provider's own pre-launch check is off, so the simulator itself refuses the launch
    provider = make_provider(client, key_pair, ssh_port, tmp_path, check_capacity=False)
    read = provider.instance_types

    def read_then_lose_capacity():
        offers = read()
        no_capacity(admin, "gpu_1x_a100", "us-west-1")  # after the read, before the launch
        return offers

    provider.instance_types = read_then_lose_capacity
    events: list[str] = []
    inst = place(
        provider,
        name="ty-p3-0",
        instance_types=["gpu_1x_a100"],
        regions=["us-west-1", "us-east-1"],
        timeout_s=5,
        poll_s=0.1,
        on_event=events.append,
    )
    assert inst.region == "us-east-1"
    assert any("gpu_1x_a100 in us-west-1: capacity gone" in e for e in events)


def test_no_capacity_anywhere_fails_after_the_wait_and_launches_nothing(provider, admin, client):
    no_capacity(admin)
    events: list[str] = []
    sleeps: list[float] = []
    now = [0.0]

    def fake_sleep(s: float) -> None:  # the simulator is real; only the waiting is compressed
        sleeps.append(s)
        now[0] += s

    with pytest.raises(PlacementFailed) as exc:
        place(
            provider,
            name="ty-p4-0",
            instance_types=["gpu_1x_a10", "gpu_1x_a100"],
            regions=["us-east-1", "us-west-1"],
            timeout_s=30,
            poll_s=10,
            on_event=events.append,
            clock=lambda: now[0],
            sleep=fake_sleep,
        )
    message = str(exc.value)
    for part in ("ty-p4-0", "gpu_1x_a10", "gpu_1x_a100", "us-east-1", "us-west-1", "after 30s"):
        assert part in message
    assert sleeps == [10, 10, 10]
    assert sum("checking again" in e for e in events) == 3
    assert named(client, "ty-p4-0") == []
    assert [i for i in client.list_instances() if i.status not in ("terminating", "terminated")] == []


def test_capacity_that_appears_while_waiting_is_used(provider, admin):
    no_capacity(admin)
    polls: list[float] = []

    def sleep_then_capacity_returns(s: float) -> None:
        polls.append(s)
        admin.delete("/sim/v1/faults").raise_for_status()

    inst = place(
        provider,
        name="ty-p5-0",
        instance_types=["gpu_1x_a10"],
        regions=["us-west-1"],
        timeout_s=60,
        poll_s=0.05,
        sleep=sleep_then_capacity_returns,
    )
    assert inst.region == "us-west-1" and polls == [0.05]


def test_second_place_returns_the_existing_instance(provider, client):
    first = place(provider, name="ty-p6-0", instance_types=["gpu_1x_a10"], timeout_s=5, poll_s=0.1)
    events: list[str] = []
    again = place(
        provider, name="ty-p6-0", instance_types=["gpu_1x_a10"], timeout_s=5, poll_s=0.1, on_event=events.append
    )
    assert again.id == first.id
    assert len(named(client, "ty-p6-0")) == 1
    assert events and "already exists" in events[0]


def test_unknown_instance_types_are_refused_at_once(provider):
    with pytest.raises(InvalidRequest, match="gpu_9x_nonsense"):
        place(provider, name="ty-p7-0", instance_types=["gpu_9x_nonsense"], timeout_s=5, poll_s=0.1)
    with pytest.raises(InvalidRequest):
        place(provider, name="ty-p7-0", instance_types=[], timeout_s=5, poll_s=0.1)
