"""The REST API against a real database (SQLite and PostgreSQL), through the ASGI app.

Progress and cost rows are written straight into the database here, the way the controller
writes them, to check what the API makes of them.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import event as sa_event

from orchestrator.db.models import CostEntry, Instance, LogChunk, MetricPoint, RunEvent, utcnow
from orchestrator.db.session import transaction
from orchestrator.settings import Settings
from orchestrator_helpers import set_run

SECRET = "sk-live-do-not-leak-4f1c9e"
SPEC = {"name": "api-test", "training": {"max_tokens": 100_000}, "budget": {"max_usd": 5}}


@pytest.fixture
def settings(db_url, tmp_path):
    return Settings(database_url=db_url, data_dir=tmp_path, lambda_api_key=SECRET, openai_api_key=SECRET)


def submit(client, **changes) -> dict:
    r = client.post("/api/v1/runs", json={**SPEC, **changes})
    assert r.status_code == 201, r.text
    return r.json()


def test_submit_returns_the_pending_run_and_records_the_event(client):
    run = submit(client)
    assert run["status"] == "pending" and run["name"] == "api-test"
    assert run["spec"]["training"]["max_tokens"] == 100_000
    assert run["spec"]["budget"]["max_usd"] == 5
    assert run["progress"]["tokens_done"] == 0 and run["cost"]["cents"] == 0
    assert client.get(f"/api/v1/runs/{run['id']}").json()["id"] == run["id"]
    events = client.get(f"/api/v1/runs/{run['id']}/events").json()["events"]
    assert [(e["kind"], e["to_status"]) for e in events] == [("status", "pending")]


@pytest.mark.parametrize(
    "body, loc",
    [
        ({**SPEC, "budget": {"max_usd": -1}}, ["body", "budget", "max_usd"]),
        ({**SPEC, "trainig": {}}, ["body", "trainig"]),
        ({**SPEC, "compute": {"provider": "local", "nodes": 0}}, ["body", "compute", "nodes"]),
        ({"training": {}}, ["body", "name"]),
    ],
)
def test_invalid_specs_are_422_naming_the_field_and_store_nothing(client, body, loc):
    r = client.post("/api/v1/runs", json=body)
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == ".".join(loc[1:])  # the error body names the field's path
    assert client.get("/api/v1/runs").json()["total"] == 0


def test_a_body_that_is_not_json_is_422(client):
    r = client.post("/api/v1/runs", content=b"name: yaml?", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert client.get("/api/v1/runs").json()["total"] == 0


def test_list_filters_by_status_and_pages_newest_first(client, factory):
    ids = [submit(client, name=f"run-{i}")["id"] for i in range(5)]
    set_run(factory, ids[0], status="training")
    set_run(factory, ids[1], status="training")
    set_run(factory, ids[2], status="succeeded")

    all_runs = client.get("/api/v1/runs").json()
    assert all_runs["total"] == 5
    assert [r["id"] for r in all_runs["runs"]] == ids[::-1]

    training = client.get("/api/v1/runs", params={"status": "training"}).json()
    assert training["total"] == 2 and {r["id"] for r in training["runs"]} == set(ids[:2])
    both = client.get("/api/v1/runs", params=[("status", "training"), ("status", "succeeded")]).json()
    assert both["total"] == 3

    page1 = client.get("/api/v1/runs", params={"limit": 2}).json()
    page2 = client.get("/api/v1/runs", params={"limit": 2, "offset": 2}).json()
    page3 = client.get("/api/v1/runs", params={"limit": 2, "offset": 4}).json()
    assert [r["id"] for r in page1["runs"] + page2["runs"] + page3["runs"]] == ids[::-1]
    assert page3["total"] == 5 and len(page3["runs"]) == 1


@pytest.mark.parametrize(
    "params, field", [({"status": "bogus"}, "status"), ({"limit": 0}, "limit"), ({"offset": -1}, "offset")]
)
def test_bad_list_parameters_are_422_naming_the_parameter(client, params, field):
    r = client.get("/api/v1/runs", params=params)
    assert r.status_code == 422
    assert r.json()["detail"]["field"].split(".")[0] == field


def test_unknown_run_is_404_with_a_message(client):
    for method, path in [("GET", ""), ("POST", "/cancel"), ("GET", "/metrics"), ("GET", "/events"), ("GET", "/logs")]:
        r = client.request(method, f"/api/v1/runs/nope{path}")
        assert r.status_code == 404, path
        message = "no run with id 'nope'"
        assert r.json() == {
            "detail": {"message": message, "field": None, "errors": [{"field": None, "message": message}]}
        }


def test_progress_eta_and_cost_come_from_the_run_and_its_instances(client, factory):
    run = submit(client)
    now = utcnow()
    set_run(
        factory,
        run["id"],
        status="training",
        started_at=now - timedelta(minutes=5),
        target_tokens=1_000_000,
        tokens_done=250_000,
        step=120,
        train_loss=4.5,
        val_loss=4.75,
        tokens_per_s=5_000.0,
        world_size=8,
    )
    with transaction(factory) as s:

        def instance(rank: int, **kw) -> Instance:
            inst = Instance(
                run_id=run["id"],
                rank=rank,
                name=f"ty-{run['id']}-{rank}",
                provider="lambda",
                instance_type="gpu_1x_a10",
                price_cents_per_hour=120,
                **kw,
            )
            s.add(inst)
            s.flush()
            return inst

        # running for 90 s: billed 2 minutes at 2 cents a minute
        instance(0, active_at=now - timedelta(seconds=90))
        # terminated and booked: only its cost entry counts
        booked = instance(1, active_at=now - timedelta(hours=2), terminated_at=now - timedelta(hours=1))
        s.add(
            CostEntry(run_id=run["id"], instance_id=booked.id, kind="instance", cents=120.0, quantity=60, unit="minute")
        )
        # terminated 61 s after it became active but not booked yet: 2 minutes
        instance(
            2, active_at=now - timedelta(minutes=10), terminated_at=now - timedelta(minutes=10) + timedelta(seconds=61)
        )
        # never became active: costs nothing
        instance(3)
        s.add(CostEntry(run_id=run["id"], kind="judge", cents=0.5, quantity=1000, unit="token"))

    got = client.get(f"/api/v1/runs/{run['id']}").json()
    p = got["progress"]
    assert (p["tokens_done"], p["target_tokens"], p["step"]) == (250_000, 1_000_000, 120)
    assert p["fraction"] == pytest.approx(0.25)
    assert (p["train_loss"], p["val_loss"], p["tokens_per_s"], p["world_size"]) == (4.5, 4.75, 5000.0, 8)
    assert p["eta_s"] == pytest.approx(150.0)
    assert got["cost"]["cents"] == pytest.approx(4.0 + 120.0 + 4.0 + 0.5)
    assert got["cost"]["usd"] == pytest.approx(1.285)
    listed = client.get("/api/v1/runs").json()["runs"][0]
    assert listed["cost"]["cents"] == pytest.approx(got["cost"]["cents"], abs=2.0)  # a minute may tick over

    set_run(factory, run["id"], status="succeeded", test_loss=4.6, finished_at=utcnow())
    done = client.get(f"/api/v1/runs/{run['id']}").json()
    assert done["progress"]["eta_s"] is None and done["progress"]["test_loss"] == 4.6
    assert done["finished_at"] is not None and done["wall_s"] >= 0


def test_the_budget_shows_the_eta_and_the_projected_cost_and_a_stop(client, factory):
    """Two nodes at 120 c/h, up 90 s (2 billed minutes each: 8 cents); 150 s of training left at
    5,000 tokens/s, then the test loss on node 0 alone: 5% of the 1M-token target's data
    (1M / 0.9), forward only at 3 x 5,000 tokens/s."""
    run = submit(client, evaluation={"test_loss": True}, budget={"max_usd": 5, "max_hours": 2})
    now = utcnow()
    set_run(
        factory,
        run["id"],
        status="training",
        started_at=now - timedelta(minutes=6),
        target_tokens=1_000_000,
        tokens_done=250_000,
        tokens_per_s=5_000.0,
    )
    with transaction(factory) as s:
        for rank in (0, 1):
            s.add(
                Instance(
                    run_id=run["id"],
                    rank=rank,
                    name=f"ty-{run['id']}-{rank}",
                    provider="lambda",
                    instance_type="gpu_1x_a10",
                    price_cents_per_hour=120,
                    active_at=now - timedelta(seconds=90),
                )
            )
    evaluation_s = 0.05 * 1_000_000 / 0.9 // 1 / 15_000
    b = client.get(f"/api/v1/runs/{run['id']}").json()["budget"]
    assert (b["max_usd"], b["max_hours"], b["usd_per_hour"]) == (5, 2, 2.4)
    assert b["eta_s"] == pytest.approx(150 + evaluation_s)
    assert b["projected_usd"] == pytest.approx((8 + 240 * 150 / 3600 + 120 * evaluation_s / 3600) / 100, abs=1e-6)
    assert b["hours"] == pytest.approx(0.1, abs=0.01) and b["stop_requested_at"] is None
    listed = client.get("/api/v1/runs").json()["runs"][0]["budget"]
    assert listed["eta_s"] == pytest.approx(b["eta_s"]) and listed["projected_usd"] == pytest.approx(b["projected_usd"])

    # asked to stop: no more training, only the evaluation on node 0
    set_run(factory, run["id"], stop_requested_at=now, stop_reason="budget.max_usd 5 is near")
    b = client.get(f"/api/v1/runs/{run['id']}").json()["budget"]
    assert b["eta_s"] == pytest.approx(evaluation_s) and b["stop_reason"] == "budget.max_usd 5 is near"
    assert b["projected_usd"] == pytest.approx((8 + 120 * evaluation_s / 3600) / 100, abs=1e-6)
    assert b["stop_requested_at"] is not None

    # ended: the projection is what it cost
    set_run(factory, run["id"], status="stopped", finished_at=utcnow())
    got = client.get(f"/api/v1/runs/{run['id']}").json()
    assert got["budget"]["eta_s"] is None and got["budget"]["projected_usd"] == got["cost"]["usd"]


def test_reading_a_run_never_touches_metric_points(client):
    run = submit(client)
    statements: list[str] = []
    engine = client.app.state.engine
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    sa_event.listen(engine, "before_cursor_execute", listener)
    try:
        assert client.get(f"/api/v1/runs/{run['id']}").status_code == 200
        assert client.get("/api/v1/runs").status_code == 200
    finally:
        sa_event.remove(engine, "before_cursor_execute", listener)
    assert statements and not any("metric_points" in s for s in statements)


def test_cancel_is_202_then_409_once_the_run_ended(client, factory):
    run = submit(client)
    r = client.post(f"/api/v1/runs/{run['id']}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    assert r.json()["status"] == "pending"  # the controller, not the API, moves the status
    kinds = [e["kind"] for e in client.get(f"/api/v1/runs/{run['id']}/events").json()["events"]]
    assert kinds == ["status", "cancel"]

    set_run(factory, run["id"], status="cancelled", finished_at=utcnow())
    r = client.post(f"/api/v1/runs/{run['id']}/cancel")
    assert r.status_code == 409
    assert "already ended (cancelled)" in r.json()["detail"]["message"]


def test_metrics_page_by_id_cursor_and_filter_by_kind(client, factory):
    run, other = submit(client), submit(client, name="other")
    with transaction(factory) as s:
        for step in range(1, 26):
            s.add(
                MetricPoint(
                    run_id=run["id"],
                    kind="train",
                    step=step,
                    tokens=step * 100,
                    time=1.0e9 + step,
                    train_loss=10.0 - step * 0.1,
                    lr=1e-3,
                    tokens_per_s=1000.0,
                )
            )
            if step % 5 == 0:
                s.add(
                    MetricPoint(
                        run_id=run["id"],
                        kind="val",
                        step=step,
                        tokens=step * 100,
                        time=1.0e9 + step,
                        val_loss=9.0 - step * 0.1,
                    )
                )
            s.add(MetricPoint(run_id=other["id"], kind="train", step=step, tokens=step, time=1.0e9, train_loss=1.0))

    seen, cursor, pages = [], 0, 0
    while True:
        page = client.get(f"/api/v1/runs/{run['id']}/metrics", params={"after_id": cursor, "limit": 10}).json()
        seen += page["points"]
        cursor, pages = page["next_after_id"], pages + 1
        if not page["has_more"]:
            break
    assert pages == 3 and len(seen) == 30
    assert [p["id"] for p in seen] == sorted(p["id"] for p in seen)
    assert sum(p["kind"] == "val" for p in seen) == 5
    assert seen[0]["train_loss"] == pytest.approx(9.9)

    val = client.get(f"/api/v1/runs/{run['id']}/metrics", params={"kind": "val"}).json()["points"]
    assert [p["step"] for p in val] == [5, 10, 15, 20, 25]
    empty = client.get(f"/api/v1/runs/{run['id']}/metrics", params={"after_id": cursor}).json()
    assert empty["points"] == [] and empty["next_after_id"] == cursor and not empty["has_more"]
    assert client.get(f"/api/v1/runs/{run['id']}/metrics", params={"limit": 20_000}).status_code == 422


def test_events_page_with_a_cursor(client, factory):
    run = submit(client)
    with transaction(factory) as s:
        for i in range(4):
            s.add(RunEvent(run_id=run["id"], kind="info", message=f"note {i}", time=utcnow()))
    first = client.get(f"/api/v1/runs/{run['id']}/events", params={"limit": 3}).json()
    assert first["has_more"] and [e["message"] for e in first["events"]] == ["submitted", "note 0", "note 1"]
    rest = client.get(f"/api/v1/runs/{run['id']}/events", params={"after_id": first["next_after_id"]}).json()
    assert [e["message"] for e in rest["events"]] == ["note 2", "note 3"] and not rest["has_more"]


def test_logs_tail_and_follow_with_a_cursor(client, factory):
    run = submit(client)
    with transaction(factory) as s:
        for i in range(6):
            s.add(LogChunk(run_id=run["id"], rank=0, text=f"line {i}\n", time=utcnow()))
    page = client.get(f"/api/v1/runs/{run['id']}/logs", params={"limit": 4}).json()
    assert "".join(c["text"] for c in page["chunks"]) == "line 0\nline 1\nline 2\nline 3\n"
    assert page["has_more"] and page["run_status"] == "pending" and not page["run_terminal"]
    rest = client.get(f"/api/v1/runs/{run['id']}/logs", params={"after_id": page["next_after_id"]}).json()
    assert [c["text"] for c in rest["chunks"]] == ["line 4\n", "line 5\n"]

    tail = client.get(f"/api/v1/runs/{run['id']}/logs", params={"tail": 2}).json()
    assert [c["text"] for c in tail["chunks"]] == ["line 4\n", "line 5\n"]
    assert tail["next_after_id"] == rest["next_after_id"]

    set_run(factory, run["id"], status="failed", status_reason="trainer exited 1")
    end = client.get(f"/api/v1/runs/{run['id']}/logs", params={"after_id": rest["next_after_id"]}).json()
    assert end["chunks"] == [] and end["run_terminal"] and end["run_status"] == "failed"


def test_health_and_openapi(client, db_url):
    health = client.get("/api/v1/health").json()
    assert health["status"] == "ok" and health["database"] == db_url.split(":")[0].split("+")[0]
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/cancel",
        "/api/v1/runs/{run_id}/metrics",
        "/api/v1/runs/{run_id}/events",
        "/api/v1/runs/{run_id}/logs",
    ):
        assert path in paths
    assert "RunCreate" in schema["components"]["schemas"] and "RunDetail" in schema["components"]["schemas"]


def test_dashboard_pages_are_served_without_any_outside_resource(client):
    run = submit(client)
    pages = {"/": "runs", f"/runs/{run['id']}": "run", "/comparisons": "comparisons", "/plan": "plan"}
    for path, script in pages.items():
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert f"/ui/{script}.js" in r.text and "/ui/vendor/plotly-basic.min.js?v=" in r.text
    # the charting library is the bundle checked in with the package, never from a CDN
    plotly = client.get("/ui/vendor/plotly-basic.min.js")
    assert plotly.status_code == 200 and "plotly.js (basic" in plotly.text[:2000].lower()
    assert "max-age=31536000" in plotly.headers["cache-control"]
    assert "/series" in client.get("/ui/run_charts.js").text
    for asset in ("/", "/plan", "/ui/common.js", "/ui/runs.js", "/ui/run.js", "/ui/comparisons.js", "/ui/style.css"):
        body = client.get(asset).text
        assert "http://" not in body.replace("http://www.w3.org/2000/svg", "") and "https://" not in body, asset
    assert client.get("/ui/nothing.js").status_code == 404


def test_secrets_never_appear_in_responses_or_logs(client, factory, caplog):
    caplog.set_level(logging.DEBUG)
    run = submit(client)
    with transaction(factory) as s:
        s.add(LogChunk(run_id=run["id"], text="training...\n", time=utcnow()))
    bodies = [
        client.get("/api/v1/health").text,
        client.get("/openapi.json").text,
        client.get("/api/v1/runs").text,
        client.get(f"/api/v1/runs/{run['id']}").text,
        client.get(f"/api/v1/runs/{run['id']}/events").text,
        client.get(f"/api/v1/runs/{run['id']}/logs").text,
        client.get(f"/api/v1/runs/{run['id']}/metrics").text,
        client.post(f"/api/v1/runs/{run['id']}/cancel").text,
        client.get("/api/v1/runs/unknown").text,
        client.post("/api/v1/runs", json={"name": "x", "budget": {"max_usd": -1}}).text,
        client.get("/").text,
    ]
    assert client.app.state.settings.lambda_api_key.get_secret_value() == SECRET
    for body in bodies:
        assert SECRET not in body
    assert SECRET not in caplog.text
