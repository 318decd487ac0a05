"""`GET /api/v1/instances` and `trainyard instances` on the Lambda simulator (issue 11): every
instance the provider shows, with its owner (a run, "orphan" or "unknown"), status, age, price
and spend so far; a provider that fails is reported per provider, never as an error of the call.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from fleet_helpers import lambda_settings, launch, terminate_all, wait_status
from orchestrator.api.app import create_app
from orchestrator.db.models import Instance, OrphanInstance, RunStatus, utcnow
from orchestrator.db.session import transaction
from orchestrator.runs import instance_name, new_run_id
from orchestrator_helpers import (
    LAMBDA_MINUTE_S,
    api_service,
    lambda_spec,
    local_client,
    sessions,
    set_run,
    submit_run,
)
from simhelpers import API_KEY

#: cpu_4x_general's price in the simulator's catalog, US cents per hour
PRICE = 20


@pytest.fixture(autouse=True)
def _give_back(lsim):
    yield
    terminate_all(lsim)


def _fleet(lsim, factory) -> dict[str, str]:
    """A live run's instance (recorded 3 minutes ago), an orphan the sweep saw 10 minutes ago, a
    trainyard-named one not seen yet, and a foreign one. Returns their provider ids by role."""
    run_id = submit_run(factory, **lambda_spec("owned"))
    set_run(factory, run_id, status=RunStatus.training.value, started_at=utcnow() - timedelta(minutes=4))
    ids = {
        "run": launch(lsim, instance_name(run_id, 0)),
        "orphan": launch(lsim, instance_name(new_run_id(), 0)),
        "unseen": launch(lsim, instance_name(new_run_id(), 1)),
        "foreign": launch(lsim, "my-notebook"),
    }
    for instance_id in ids.values():
        wait_status(lsim, instance_id, {"active"})
    now = utcnow()
    with transaction(factory) as s:
        s.add(
            Instance(
                run_id=run_id,
                rank=0,
                name=instance_name(run_id, 0),
                provider="lambda",
                provider_instance_id=ids["run"],
                instance_type="cpu_4x_general",
                price_cents_per_hour=PRICE,
                billing_minute_s=LAMBDA_MINUTE_S,
                status="active",
                launched_at=now - timedelta(minutes=3),
                active_at=now - timedelta(minutes=3) + timedelta(seconds=30),
            )
        )
        s.add(
            OrphanInstance(
                provider="lambda",
                provider_instance_id=ids["orphan"],
                name=f"ty-{'x' * 12}-0",
                instance_type="cpu_4x_general",
                price_cents_per_hour=PRICE,
                billing_minute_s=LAMBDA_MINUTE_S,
                first_seen_at=now - timedelta(minutes=10),
            )
        )
    return {**ids, "run_id": run_id}


def test_the_api_lists_every_instance_with_owner_status_age_price_and_spend(lsim, sqlite_url, tmp_path, key_file):
    factory = sessions(sqlite_url)
    fleet = _fleet(lsim, factory)
    settings = lambda_settings(lsim, sqlite_url, tmp_path / "data", key_file)
    with local_client(create_app(settings)) as client:
        r = client.get("/api/v1/instances")
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["providers"] == [{"name": "lambda", "instances": len(page["instances"]), "error": None}]
    by_id = {i["id"]: i for i in page["instances"]}
    run, orphan, unseen, foreign = (by_id[fleet[k]] for k in ("run", "orphan", "unseen", "foreign"))

    assert (run["owner"], run["run_id"], run["status"], run["provider"]) == (
        fleet["run_id"],
        fleet["run_id"],
        "active",
        "lambda",
    )
    assert 180 <= run["age_s"] < 240 and run["price_cents_per_hour"] == PRICE
    # active for 150 s, in the simulator's 20 s minutes: 8 started minutes, as instance_cost says
    assert run["cost_cents"] in (8 * PRICE / 60, 9 * PRICE / 60)

    assert (orphan["owner"], orphan["run_id"]) == ("orphan", orphan["name"][3:-2])
    # from when the sweep first saw it, 600 s ago: 30 started minutes (a lower bound)
    assert 600 <= orphan["age_s"] < 660 and orphan["cost_cents"] in (30 * PRICE / 60, 31 * PRICE / 60)

    assert (unseen["owner"], unseen["age_s"], unseen["cost_cents"]) == ("orphan", None, None)
    assert (foreign["owner"], foreign["run_id"], foreign["age_s"], foreign["cost_cents"]) == (
        "unknown",
        None,
        None,
        None,
    )
    assert foreign["price_cents_per_hour"] == PRICE and foreign["instance_type"] == "cpu_4x_general"
    factory.kw["bind"].dispose()


def test_a_provider_that_fails_is_reported_not_a_500(lsim, sqlite_url, tmp_path, key_file):
    refused = lambda_settings(lsim, sqlite_url, tmp_path / "data", key_file, lambda_api_key="not-the-key")
    with local_client(create_app(refused)) as client:
        r = client.get("/api/v1/instances")
    assert r.status_code == 200, r.text
    ((provider,),) = [r.json()["providers"]]
    assert provider["name"] == "lambda" and provider["instances"] is None
    assert "HTTP 401 global/invalid-api-key" in provider["error"] and "\n" not in provider["error"]
    assert r.json()["instances"] == [] and "not-the-key" not in r.text

    bare = refused.model_copy(update={"lambda_api_key": None})
    with local_client(create_app(bare)) as client:
        assert client.get("/api/v1/instances").json() == {"providers": [], "instances": []}


def test_trainyard_instances_shows_the_table_and_json(lsim, tmp_path, key_file):
    svc = api_service(
        tmp_path / "svc",
        TRAINYARD_LAMBDA_API_URL=lsim.url,
        TRAINYARD_LAMBDA_API_KEY=API_KEY,
        TRAINYARD_LAMBDA_SSH_KEY_NAME="trainyard-fleet",
        TRAINYARD_SSH_PRIVATE_KEY_FILE=str(key_file),
        TRAINYARD_BILLING_MINUTE_S=str(LAMBDA_MINUTE_S),
    )
    try:
        fleet = _fleet(lsim, svc.db)
        table = svc.cli("instances")
        assert table.returncode == 0, table.stderr
        lines = {line.split()[1]: line for line in table.stdout.splitlines()[1:] if line.strip()}
        assert lines["my-notebook"].split()[5] == "unknown"
        owned = lines[instance_name(fleet["run_id"], 0)].split()
        assert owned[2:6] == ["cpu_4x_general", owned[3], "active", fleet["run_id"]]
        assert owned[6].startswith("3m") and owned[7] == "$0.20"
        assert table.stdout.splitlines()[0].split() == [
            "PROVIDER",
            "NAME",
            "TYPE",
            "REGION",
            "STATUS",
            "OWNER",
            "AGE",
            "PRICE/H",
            "SPENT",
        ]
        as_json = svc.cli("instances", "--format", "json")
        assert as_json.returncode == 0, as_json.stderr
        page = json.loads(as_json.stdout)
        owners = {i["name"]: i["owner"] for i in page["instances"]}
        assert owners["my-notebook"] == "unknown" and owners[instance_name(fleet["run_id"], 0)] == fleet["run_id"]
        assert sorted(owners.values()).count("orphan") >= 2
    finally:
        svc.close()
