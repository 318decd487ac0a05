"""Comparisons through the REST API against a real database (SQLite and PostgreSQL), judged by the
worker's comparison driver (controller/comparing.py) against the fake OpenAI server (`fake`, which
scores by content: 90 for the reference answer, 60 for "partly ...", 40 for any other).

Runs, their evaluations and costs are written straight into the database, the way the controller
writes them; the end-to-end test (test_e2e_compare.py) makes them for real.
"""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from ift_helpers import instruction_data
from orchestrator.api.app import create_app
from orchestrator.controller.comparing import Comparisons
from orchestrator.db.models import ComparisonRequest, CostEntry, Evaluation, Run, RunEvent
from orchestrator.db.session import transaction
from orchestrator.judge.compare import item_set_hash
from orchestrator.judge.schemas import Item
from orchestrator.runs import create_run
from orchestrator.settings import Settings
from orchestrator.spec import validate_spec
from orchestrator_helpers import local_client

KEY = "sk-compare-SECRET-7731-do-not-leak"
ITEMS = [{k: e[k] for k in ("instruction", "input", "output")} for e in instruction_data(4)]
EVALUATION = {"test_max_tokens": 2048, "ift": {"enabled": True, "data": "/data/alpaca.json", "limit_test": 4}}


@pytest.fixture
def settings(db_url, tmp_path, fake):
    return Settings(
        database_url=db_url,
        data_dir=tmp_path,
        data_roots=["/data"],  # where EVALUATION's instruction data is (a baseline run reads it too)
        openai_api_key=SecretStr(KEY),
        judge_base_url=fake.base_url,
        judge_model="judge-a",
        judge_max_retries=0,
        judge_timeout_s=5.0,
        judge_concurrency=2,
        lease_s=30,
    )


def add_run(
    factory,
    name: str,
    *,
    answers: list[str] | None = None,
    items: list[dict] = ITEMS,
    status: str = "succeeded",
    test_loss: float = 5.0,
    cents: float = 0.0,
    **spec,
) -> str:
    """A run as the controller leaves it: status, test loss, evaluations (IFT answers unless
    `answers` is None), instance cost."""
    spec = validate_spec(
        {"name": name, "data": {"source": "builtin:corpus", "max_tokens": 60000}, "evaluation": EVALUATION, **spec}
    )
    with transaction(factory) as s:
        run = create_run(s, spec)
        run.status, run.test_loss = status, test_loss
        s.add(Evaluation(run_id=run.id, kind="test_loss", test_loss=test_loss, bits_per_byte=test_loss / 3))
        if answers is not None:
            rows = [{**item, "model_response": a} for item, a in zip(items, answers, strict=True)]
            s.add(
                Evaluation(
                    run_id=run.id,
                    kind="ift",
                    details={
                        "summary": {"best_epoch": 1},
                        "n_items": len(rows),
                        "answers": rows,
                        "item_set_hash": item_set_hash([Item(**i) for i in items]),
                    },
                )
            )
        if cents:
            s.add(CostEntry(run_id=run.id, kind="instance", cents=cents, description="test"))
        return run.id


def refs(prefix: str = "") -> list[str]:
    return [prefix + i["output"] for i in ITEMS]


def post(client, runs, **body):
    return client.post("/api/v1/comparisons", json={"runs": runs, **body})


def message(r) -> str:
    return r.json()["detail"]["message"]


def judge_all(settings, factory, owner: str = "worker-a", timeout: float = 30.0) -> None:
    """Run a worker's comparison driver until no comparison is waiting or being judged."""
    driver = Comparisons(settings, factory, owner)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            driver.reconcile_once()
            with factory() as s:
                if not s.scalar(
                    select(func.count())
                    .select_from(ComparisonRequest)
                    .where(ComparisonRequest.status.in_(["pending", "running"]))
                ):
                    return
            time.sleep(0.05)
        raise AssertionError("comparisons still waiting")
    finally:
        driver.close()


def run_count(factory) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(Run))


# -- refused requests -----------------------------------------------------------------------------
def test_an_unknown_run_is_404_naming_it_and_nothing_is_created(client, factory):
    a = add_run(factory, "a", answers=refs())
    r = post(client, [a, "nope"], baselines=["gpt2"])
    assert r.status_code == 404 and message(r) == "no run with id 'nope'"
    assert run_count(factory) == 1  # no baseline submitted
    assert client.get("/api/v1/comparisons/nope").status_code == 404


def test_a_run_that_has_not_succeeded_is_409_naming_it(client, factory):
    a = add_run(factory, "a", answers=refs())
    b = add_run(factory, "still-going", status="training")
    r = post(client, [a, b])
    assert r.status_code == 409
    assert message(r) == (f"run {b} (still-going) is training: only a succeeded run with IFT answers can be compared")


def test_a_run_without_ift_answers_is_422_naming_it(client, factory):
    a = add_run(factory, "a", answers=refs())
    b = add_run(factory, "no-ift", answers=None, evaluation={"test_max_tokens": 2048})
    r = post(client, [a, b])
    assert r.status_code == 422 and r.json()["detail"]["field"] == "runs"
    assert message(r) == f"run {b} (no-ift) has no IFT answers: it ran without evaluation.ift.enabled"


def test_runs_that_answered_different_items_are_422(client, factory):
    a = add_run(factory, "a", answers=refs())
    other = [{**i, "output": i["output"] + "!"} for i in ITEMS]
    b = add_run(factory, "b", answers=refs(), items=other)
    r = post(client, [a, b])
    assert r.status_code == 422 and f"runs {a} (a) and {b} (b) answered different test items" in message(r)


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"k": 0}, ["body", "k"]),
        ({"baselines": ["gpt3"]}, ["body", "baselines", 0]),
        ({"mode": "vote"}, ["body", "mode"]),
        ({"runs": []}, ["body", "runs"]),
        ({"judge_key": "x"}, ["body", "judge_key"]),
    ],
)
def test_bad_bodies_are_422_naming_the_field(client, factory, body, loc):
    a = add_run(factory, "a", answers=refs())
    r = client.post("/api/v1/comparisons", json={"runs": [a, a + "x"], **body})
    assert r.status_code == 422 and r.json()["detail"]["field"] == ".".join(str(part) for part in loc[1:])


def test_a_run_named_twice_or_alone_in_comparative_mode_is_422(client, factory):
    a = add_run(factory, "a", answers=refs())
    r = post(client, [a, a])
    assert r.status_code == 422 and message(r) == f"runs: {a} named more than once"
    r = post(client, [a])
    assert r.status_code == 422 and "name at least two runs, or a run and a --baseline" in message(r)
    assert post(client, [a], mode="pointwise").status_code == 201


def test_without_a_judge_key_it_is_503_before_any_baseline_is_paid_for(settings, factory):
    a = add_run(factory, "a", answers=refs())
    with local_client(create_app(settings.model_copy(update={"openai_api_key": None}))) as c:
        r = post(c, [a], baselines=["gpt2"])
    assert r.status_code == 503 and "set TRAINYARD_OPENAI_API_KEY" in message(r)
    assert run_count(factory) == 1


# -- baselines ------------------------------------------------------------------------------------
def test_a_baseline_run_is_submitted_once_then_reused(client, factory):
    a = add_run(factory, "a", answers=refs(), compute={"provider": "local"}, budget={"max_usd": 2})
    first = post(client, [a], baselines=["gpt2"])
    assert first.status_code == 201, first.text
    c = first.json()
    assert c["status"] == "pending" and [r["model"] for r in c["rows"]] == ["a", "gpt2"]
    base_id = c["rows"][1]["run_id"]
    base = client.get(f"/api/v1/runs/{base_id}").json()
    assert (base["name"], base["status"]) == ("baseline gpt2", "pending")
    spec, mine = base["spec"], client.get(f"/api/v1/runs/{a}").json()["spec"]
    assert spec["model"]["pretrained"] == "gpt2"
    assert (spec["data"], spec["evaluation"], spec["budget"]) == (mine["data"], mine["evaluation"], mine["budget"])
    events = client.get(f"/api/v1/runs/{base_id}/events").json()["events"]
    assert f"submitted as the gpt2 baseline of comparison {c['id']}" in [e["message"] for e in events]

    # asked again while it runs, and after it succeeded: the same run, never a second one
    assert post(client, [a], baselines=["gpt2"]).json()["rows"][1]["run_id"] == base_id
    with transaction(factory) as s:
        s.get(Run, base_id).status = "succeeded"
        s.add(Evaluation(run_id=base_id, kind="ift", details={"answers": [], "item_set_hash": "x"}))
    assert post(client, [a], baselines=["gpt2"]).json()["rows"][1]["run_id"] == base_id
    assert run_count(factory) == 2

    # other evaluation settings (fewer test items): another baseline; a failed one is not reused
    b = add_run(
        factory,
        "b",
        answers=refs()[:2],
        items=ITEMS[:2],
        evaluation={**EVALUATION, "ift": {**EVALUATION["ift"], "limit_test": 2}},
    )
    other = post(client, [b], baselines=["gpt2"]).json()["rows"][1]["run_id"]
    assert other != base_id
    with transaction(factory) as s:
        s.get(Run, other).status = "failed"
    assert post(client, [b], baselines=["gpt2"]).json()["rows"][1]["run_id"] not in (base_id, other)


def test_a_baseline_run_that_fails_fails_the_comparison_naming_it(client, factory, settings, fake):
    a = add_run(factory, "a", answers=refs())
    c = post(client, [a], baselines=["gpt2-medium"]).json()
    base_id = c["rows"][1]["run_id"]
    with transaction(factory) as s:
        run = s.get(Run, base_id)
        run.status, run.status_reason = "failed", "evaluation failed: out of memory"
    judge_all(settings, factory)
    c = client.get(f"/api/v1/comparisons/{c['id']}").json()
    assert c["status"] == "failed"
    assert c["status_reason"] == (
        f"baseline gpt2-medium (run {base_id}) ended failed: evaluation failed: out of memory"
    )
    assert fake.calls == 0
    r = client.get(f"/api/v1/comparisons/{c['id']}/report")
    assert r.status_code == 409 and "comparison" in message(r) and "failed" in message(r)


# -- judged ---------------------------------------------------------------------------------------
def test_the_table_rows_come_from_the_right_runs(client, factory, settings, fake):
    good = add_run(factory, "good", answers=refs(), test_loss=3.5, cents=120.0)
    bad = add_run(factory, "bad", answers=refs("wrong: "), test_loss=4.5, cents=80.0)
    base = add_run(factory, "baseline gpt2", answers=refs("partly "), test_loss=4.0, model={"pretrained": "gpt2"})
    c = post(client, [bad, good], baselines=["gpt2"], k=2).json()
    assert [(r["model"], r["run_id"], r["score"]) for r in c["rows"]] == [
        ("bad", bad, None),
        ("good", good, None),
        ("gpt2", base, None),
    ]
    assert c["rows"][2]["run_status"] == "succeeded" and c["status"] == "pending"
    assert client.get(f"/api/v1/comparisons/{c['id']}/report").status_code == 409  # not judged yet

    judge_all(settings, factory)
    assert fake.calls == len(ITEMS) * 2  # one comparative call per item and repeat
    done = client.get(f"/api/v1/comparisons/{c['id']}")
    c = done.json()
    assert c["status"] == "succeeded" and c["report_id"] and c["status_reason"] is None
    rows = {r["model"]: r for r in c["rows"]}
    assert [r["model"] for r in c["rows"]] == ["bad", "good", "gpt2"]
    for model, run_id, score, loss in (("bad", bad, 40, 4.5), ("good", good, 90, 3.5), ("gpt2", base, 60, 4.0)):
        row = rows[model]
        assert (row["run_id"], row["score"], row["test_loss"]) == (run_id, score, loss)
        assert row["bits_per_byte"] == pytest.approx(loss / 3)
        assert (row["ci_low"], row["ci_high"]) == (score, score)  # every item scored alike
        assert (row["n_items"], row["n_expected"], row["n_missing"]) == (4, 8, 0)
    assert rows["gpt2"]["baseline"] == "gpt2" and rows["good"]["baseline"] is None
    with factory() as s:
        judge_cents = {
            rid: s.scalar(select(func.sum(CostEntry.cents)).where(CostEntry.run_id == rid, CostEntry.kind == "judge"))
            for rid in (good, bad, base)
        }
    assert all(v > 0 for v in judge_cents.values())  # each run's share of the judge's tokens
    assert rows["good"]["cost"]["cents"] == pytest.approx(120.0 + judge_cents[good], abs=1e-4)
    assert rows["bad"]["cost"]["cents"] == pytest.approx(80.0 + judge_cents[bad], abs=1e-4)
    assert c["judge"]["model"] == "judge-a" and c["judge"]["k"] == 2
    assert c["usage"]["calls_made"] == 8 and c["usage"]["calls_cached"] == 0

    report = client.get(f"/api/v1/comparisons/{c['id']}/report")
    assert report.status_code == 200
    assert {m["model"]: m["run_id"] for m in report.json()["models"]} == {"bad": bad, "good": good, "gpt2": base}
    assert len(report.json()["items"]) == len(ITEMS)

    # the same comparison again: every judgement from the cache, nothing paid or booked twice
    again = post(client, [bad, good], baselines=["gpt2"], k=2).json()
    judge_all(settings, factory)
    again = client.get(f"/api/v1/comparisons/{again['id']}").json()
    assert fake.calls == 8 and again["usage"] == {"calls_made": 0, "calls_cached": 8, "cost_cents": 0.0}
    assert [r["score"] for r in again["rows"]] == [40, 90, 60]
    assert again["rows"][1]["cost"] == rows["good"]["cost"]
    for text in (done.text, report.text):
        assert KEY not in text


def test_of_two_workers_one_judges_and_nothing_is_paid_twice(client, factory, settings, fake):
    a = add_run(factory, "a", answers=refs())
    b = add_run(factory, "b", answers=refs("partly "))
    cid = post(client, [a, b], k=1).json()["id"]
    first, second = Comparisons(settings, factory, "worker-a"), Comparisons(settings, factory, "worker-b")
    try:
        first.reconcile_once()  # claims it and starts judging on its thread
        second.reconcile_once()
        with factory() as s:
            assert s.get(ComparisonRequest, cid).lease_owner == "worker-a"
        assert list(second._held) == []
        deadline = time.time() + 30
        while client.get(f"/api/v1/comparisons/{cid}").json()["status"] != "succeeded":
            assert time.time() < deadline
            first.reconcile_once()
            second.reconcile_once()
            time.sleep(0.05)
    finally:
        first.close()
        second.close()
    assert fake.calls == len(ITEMS)


def test_ift_answers_are_served_per_run(client, factory):
    a = add_run(factory, "a", answers=refs())
    r = client.get(f"/api/v1/runs/{a}/answers")
    assert r.status_code == 200
    body = r.json()
    assert [x["model_response"] for x in body["answers"]] == refs()
    assert body["answers"][0]["instruction"] == ITEMS[0]["instruction"] and body["summary"] == {"best_epoch": 1}
    assert body["item_set_hash"] == item_set_hash([Item(**i) for i in ITEMS])
    b = add_run(factory, "b", answers=None)
    assert client.get(f"/api/v1/runs/{b}/answers").status_code == 404
    assert client.get("/api/v1/runs/nope/answers").status_code == 404
    with factory() as s:  # the API only reads
        assert s.scalar(select(func.count()).select_from(RunEvent).where(RunEvent.run_id == a)) == 1
