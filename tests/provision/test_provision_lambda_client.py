"""The Lambda client against the simulator over real HTTP: calls, error mapping, retries, spacing,
and the API key never leaking."""

from __future__ import annotations

import base64
import itertools
import logging
import time

import httpx
import pytest

from provision.errors import (
    InsufficientCapacity,
    InvalidCredentials,
    InvalidRequest,
    NotFound,
    ProviderServerError,
    QuotaExceeded,
    RateLimited,
)
from provision.lambda_cloud.client import LambdaClient
from provision.lambda_cloud.transport import RetryPolicy
from provision_helpers import API_KEY, FAST_RETRY, LAUNCH_INTERVAL_S, wait_status


def test_instance_types_have_prices_specs_and_capacity(client):
    types = client.instance_types()
    assert {"gpu_1x_a100", "gpu_8x_a100", "gpu_8x_h100_sxm5", "gpu_8x_a100_80gb_sxm4", "gpu_8x_b200_sxm6"} <= set(types)
    h100 = types["gpu_8x_h100_sxm5"]
    assert h100.instance_type.price_cents_per_hour == 2392
    assert h100.instance_type.specs.gpus == 8
    assert h100.instance_type.description == "8x H100 (80 GB SXM5)"
    assert {r.name for r in h100.regions_with_capacity_available} == {"us-south-2", "us-west-3"}
    assert types["gpu_8x_v100"].regions_with_capacity_available == []  # listed, no capacity


def test_launch_get_list_terminate(client, registered_key):
    iid = client.launch(
        region="us-east-1", instance_type="gpu_1x_a100", ssh_key_name=registered_key, name="ty-client-0"
    )
    assert len(iid) == 32
    booting = client.get_instance(iid)
    assert booting.status == "booting" and booting.ip is None and booting.name == "ty-client-0"
    active = wait_status(client, iid, "active")
    assert active.ip and active.ip.startswith("127.0.0.") and active.private_ip == active.ip
    assert active.instance_type.name == "gpu_1x_a100" and active.region.name == "us-east-1"
    assert iid in [i.id for i in client.list_instances()]
    # capacity went down by one while it lives
    regions = {r.name for r in client.instance_types()["gpu_1x_a100"].regions_with_capacity_available}
    assert "us-east-1" in regions  # 2 in the catalog, 1 left
    ended = client.terminate([iid])
    assert [i.status for i in ended] == ["terminating"]
    wait_status(client, iid, "terminated")


def test_errors_are_mapped(sim, client, registered_key):
    with pytest.raises(NotFound) as exc:
        client.get_instance("0" * 32)
    assert exc.value.code == "global/object-does-not-exist" and exc.value.http_status == 404
    with pytest.raises(NotFound):
        client.terminate(["0" * 32])
    with pytest.raises(InsufficientCapacity) as exc:
        client.launch(region="us-east-1", instance_type="gpu_8x_v100", ssh_key_name=registered_key, name="x")
    assert "Not enough capacity" in str(exc.value)
    with pytest.raises(InvalidRequest) as exc:
        client.launch(region="mars-1", instance_type="gpu_1x_a100", ssh_key_name=registered_key, name="x")
    assert exc.value.code == "global/invalid-parameters"
    with pytest.raises(NotFound):
        client.launch(region="us-east-1", instance_type="gpu_1x_a100", ssh_key_name="no-such-key", name="x")
    with pytest.raises(InvalidRequest):
        client.launch(region="us-east-1", instance_type="gpu_1x_a100", ssh_key_name=registered_key, name="x" * 65)
    with (
        LambdaClient("wrong-key", base_url=sim.url, retry=FAST_RETRY) as bad,
        pytest.raises(InvalidCredentials) as exc,
    ):
        bad.instance_types()
    assert exc.value.code == "global/invalid-api-key" and exc.value.http_status == 401


def test_quota_exceeded(sim, client, registered_key):
    sim.cloud.config.quota = 1
    try:
        client.launch(region="us-east-1", instance_type="cpu_4x_general", ssh_key_name=registered_key, name="q0")
        with pytest.raises(QuotaExceeded) as exc:
            client.launch(region="us-west-1", instance_type="cpu_4x_general", ssh_key_name=registered_key, name="q1")
        assert "Contact Support" in str(exc.value)
    finally:
        sim.cloud.config.quota = 6


def test_no_capacity_fault(admin, client, registered_key):
    admin.post("/sim/v1/faults", json={"kind": "no_capacity", "instance_type": "gpu_1x_a100", "region": "*"})
    assert client.instance_types()["gpu_1x_a100"].regions_with_capacity_available == []
    with pytest.raises(InsufficientCapacity):
        client.launch(region="us-west-1", instance_type="gpu_1x_a100", ssh_key_name=registered_key, name="nc")


def test_429_and_500_are_survived_by_retries(admin, client):
    admin.post("/sim/v1/faults", json={"kind": "rate_limit", "count": 2})
    admin.post("/sim/v1/faults", json={"kind": "server_error", "count": 1, "status": 500})
    assert client.instance_types()
    admin.post("/sim/v1/faults", json={"kind": "server_error", "count": 2, "status": 502})  # HTML body
    assert client.list_instances() is not None
    assert admin.get("/sim/v1/faults").json()["server_errors"] == []


def test_retries_give_up_with_the_right_error(admin, sim):
    impatient = RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.05)
    with LambdaClient(API_KEY, base_url=sim.url, retry=impatient) as c:
        admin.post("/sim/v1/faults", json={"kind": "rate_limit", "count": 2})
        with pytest.raises(RateLimited):
            c.list_instances()
        admin.post("/sim/v1/faults", json={"kind": "server_error", "count": 2})
        with pytest.raises(ProviderServerError) as exc:
            c.list_instances()
        assert exc.value.retryable


def test_ambiguous_launch_is_not_launched_twice(admin, client, registered_key):
    """A 500 on launch may hide a launch that happened: the client looks by name, then retries."""
    admin.post("/sim/v1/faults", json={"kind": "server_error", "count": 1})
    iid = client.launch(region="us-east-1", instance_type="gpu_1x_a10", ssh_key_name=registered_key, name="ty-amb-0")
    named = [i for i in client.list_instances() if i.name == "ty-amb-0" and i.status != "terminated"]
    assert [i.id for i in named] == [iid]


def test_launch_spacing_is_honoured(sim, registered_key):
    """Consecutive launches (and a retry after 429) are spaced by the configured interval."""
    sent: list[float] = []

    def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/launch"):
            sent.append(time.monotonic())

    with LambdaClient(API_KEY, base_url=sim.url, retry=FAST_RETRY, launch_interval_s=0.3) as c:
        c._api._http.event_hooks["request"].append(record)
        for n in range(3):
            c.launch(
                region="us-east-1" if n < 2 else "us-west-1",
                instance_type="gpu_1x_a10",
                ssh_key_name=registered_key,
                name=f"ty-space-{n}",
            )
    # (a 429 from the simulator, whose limit may still count an earlier test's launch, adds a try;
    # the hook fires a few ms after the slot is granted, so allow scheduling jitter on a busy box)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert len(sent) >= 3 and all(g >= 0.25 for g in gaps), gaps


def test_simulator_refuses_launches_faster_than_its_limit(sim, registered_key):
    time.sleep(LAUNCH_INTERVAL_S)  # let the simulator's limit forget earlier tests' launches
    with LambdaClient(API_KEY, base_url=sim.url, retry=RetryPolicy(attempts=1), launch_interval_s=0) as c:
        c.launch(region="us-east-1", instance_type="gpu_1x_a10", ssh_key_name=registered_key, name="fast-0")
        with pytest.raises(RateLimited):
            c.launch(region="us-west-1", instance_type="gpu_1x_a10", ssh_key_name=registered_key, name="fast-1")


def test_auth_bearer_and_basic(sim):
    url = f"{sim.url}/api/v1/instance-types"
    basic = base64.b64encode(f"{API_KEY}:".encode()).decode()
    for header in (f"Bearer {API_KEY}", f"Basic {basic}"):
        assert httpx.get(url, headers={"Authorization": header}, trust_env=False).status_code == 200
    resp = httpx.get(url, headers={"Authorization": "Bearer nope"}, trust_env=False)
    assert resp.status_code == 401
    assert resp.json() == {
        "error": {
            "code": "global/invalid-api-key",
            "message": "API key was invalid, expired, or deleted.",
            "suggestion": "Check your API key or create a new one, then try again.",
        }
    }
    assert httpx.get(url, trust_env=False).status_code == 401


def test_ssh_keys(client):
    key = client.add_ssh_key("generated-key")
    assert key.private_key is not None and key.public_key.startswith("ssh-ed25519 ")
    assert "generated-key" in [k.name for k in client.list_ssh_keys()]
    with pytest.raises(InvalidRequest):
        client.add_ssh_key("generated-key", key.public_key)
    with pytest.raises(InvalidRequest):
        client.add_ssh_key("broken", "ssh-ed25519 not-base64!")
    client.delete_ssh_key(key.id)
    assert "generated-key" not in [k.name for k in client.list_ssh_keys()]
    with pytest.raises(NotFound):
        client.delete_ssh_key(key.id)


def test_api_key_never_leaks(sim, admin, caplog):
    caplog.set_level(logging.DEBUG)
    client = LambdaClient(API_KEY, base_url=sim.url, retry=FAST_RETRY)
    texts = [repr(client), str(client), repr(client._api)]
    admin.post("/sim/v1/faults", json={"kind": "server_error", "count": 10})
    with pytest.raises(ProviderServerError) as exc:
        client.list_instances()
    texts += [str(exc.value), repr(exc.value)]
    with (
        LambdaClient(API_KEY, base_url="http://127.0.0.1:9", retry=FAST_RETRY, connect_timeout_s=0.5) as down,
        pytest.raises(ProviderServerError) as exc2,
    ):
        down.instance_types()
    texts += [str(exc2.value)]
    wrong = LambdaClient(API_KEY + "x", base_url=sim.url, retry=FAST_RETRY)
    with pytest.raises(InvalidCredentials) as exc3:
        wrong.list_instances()
    texts += [str(exc3.value), repr(wrong)]
    client.close()
    wrong.close()
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("try 2 of" in t for t in texts)  # the retries were logged...
    for text in texts:
        assert API_KEY not in text  # ...and nothing shows the key
        assert base64.b64encode(f"{API_KEY}:".encode()).decode() not in text


class _Busy(Exception):
    def __init__(self, retry_after_s: float | None = None):
        super().__init__("busy")
        self.retry_after_s = retry_after_s


def _sleeps(policy: RetryPolicy, error: _Busy) -> list[float]:
    """The waits `policy` takes for a call that fails every time with `error`."""
    sleeps: list[float] = []

    def fail() -> None:
        raise error

    with pytest.raises(_Busy):
        policy.run(fail, retry_if=lambda e: isinstance(e, _Busy), sleep=sleeps.append, on_retry=lambda *_: None)
    return sleeps


def test_backoff_is_capped_full_jitter_and_honours_retry_after():
    policy = RetryPolicy(attempts=5, base_delay_s=1.0, max_delay_s=4.0)
    for _ in range(20):
        sleeps = _sleeps(policy, _Busy())
        assert len(sleeps) == 4 and all(0 <= s <= cap for s, cap in zip(sleeps, [1, 2, 4, 4], strict=True)), sleeps
    assert all(s >= 3 for s in _sleeps(policy, _Busy(retry_after_s=3)))  # Retry-After is a floor...
    assert _sleeps(policy, _Busy(retry_after_s=600)) == [4.0] * 4  # ...capped by max_delay_s
    assert _sleeps(RetryPolicy(attempts=1), _Busy()) == []
