"""`compute.instance_type: auto`, resolved at placement (controller/placement.py
`preferred_instance_types`) against the Lambda simulator (in process: its catalog, prices and
capacity; nothing is launched) and a real database for records and events."""

from __future__ import annotations

import httpx
import pytest

from orchestrator.controller import lease
from orchestrator.controller.context import RunContext, load_run
from orchestrator.controller.placement import preferred_instance_types
from orchestrator.db.models import RunEvent
from orchestrator.planning.shape import shape_of
from orchestrator.spec import validate_spec
from orchestrator_helpers import sessions, submit_run
from plan_helpers import add_records, lambda_settings, start_simulator
from provision.errors import PlacementFailed
from provision.registry import get_provider

SEED = {
    "model": {"preset": "gpt2-small"},
    "training": {"seq_len": 1024, "micro_batch": "auto", "max_tokens": "chinchilla", "eval_every": 0},
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    server = start_simulator(tmp_path_factory.mktemp("sim"))
    yield server
    server.stop()


@pytest.fixture
def resolve(sqlite_url, tmp_path, sim):
    """`resolve(objective, max_usd=None)`: a pending auto run, and the types placement would try
    for it (with the events it recorded)."""
    settings = lambda_settings(sqlite_url, tmp_path, sim)
    factory = sessions(sqlite_url)
    provider = get_provider("lambda", settings)

    def run(objective: str = "cheapest", max_usd: float | None = None) -> tuple[list[str], list[str]]:
        compute = {"provider": "lambda", "instance_type": "auto", "procs_per_node": 8, "objective": objective}
        spec = {**SEED, "compute": compute, "budget": {"max_usd": max_usd}}
        run_id = submit_run(factory, **spec)
        token = lease.acquire(factory, run_id, "worker-a", 30)
        ctx = RunContext(run_id, token, settings, factory, provider)
        names = preferred_instance_types(ctx, load_run(factory, run_id), validate_spec({"name": "t", **spec}))
        with factory() as s:
            events = [e.message for e in s.query(RunEvent).filter_by(run_id=run_id, kind="placement")]
        return names, events

    run.factory, run.db_url = factory, sqlite_url
    yield run
    provider.close()
    factory.kw["bind"].dispose()


def set_capacity(sim, instance_type: str, region: str, count: int) -> None:
    body = {"instance_type": instance_type, "region": region, "count": count}
    httpx.put(sim.url + "/sim/v1/capacity", json=body).raise_for_status()


def test_auto_takes_the_cheapest_or_the_fastest_type_and_says_why(resolve):
    cheap, events = resolve("cheapest")
    assert len(events) == 1 and f"auto chose {cheap[0]} (cheapest)" in events[0] and "US$" in events[0]
    fast, events = resolve("fastest")
    assert fast[0] == "gpu_8x_b200_sxm6" and "(fastest)" in events[0]
    assert set(cheap) == set(fast) and all(n.startswith("gpu_8x_") for n in cheap), "8 processes per node"


def test_a_type_without_capacity_now_goes_last(resolve, sim):
    set_capacity(sim, "gpu_8x_b200_sxm6", "us-south-2", 0)
    try:
        names, events = resolve("fastest")
    finally:
        set_capacity(sim, "gpu_8x_b200_sxm6", "us-south-2", 1)
    assert names[0] != "gpu_8x_b200_sxm6" and "gpu_8x_b200_sxm6" in names
    assert names.index("gpu_8x_b200_sxm6") > names.index("gpu_8x_h100_sxm5")
    assert f"auto chose {names[0]}" in events[0]


def test_the_budget_leaves_types_out_and_none_left_fails_naming_the_cheapest(resolve):
    names, _ = resolve("fastest", max_usd=45)
    assert "gpu_8x_a100_80gb_sxm4" not in names  # about US$65 on the prior
    with pytest.raises(PlacementFailed, match=r"cheapest estimate is gpu_8x_\w+ at US\$[\d.]+ .* budget.max_usd 5"):
        resolve("cheapest", max_usd=5)


def test_measured_records_change_the_choice(resolve):
    key = shape_of(validate_spec({"name": "t", **SEED})).key
    # an H100 node measured far faster than a B200's prior (no MFU: nothing to scale to the B200)
    add_records(resolve.db_url, key, *[{"instance_type": "gpu_8x_h100_sxm5", "tokens_per_s": 3e6}] * 3)
    names, events = resolve("fastest")
    assert names[0] == "gpu_8x_h100_sxm5" and "(measured)" in events[0]
