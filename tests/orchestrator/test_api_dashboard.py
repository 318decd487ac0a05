"""The API the dashboard's pages read (docs/dashboard.md), against a real database (SQLite and
PostgreSQL), through the ASGI app.

Runs, metric points, events, instances and cost entries are written straight into the database,
the way the controller writes them (bulk inserts, no trainer), to check what the pages are shown.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import get_args

import pytest
from sqlalchemy import insert, text

from orchestrator.api import views
from orchestrator.api.routes.runs import RunSort
from orchestrator.costs import run_cost_cents
from orchestrator.db.models import (
    Checkpoint,
    Comparison,
    ComparisonRequest,
    CostEntry,
    Evaluation,
    Instance,
    MetricPoint,
    RunEvent,
    utcnow,
)
from orchestrator.db.session import transaction
from orchestrator.judge.compare import item_set_hash
from orchestrator.judge.schemas import Item
from orchestrator.pareto import dominates, on_frontier
from orchestrator_helpers import set_run

T0 = 1_800_000_000.0  # unix seconds of the first metric point


def submit(client, name: str = "dash", **spec) -> dict:
    r = client.post("/api/v1/runs", json={"name": name, **spec})
    assert r.status_code == 201, r.text
    return r.json()


def add_points(factory, run_id: str, rows: list[dict]) -> None:
    with transaction(factory) as s:
        s.execute(insert(MetricPoint), [{"run_id": run_id, **r} for r in rows])


def train(step: int, loss: float, **kw) -> dict:
    return {
        "kind": "train",
        "step": step,
        "tokens": step * 1000,
        "time": T0 + step,
        "train_loss": loss,
        "lr": 1e-3,
        "tokens_per_s": 500.0,
        **kw,
    }


def val(step: int, loss: float) -> dict:
    return {"kind": "val", "step": step, "tokens": step * 1000, "time": T0 + step, "val_loss": loss}


def add_instance(factory, run_id: str, rank: int, price_cents_per_hour: int = 120, **kw) -> int:
    with transaction(factory) as s:
        inst = Instance(
            run_id=run_id,
            rank=rank,
            name=f"ty-{run_id}-{rank}",
            provider="lambda",
            instance_type="gpu_1x_a10",
            price_cents_per_hour=price_cents_per_hour,
            **kw,
        )
        s.add(inst)
        s.flush()
        return inst.id


def series(client, run_id: str, **params) -> dict:
    r = client.get(f"/api/v1/runs/{run_id}/series", params=params)
    assert r.status_code == 200, r.text
    return r.json()


# -- series ---------------------------------------------------------------------------------------
def test_a_series_of_one_point_with_its_cost_at_that_moment(client, factory):
    run = submit(client)
    add_points(factory, run["id"], [train(1, 5.5)])
    # active 120 s before the point at 120 c/h: two billing minutes by then, 4 cents
    active = datetime.fromtimestamp(T0 + 1 - 120, timezone.utc)
    add_instance(factory, run["id"], 0, active_at=active)

    got = series(client, run["id"])
    s = got["series"]
    assert s["train_loss"] == {"tokens": [1000], "time": [T0 + 1], "usd": [0.04], "y": [5.5], "raw_points": 1}
    assert s["lr"]["y"] == [1e-3] and s["tokens_per_s"]["y"] == [500.0]
    assert s["val_loss"] == {"tokens": [], "time": [], "usd": [], "y": [], "raw_points": 0}
    assert got["downsampled"] is False and got["run_id"] == run["id"] and got["next_after_id"] > 0


def test_a_long_series_is_downsampled_in_the_database_keeping_its_extremes(client, factory):
    run, n = submit(client), 100_000
    # a falling noisy curve with one spike and one dip, bulk-made by the database itself
    with transaction(factory) as s:
        s.execute(
            text(
                "INSERT INTO metric_points (run_id, kind, step, tokens, time, train_loss, lr, tokens_per_s) "
                "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < :n) "
                "SELECT :run, 'train', i, i * 1000, :t0 + i, "
                "CASE WHEN i = 31337 THEN 99.0 WHEN i = 77777 THEN 0.25 ELSE 3.0 + 7.0 / (1 + i / 1000.0) "
                "+ (i % 7) * 0.01 END, 0.001, 500.0 + (i % 13) FROM g"
            ),
            {"n": n, "run": run["id"], "t0": T0},
        )
    add_points(factory, run["id"], [val(step, 4.0 - step / n) for step in range(100, n + 1, 100)])  # 1,000

    got = series(client, run["id"])
    loss, vals = got["series"]["train_loss"], got["series"]["val_loss"]
    assert got["downsampled"] is True
    assert loss["raw_points"] == n and 1000 < len(loss["y"]) <= 2000
    assert max(loss["y"]) == 99.0 and min(loss["y"]) == 0.25  # the spike and the dip survive
    for key in ("tokens", "time", "usd"):
        assert len(loss[key]) == len(loss["y"])
    assert loss["tokens"] == sorted(loss["tokens"]) and loss["tokens"][0] == 1000 and loss["tokens"][-1] == n * 1000
    # a falling curve: each bucket gives its max before its min
    assert loss["y"][0] > loss["y"][1]
    # the validation series is small enough to come whole
    assert vals["raw_points"] == len(vals["y"]) == 1000 and vals["y"][0] == pytest.approx(3.999)

    small = series(client, run["id"], max_points=10)
    assert len(small["series"]["train_loss"]["y"]) <= 10 and len(small["series"]["val_loss"]["y"]) <= 10
    assert max(small["series"]["train_loss"]["y"]) == 99.0 and min(small["series"]["train_loss"]["y"]) == 0.25


@pytest.mark.parametrize("max_points", [9, 5001])
def test_max_points_out_of_range_is_422(client, max_points):
    run = submit(client)
    r = client.get(f"/api/v1/runs/{run['id']}/series", params={"max_points": max_points})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "max_points"


def test_the_series_cursor_returns_only_new_points(client, factory):
    run, other = submit(client), submit(client, name="other")
    add_points(factory, run["id"], [train(step, 5.0 - step / 100) for step in range(1, 51)] + [val(50, 4.9)])
    first = series(client, run["id"])
    assert first["series"]["train_loss"]["raw_points"] == 50 and first["series"]["val_loss"]["y"] == [4.9]

    add_points(factory, other["id"], [train(1, 1.0)])  # another run's point is not this run's news
    add_points(factory, run["id"], [train(51, 4.4), train(52, 4.3), val(52, 4.35)])
    new = series(client, run["id"], after_id=first["next_after_id"])
    assert new["series"]["train_loss"]["y"] == [4.4, 4.3] and new["series"]["train_loss"]["tokens"] == [51000, 52000]
    assert new["series"]["val_loss"]["y"] == [4.35] and new["series"]["lr"]["raw_points"] == 2
    assert new["next_after_id"] > first["next_after_id"]

    again = series(client, run["id"], after_id=new["next_after_id"])
    assert again["next_after_id"] == new["next_after_id"]
    assert all(s["y"] == [] for s in again["series"].values())
    assert client.get("/api/v1/runs/nope/series").status_code == 404


def test_null_values_are_left_out_of_their_series(client, factory):
    run = submit(client)
    add_points(factory, run["id"], [train(1, 5.0), train(2, 4.9, lr=None), train(3, 4.8, tokens_per_s=None)])
    s = series(client, run["id"])["series"]
    assert s["train_loss"]["y"] == [5.0, 4.9, 4.8]
    assert s["lr"]["tokens"] == [1000, 3000] and s["tokens_per_s"]["tokens"] == [1000, 2000]


# -- the runs list --------------------------------------------------------------------------------
def ids(client, **params) -> list[str]:
    r = client.get("/api/v1/runs", params=params)
    assert r.status_code == 200, r.text
    return [run["id"] for run in r.json()["runs"]]


def test_runs_carry_their_provider_and_instance_type_and_filter_by_them(client):
    local = submit(client, "local-run")
    cloud = submit(client, "cloud-run", compute={"provider": "lambda", "instance_type": "gpu_1x_a10"})
    ssh = submit(client, "ssh-run", compute={"provider": "ssh"})
    listed = {r["id"]: r for r in client.get("/api/v1/runs").json()["runs"]}
    assert (listed[cloud["id"]]["provider"], listed[cloud["id"]]["instance_type"]) == ("lambda", "gpu_1x_a10")
    assert (listed[local["id"]]["provider"], listed[local["id"]]["instance_type"]) == ("local", None)
    assert client.get(f"/api/v1/runs/{ssh['id']}").json()["provider"] == "ssh"

    assert ids(client, provider="lambda") == [cloud["id"]]
    assert set(ids(client, provider=["lambda", "ssh"])) == {cloud["id"], ssh["id"]}
    r = client.get("/api/v1/runs", params={"provider": ["lambda", "ssh"]}).json()
    assert r["total"] == 2
    bad = client.get("/api/v1/runs", params={"provider": "aws"})
    assert bad.status_code == 422 and bad.json()["detail"]["field"] == "provider.0"
    assert "'local', 'lambda' or 'ssh'" in bad.json()["detail"]["message"]


def test_q_matches_a_name_substring_in_any_case_or_an_id_prefix(client):
    a = submit(client, "GPT2-small_fineweb")
    b = submit(client, "tiny smallish")
    assert ids(client, q="small_FINE") == [a["id"]]
    assert ids(client, q="SMALL") == [b["id"], a["id"]]
    # LIKE's wildcards are matched as themselves
    assert ids(client, q="%") == [] and ids(client, q="_") == [a["id"]]
    assert ids(client, q=b["id"][:8]) == [b["id"]]  # ids are 12 hex digits: 8 tell them apart
    assert ids(client, q=b["id"][:8].upper()) == [b["id"]]
    assert client.get("/api/v1/runs", params={"q": "nothing-like-it"}).json()["total"] == 0


def test_sort_by_each_column_with_nulls_last_in_either_order(client, factory):
    runs = [submit(client, name) for name in ("bravo", "Alpha", "charlie", "delta")]
    a, b, c, d = (r["id"] for r in runs)
    set_run(factory, a, train_loss=3.0, tokens_per_s=100.0, status="training", target_tokens=1000, tokens_done=500)
    set_run(factory, b, train_loss=2.0, tokens_per_s=300.0, status="succeeded", target_tokens=1000, tokens_done=990)
    set_run(factory, c, train_loss=4.0, status="failed", target_tokens=1000, tokens_done=700)
    # d: no loss, no speed, no target yet (pending)
    with transaction(factory) as s:
        s.add(CostEntry(run_id=a, kind="instance", cents=50.0))
        s.add(CostEntry(run_id=c, kind="instance", cents=900.0))
        s.add(CostEntry(run_id=c, kind="judge", cents=1.0))

    assert ids(client, sort="train_loss", order="asc") == [b, a, c, d]
    assert ids(client, sort="train_loss") == [c, a, b, d]
    # nulls last either way, among themselves newest first
    assert ids(client, sort="tokens_per_s", order="asc") == [a, b, d, c]
    assert ids(client, sort="tokens_per_s") == [b, a, d, c]
    assert ids(client, sort="test_loss") == [d, c, b, a]
    assert ids(client, sort="name", order="asc") == [b, a, c, d]  # case-insensitive
    assert ids(client, sort="status", order="asc") == [c, d, b, a]
    # a succeeded run is 100% done whatever its counter says, and sorts so
    assert ids(client, sort="progress") == [b, c, a, d]
    assert ids(client, sort="progress", order="asc") == [a, c, b, d]
    assert ids(client, sort="cost") == [c, a, d, b]
    assert ids(client, sort="created_at", order="asc") == [a, b, c, d]
    assert ids(client, sort="cost", limit=1, offset=1) == [a]


def test_sort_by_cost_counts_the_live_cost_of_instances_still_billing(client, factory):
    """The table shows booked + live cost; the cost sort orders by the same number, so a running
    run with no cost entry yet is not ranked as free."""
    booked, live, free = (submit(client, name)["id"] for name in ("booked", "live", "free"))
    with transaction(factory) as s:
        s.add(CostEntry(run_id=booked, kind="instance", cents=500.0))
    # active for 2 hours at US$10/h, nothing booked yet: about US$20, above the booked US$5
    add_instance(factory, live, 0, price_cents_per_hour=1000, active_at=datetime.now(timezone.utc) - timedelta(hours=2))
    listed = client.get("/api/v1/runs", params={"sort": "cost"}).json()["runs"]
    assert [r["id"] for r in listed] == [live, booked, free]
    assert [r["cost"]["usd"] for r in listed][0] > 19.9
    assert ids(client, sort="cost", order="asc") == [free, booked, live]
    assert ids(client, sort="cost", limit=1, offset=1) == [booked]


def test_every_sort_key_the_api_names_sorts_both_ways(client):
    run = submit(client)
    assert get_args(RunSort) == views.SORT_KEYS
    for key in views.SORT_KEYS:
        for order in ("asc", "desc"):
            assert ids(client, sort=key, order=order) == [run["id"]]


@pytest.mark.parametrize(
    "params, field, allowed",
    [
        ({"sort": "size"}, "sort", views.SORT_KEYS),
        ({"order": "up"}, "order", ("desc", "asc")),
        ({"status": "done"}, "status", ("pending", "succeeded")),
    ],
)
def test_bad_sort_or_order_is_422_naming_the_allowed_values(client, params, field, allowed):
    r = client.get("/api/v1/runs", params=params)
    assert r.status_code == 422
    error = r.json()["detail"]["errors"][0]
    assert error["field"].split(".")[0] == field
    for value in allowed:
        assert f"'{value}'" in error["message"]


def test_a_succeeded_run_is_exactly_done(client, factory):
    run = submit(client)
    set_run(factory, run["id"], status="training", target_tokens=1_000_000, tokens_done=991_232)
    assert client.get(f"/api/v1/runs/{run['id']}").json()["progress"]["fraction"] == pytest.approx(0.991232)
    set_run(factory, run["id"], status="succeeded", finished_at=utcnow())
    assert client.get(f"/api/v1/runs/{run['id']}").json()["progress"]["fraction"] == 1.0
    assert client.get("/api/v1/runs").json()["runs"][0]["progress"]["fraction"] == 1.0


# -- events ---------------------------------------------------------------------------------------
def test_events_newest_first_paged_backwards(client, factory):
    run = submit(client)
    with transaction(factory) as s:
        for i in range(6):
            s.add(RunEvent(run_id=run["id"], kind="info", message=f"note {i}", time=utcnow()))
    url = f"/api/v1/runs/{run['id']}/events"
    first = client.get(url, params={"order": "desc", "limit": 3}).json()
    assert [e["message"] for e in first["events"]] == ["note 5", "note 4", "note 3"] and first["has_more"]
    second = client.get(url, params={"order": "desc", "limit": 3, "before_id": first["next_before_id"]}).json()
    assert [e["message"] for e in second["events"]] == ["note 2", "note 1", "note 0"] and second["has_more"]
    last = client.get(url, params={"order": "desc", "limit": 3, "before_id": second["next_before_id"]}).json()
    assert [e["message"] for e in last["events"]] == ["submitted"] and not last["has_more"]
    empty = client.get(url, params={"order": "desc", "before_id": last["next_before_id"]}).json()
    assert empty["events"] == [] and empty["next_before_id"] == last["next_before_id"]

    # what came since the newest one shown, ascending (the default order)
    with transaction(factory) as s:
        s.add(RunEvent(run_id=run["id"], kind="info", message="note 6", time=utcnow()))
    since = client.get(url, params={"after_id": first["next_after_id"]}).json()
    assert [e["message"] for e in since["events"]] == ["note 6"]
    assert client.get(url, params={"order": "sideways"}).status_code == 422


# -- timeline -------------------------------------------------------------------------------------
def test_timeline_spans_and_instances_add_up_to_the_runs_cost(client, factory):
    run = submit(client, budget={"max_usd": 5})
    rid = run["id"]
    t = utcnow().replace(microsecond=0) - timedelta(hours=2)
    moments = [
        ("pending", "provisioning", 0),
        ("provisioning", "bootstrapping", 300),
        ("bootstrapping", "training", 600),
        ("training", "evaluating", 3600),
        ("evaluating", "succeeded", 4000),
    ]
    with transaction(factory) as s:
        first = s.query(RunEvent).filter_by(run_id=rid).one()
        first.time = t - timedelta(seconds=60)
        for before, after, at in moments:
            s.add(
                RunEvent(run_id=rid, kind="status", from_status=before, to_status=after, time=t + timedelta(seconds=at))
            )
        s.add(RunEvent(run_id=rid, kind="info", message="not a state", time=t + timedelta(seconds=700)))
    # node 0 from provisioning to the end; node 1 lost mid-training (preempted: seen gone)
    n0 = add_instance(
        factory,
        rid,
        0,
        launched_at=t + timedelta(seconds=10),
        active_at=t + timedelta(seconds=250),
        terminate_requested_at=t + timedelta(seconds=3990),
        terminated_at=t + timedelta(seconds=3995),
        status="terminated",
    )
    n1 = add_instance(
        factory,
        rid,
        1,
        launched_at=t + timedelta(seconds=10),
        active_at=t + timedelta(seconds=280),
        terminated_at=t + timedelta(seconds=2000.5),
        status="terminated",
        price_cents_per_hour=600,
    )
    with transaction(factory) as s:
        # booked as the controller books them (orchestrator.costs.instance_cost), and a judge's share
        s.add(CostEntry(run_id=rid, instance_id=n0, kind="instance", cents=63 * 2.0))  # 3740 s: 63 min
        s.add(CostEntry(run_id=rid, instance_id=n1, kind="instance", cents=29 * 10.0))  # 1720.5 s: 29 min
        s.add(CostEntry(run_id=rid, kind="judge", cents=0.37))
    set_run(factory, rid, status="succeeded", started_at=t, finished_at=t + timedelta(seconds=4000))

    tl = client.get(f"/api/v1/runs/{rid}/timeline").json()
    assert all(st["start"].endswith("Z") for st in tl["states"])
    assert [(st["status"], _at(st["start"]), _at(st["end"])) for st in tl["states"]] == [
        ("pending", t - timedelta(seconds=60), t),
        ("provisioning", t, t + timedelta(seconds=300)),
        ("bootstrapping", t + timedelta(seconds=300), t + timedelta(seconds=600)),
        ("training", t + timedelta(seconds=600), t + timedelta(seconds=3600)),
        ("evaluating", t + timedelta(seconds=3600), t + timedelta(seconds=4000)),
        ("succeeded", t + timedelta(seconds=4000), t + timedelta(seconds=4000)),  # the end: a moment
    ]
    usd = {st["status"]: st["usd"] for st in tl["states"]}
    assert usd["pending"] == 0 and usd["succeeded"] == 0
    # provisioning: node 0 from 250 s (1 min), node 1 from 280 s (1 min) until 300 s
    assert usd["provisioning"] == pytest.approx(0.02 + 0.10)
    with factory() as s:
        cents = run_cost_cents(s, rid, utcnow())
    assert tl["total_usd"] == pytest.approx(cents / 100, abs=1e-6) == pytest.approx(4.1637)
    assert tl["other_usd"] == pytest.approx(0.0037)
    assert round(sum(usd.values()) + tl["other_usd"], 2) == round(cents / 100, 2)
    assert tl["budget_usd"] == 5 and tl["now"].endswith("Z")

    nodes = {i["rank"]: i for i in tl["instances"]}
    assert (nodes[0]["usd"], nodes[1]["usd"]) == (1.26, 2.9)
    assert nodes[0]["usd_per_hour"] == 1.2 and nodes[1]["usd_per_hour"] == 6.0
    assert _at(nodes[0]["ended_at"]) == t + timedelta(seconds=3990)  # our terminate request
    assert _at(nodes[1]["ended_at"]) == t + timedelta(seconds=2000.5)  # found gone
    lines = {line["name"]: line for line in tl["cost_series"]}
    assert set(lines) == {f"ty-{rid}-0", f"ty-{rid}-1", "total"}
    for name, line in lines.items():
        # about 200 samples, plus the launch (an instance) or every instance's ends (the total)
        assert len(line["time"]) == len(line["usd"]) <= (205 if name == "total" else 202)
        times = [_at(x) for x in line["time"]]
        assert line["usd"] == sorted(line["usd"]) and times == sorted(times)
    assert lines[f"ty-{rid}-0"]["usd"][-1] == 1.26 and lines[f"ty-{rid}-1"]["usd"][0] == 0
    assert lines["total"]["usd"][-1] == pytest.approx(1.26 + 2.9)
    assert client.get("/api/v1/runs/nope/timeline").status_code == 404


def test_a_running_runs_timeline_ends_now(client, factory):
    run = submit(client)
    now = utcnow()
    with transaction(factory) as s:
        s.add(RunEvent(run_id=run["id"], kind="status", from_status="pending", to_status="training", time=now))
    add_instance(factory, run["id"], 0, active_at=now - timedelta(seconds=90))
    tl = client.get(f"/api/v1/runs/{run['id']}/timeline").json()
    assert tl["states"][-1]["status"] == "training" and tl["states"][-1]["end"] is None
    assert tl["instances"][0]["ended_at"] is None and tl["instances"][0]["usd"] == pytest.approx(0.04, abs=0.02)
    assert tl["total_usd"] == pytest.approx(tl["instances"][0]["usd"], abs=0.02) and tl["budget_usd"] is None


def _at(iso: str | None) -> datetime | None:
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00"))


# -- evaluations, Pareto, comparisons -------------------------------------------------------------
def test_evaluations_without_their_details(client, factory):
    run = submit(client)
    with transaction(factory) as s:
        ckpt = Checkpoint(run_id=run["id"], step=120, tokens=1000, uri="file:///x")
        s.add(ckpt)
        s.flush()
        s.add(
            Evaluation(
                run_id=run["id"],
                checkpoint_id=ckpt.id,
                kind="test_loss",
                test_loss=3.5,
                bits_per_byte=1.1,
                tokens=4096,
                window=128,
                precision="fp32",
            )
        )
        s.add(Evaluation(run_id=run["id"], kind="ift", details={"answers": [{"model_response": "long"}]}))
    got = client.get(f"/api/v1/runs/{run['id']}/evaluations").json()
    fields = ("kind", "test_loss", "bits_per_byte", "tokens", "window", "precision", "checkpoint_step")
    assert [tuple(e[f] for f in fields) for e in got] == [
        ("test_loss", 3.5, 1.1, 4096, 128, "fp32", 120),  # what the test loss was measured with
        ("ift", None, None, None, None, None, None),
    ]
    assert "details" not in got[0] and got[0]["created_at"]
    assert client.get("/api/v1/runs/nope/evaluations").status_code == 404


def test_pareto_over_finished_runs_marks_the_frontier(client, factory):
    #          name      status       test loss  cents
    table = [
        ("cheap", "succeeded", 4.0, 100.0),
        ("good", "succeeded", 3.0, 500.0),
        ("worse", "stopped", 3.5, 600.0),  # dominated by good
        ("tie", "succeeded", 3.0, 500.0),  # equal to good: on the frontier too
        ("best", "stopped", 2.5, 900.0),
        ("running", "training", 1.0, 1.0),  # not finished
        ("failed", "failed", 1.0, 1.0),
    ]
    made = {}
    for name, status, loss, cents in table:
        rid = submit(client, name)["id"]
        set_run(factory, rid, status=status, test_loss=loss)
        with transaction(factory) as s:
            s.add(CostEntry(run_id=rid, kind="instance", cents=cents))
        made[name] = rid
    set_run(factory, submit(client, "no-loss")["id"], status="succeeded")

    points = {p["name"]: p for p in client.get("/api/v1/pareto").json()["points"]}
    assert set(points) == {"cheap", "good", "worse", "tie", "best"}
    assert {n for n, p in points.items() if p["frontier"]} == {"cheap", "good", "tie", "best"}
    assert points["worse"] == {
        "run_id": made["worse"],
        "name": "worse",
        "status": "stopped",
        "test_loss": 3.5,
        "usd": 6.0,
        "frontier": False,
    }


def test_the_frontier_rule_is_the_brute_force_one():
    rng = random.Random(7)
    for _ in range(300):
        pts = [(float(rng.randint(0, 6)), float(rng.randint(0, 6))) for _ in range(rng.randint(0, 15))]
        assert on_frontier(pts) == [not any(dominates(o, p) for o in pts) for p in pts]


def _report(cid: str, models: dict[str, str], items: list[Item]) -> dict:
    names = list(models)
    judgements = [
        {
            "repeat": repeat,
            "order": names,
            "scores": {m: {"score": 50.0 + 10 * k + repeat, "position": k + 1} for k, m in enumerate(names)},
            "attempts": 1,
            "cached": False,
        }
        for repeat in range(2)
    ]
    return {
        "id": cid,
        "created_at": utcnow().isoformat(),
        "judge": {
            "mode": "comparative",
            "model": "judge-a",
            "template_hash": "t",
            "item_set_hash": item_set_hash(items),
            "k": 2,
            "seed": 0,
        },
        "models": [
            {
                "model": m,
                "run_id": rid,
                "mean": 50.0,
                "ci_low": 40.0,
                "ci_high": 60.0,
                "n_items_scored": len(items),
                "n_expected": 2 * len(items),
                "n_scored": 2 * len(items),
                "n_missing": 0,
            }
            for m, rid in models.items()
        ],
        "differences": [],
        "n_expected": 2 * len(items),
        "n_missing": 0,
        "consistency": {"models": [], "positions": [], "position_bias": 3.5},
        "usage": {
            "calls_made": 2,
            "calls_cached": 0,
            "input_tokens": 10,
            "output_tokens": 5,
            "paid_input_tokens": 10,
            "paid_output_tokens": 5,
            "cost_cents": 0.2,
            "booked_cents": 0.2,
        },
        "items": [
            {"index": i, "instruction": item.instruction, "judgements": judgements} for i, item in enumerate(items)
        ],
    }


def test_comparisons_newest_first_and_a_report_with_every_models_answer(client, factory):
    items = [
        Item(instruction="Add 2 and 2.", input="", output="4"),
        Item(instruction="Say hi.", input="x", output="hi"),
    ]
    a, b = submit(client, "a")["id"], submit(client, "b")["id"]
    with transaction(factory) as s:
        for rid, answers in ((a, ["4", "hi"]), (b, ["5", "hello"])):
            rows = [{**item.model_dump(), "model_response": text} for item, text in zip(items, answers, strict=True)]
            s.add(Evaluation(run_id=rid, kind="ift", details={"answers": rows, "item_set_hash": item_set_hash(items)}))
        t = utcnow()
        for k, cid in enumerate(("c-old", "c-new")):
            report_id = f"r-{cid}" if cid == "c-new" else None
            if report_id:
                s.add(
                    Comparison(
                        id=report_id,
                        mode="comparative",
                        judge_model="judge-a",
                        judge_version={},
                        models=["a", "b"],
                        report=_report(report_id, {"a": a, "b": b}, items),
                    )
                )
                s.flush()
            s.add(
                ComparisonRequest(
                    id=cid,
                    status="succeeded" if report_id else "pending",
                    mode="comparative",
                    k=2,
                    seed=0,
                    models=[
                        {"label": "a", "run_id": a, "baseline": None},
                        {"label": "b", "run_id": b, "baseline": None},
                    ],
                    report_id=report_id,
                    created_at=t + timedelta(seconds=k),
                    updated_at=t,
                )
            )
    listed = client.get("/api/v1/comparisons").json()
    assert [c["id"] for c in listed["comparisons"]] == ["c-new", "c-old"] and listed["total"] == 2
    assert [r["model"] for r in listed["comparisons"][0]["rows"]] == ["a", "b"]
    assert listed["comparisons"][0]["usage"]["calls_made"] == 2 and listed["comparisons"][1]["usage"] is None
    assert listed["comparisons"][0] == client.get("/api/v1/comparisons/c-new").json()
    assert [c["id"] for c in client.get("/api/v1/comparisons", params={"offset": 1}).json()["comparisons"]] == ["c-old"]

    report = client.get("/api/v1/comparisons/c-new/report").json()
    assert report["consistency"]["position_bias"] == 3.5 and len(report["items"]) == 2
    first, second = report["item_answers"]
    assert first == {
        "index": 0,
        "instruction": "Add 2 and 2.",
        "input": "",
        "reference": "4",
        "answers": {"a": "4", "b": "5"},
        "scores": {"a": 50.5, "b": 60.5},
    }
    assert second["answers"] == {"a": "hi", "b": "hello"} and second["input"] == "x"
