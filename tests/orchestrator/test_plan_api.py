"""`POST /api/v1/plans` through the ASGI app, against the Lambda simulator's catalog (in process,
on loopback) and a real database (SQLite and PostgreSQL) holding throughput records."""

from __future__ import annotations

import httpx
import pytest

from orchestrator.api.app import create_app
from orchestrator.planning.lookup import records_of_shape
from orchestrator.planning.shape import shape_of
from orchestrator.spec import parse_spec_yaml
from orchestrator_helpers import local_client, sessions
from plan_helpers import add_records, lambda_settings, start_simulator

SEED_YAML = """
name: seed-gpt2-small
model: {preset: gpt2-small}
training: {seq_len: 1024, micro_batch: auto, max_tokens: chinchilla, eval_every: 0}
compute: {provider: lambda, instance_type: auto, procs_per_node: 8}
budget: {max_usd: 60}
"""
SEED_KEY = shape_of(parse_spec_yaml(SEED_YAML)).key


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    server = start_simulator(tmp_path_factory.mktemp("sim"))
    yield server
    server.stop()


@pytest.fixture
def api(db_url, tmp_path, sim):
    with local_client(create_app(lambda_settings(db_url, tmp_path, sim))) as c:
        c.db_url = db_url
        yield c


@pytest.fixture
def sqlite_api(sqlite_url, tmp_path, sim):
    with local_client(create_app(lambda_settings(sqlite_url, tmp_path, sim))) as c:
        yield c


def plan(client, spec: str | dict = SEED_YAML, **body) -> dict:
    r = client.post("/api/v1/plans", json={"spec": spec, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_plan_has_a_row_per_gpu_type_with_prior_estimates_and_no_side_effects(api):
    page = plan(api)
    rows = {r["instance_type"]: r for r in page["rows"]}
    assert "cpu_4x_general" not in rows and len(rows) == 19  # every GPU type of the catalog
    assert page["train_tokens"] == 3_260_190_720 and page["records"] == 0
    b200, a100 = rows["gpu_8x_b200_sxm6"], rows["gpu_8x_a100"]
    assert a100["micro_batch"] == 13 and b200["micro_batch"] == 64
    assert a100["regions_with_capacity"] == ["us-east-1", "us-west-2"] and a100["price_cents_per_hour"] == 1032
    assert {r["source"] for r in page["rows"] if r["usd"] is not None} == {"prior"}
    assert b200["fastest"] and b200["frontier"]
    assert sum(r["cheapest"] for r in page["rows"]) == 1
    assert a100["band"]["usd_low"] < a100["usd"] < a100["band"]["usd_high"]
    assert not rows["gpu_1x_h100_sxm5"]["fits"] and "procs_per_node" in rows["gpu_1x_h100_sxm5"]["reason"]
    cheapest = next(r for r in page["rows"] if r["cheapest"])
    assert page["chosen"]["instance_type"] == cheapest["instance_type"]
    assert "auto chose" in page["chosen"]["reason"]
    assert api.get("/api/v1/runs").json()["total"] == 0


def test_records_of_the_shape_make_rows_measured_or_scaled(api):
    add_records(
        api.db_url,
        SEED_KEY,
        *[{"instance_type": "gpu_8x_h100_sxm5", "tokens_per_s": 2_000_000.0, "mfu": 0.29, "micro_batch": 40}] * 3,
        {"instance_type": "gpu_8x_h100_sxm5", "tokens_per_s": 9.0, "shape_key": "another-shape"},
    )
    factory = sessions(api.db_url)
    with factory() as s:
        found = records_of_shape(s, SEED_KEY)
    factory.kw["bind"].dispose()
    assert len(found) == 3 and [o.created_at for o in found] == sorted((o.created_at for o in found), reverse=True)
    rows = {r["instance_type"]: r for r in plan(api)["rows"]}
    h100 = rows["gpu_8x_h100_sxm5"]
    assert h100["source"] == "measured" and h100["tokens_per_s"] == 2_000_000 and h100["micro_batch"] == 40
    assert h100["records"] == 3 and h100["band"]["relative"] == pytest.approx(0.10)
    a100 = rows["gpu_8x_a100"]
    assert a100["source"] == "scaled" and a100["mfu"] == pytest.approx(0.29)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("name: x\ntraining: {max_tokens: -5}\n", "training.max_tokens"),
        ({"name": "x", "compute": {"provider": "lambda"}}, "compute"),
        ({"name": "x", "model": {"overrides": {"n_layers": 2}}}, "model.overrides.n_layers"),
        ("name: x\ncompute: {instance_type: auto, fallback_instance_types: [a]}\n", "compute"),
    ],
)
def test_an_invalid_spec_is_422_naming_the_field(sqlite_api, spec, field):
    r = sqlite_api.post("/api/v1/plans", json={"spec": spec})
    assert r.status_code == 422, r.text
    assert r.json()["detail"]["field"] == field


def test_an_unknown_provider_is_422_and_a_failing_one_502(sqlite_api, sim):
    r = sqlite_api.post("/api/v1/plans", json={"spec": SEED_YAML, "provider": "azure"})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "provider"
    httpx.post(sim.url + "/sim/v1/faults", json={"kind": "server_error", "count": 5}).raise_for_status()
    try:
        r = sqlite_api.post("/api/v1/plans", json={"spec": SEED_YAML})
    finally:
        httpx.delete(sim.url + "/sim/v1/faults").raise_for_status()
    assert r.status_code == 502
    assert "provider lambda could not list instance types" in r.json()["detail"]["message"]


def test_the_local_provider_override_plans_this_machine(sqlite_api):
    page = plan(sqlite_api, "name: here\ntraining: {max_tokens: 100000}\n", provider="local")
    assert page["provider"] == "local" and [r["instance_type"] for r in page["rows"]] == ["local"]
    assert page["rows"][0]["source"] == "none" and page["chosen"]["instance_type"] == "local"
