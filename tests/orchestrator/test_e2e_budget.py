"""End to end on the Lambda simulator (issue 11, part 3): a run whose budget.max_usd is reached
mid-training stops gracefully and keeps its work. The service (a real subprocess) runs a
`provider: lambda` run on a simulated instance (a real sshd machine on 127.0.0.x) with the real
trainer; the controller writes STOP on the node when finishing later would bill past the cap.

What is shown: the run ends `stopped` (not failed, not cancelled) with its final checkpoint,
taken at the step the trainer stopped at, in the store, a test loss measured on it, the budget
events (80% spent, the projection over the cap, the graceful stop), the projected cost in the API
and the CLI, and a booked cost within the cap plus one billing minute, equal to the simulator's
ledger.

The numbers: one gpu_1x_a10 at 75 c/h and the simulator's 20 s minute (tests/orchestrator/
conftest.py) bill 1.25 cents a minute, so budget.max_usd 0.075 buys 6 minutes: 120 s after the
instance turned active. The stop is given 40 s (TRAINYARD_BUDGET_STOP_LEAD_S; the run's own
measurements are smaller here, and the stop takes ~5 s), so the trainer is asked at 80 s, the
first moment finishing 40 s later would start a 7th minute: well after boot, bootstrap and data
preparation (~10 s, tens of seconds on a loaded 2-core machine) and well before its 420k tokens
are trained (~7 minutes at ~1k tokens/s). The lead being two whole minutes, the 5th minute has
just started when the trainer is asked: 6.25 cents spent, over 80% of the cap, so that alert is
due by then on any machine.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator.db.models import Checkpoint, CostEntry, Evaluation, Instance
from orchestrator_helpers import admin, assert_nothing_left, lambda_spec, sim_instances, start_lambda_service
from s3server import iam_moto_server

PRICE_CENTS_PER_HOUR = 75  # gpu_1x_a10 in the simulator's catalog
MINUTES = 6
CAP_USD = MINUTES * PRICE_CENTS_PER_HOUR / 60 / 100  # 0.075
MINUTE_CENTS = PRICE_CENTS_PER_HOUR / 60
TRAIN_TOKENS = 420_000  # ~7 minutes at ~1k tokens/s: the projection is over the cap even at 3k
BUCKET = "ty-budget"


@pytest.fixture(scope="module")
def svc(lsim, tmp_path_factory):
    """The service on the simulator, its checkpoints going to S3 (moto, IAM enforced) as they are
    committed: what a graceful stop keeps is what reached the store."""
    with iam_moto_server(BUCKET) as (url, key):
        service = start_lambda_service(
            lsim,
            tmp_path_factory.mktemp("bservice"),
            AWS_ACCESS_KEY_ID=key["access_key_id"],
            AWS_SECRET_ACCESS_KEY=key["secret_access_key"],
            AWS_DEFAULT_REGION="us-east-1",
            TRAINYARD_ARTIFACT_URI=f"s3://{BUCKET}/trainyard",
            TRAINYARD_ARTIFACT_ENDPOINT_URL=url,
            TRAINYARD_BUDGET_STOP_LEAD_S="40",
        )
        yield service
        service.close()


def budget_spec() -> dict:
    spec = lambda_spec("budget-stop", nodes=1, instance_type="gpu_1x_a10", train_tokens=TRAIN_TOKENS)
    spec["data"]["max_tokens"] = 500_000  # a ~450k-token train split
    spec["model"]["overrides"]["tie_weights"] = True  # a checkpoint of ~40 MB, not ~80
    spec["training"]["checkpoint_every"] = 100  # one every ~30 s of training
    spec["budget"] = {"max_usd": CAP_USD}
    return spec


def test_a_run_stopped_by_its_budget_keeps_a_stored_checkpoint_and_a_test_loss(svc):
    run_id = svc.submit(budget_spec())
    # while it trains the projection is live, over the cap (the whole training would cost more)
    run = svc.wait(
        run_id,
        lambda r: r["status"] == "training" and r["budget"]["projected_usd"] is not None,
        timeout=240,
        what="training with a projected cost",
    )
    # 1.25 cents every 20 s: the simulator's compressed minute bills three times the list price
    assert run["budget"]["max_usd"] == CAP_USD and run["budget"]["usd_per_hour"] == pytest.approx(3 * 0.75)
    assert run["budget"]["projected_usd"] > CAP_USD and run["budget"]["eta_s"] > 0
    shown = svc.cli("status", run_id)
    assert shown.returncode == 0 and f"of ${CAP_USD:g} budget" in shown.stdout, shown.stdout

    run = svc.wait_ended(run_id, timeout=300)
    assert run["status"] == "stopped", (run["status_reason"], svc.log_tail())
    assert run["status_reason"].startswith(f"stopped for its budget: budget.max_usd {CAP_USD:g} is near: "), run[
        "status_reason"
    ]
    path = [e["to_status"] for e in svc.events(run_id) if e["kind"] == "status"]
    assert path == ["pending", "provisioning", "bootstrapping", "training", "evaluating", "stopped"]

    # stopped mid-training, at a step whose checkpoint is in the store, and evaluated on it
    p = run["progress"]
    assert 0 < p["tokens_done"] < p["target_tokens"] == TRAIN_TOKENS
    assert p["test_loss"] is not None and p["test_loss"] > 0
    stop_step = p["step"]
    stored = {c["step"]: c for c in svc.checkpoints(run_id) if c["state"] == "stored"}
    assert stop_step in stored and max(stored) == stop_step, (stop_step, sorted(stored))
    with svc.db() as s:
        (ev,) = s.scalars(select(Evaluation).where(Evaluation.run_id == run_id, Evaluation.kind == "test_loss"))
        assert s.get(Checkpoint, ev.checkpoint_id).step == stop_step
        row = s.scalar(select(Instance).where(Instance.run_id == run_id))
        (booked,) = s.scalars(select(CostEntry).where(CostEntry.run_id == run_id, CostEntry.kind == "instance"))
    disk = Path(svc.sim.cloud.state_dir) / "instances" / row.provider_instance_id / "disk"
    run_dir = disk / "trainyard" / "runs" / row.name
    done = json.loads((run_dir / "DONE").read_text())
    assert (done["step"], done["stopped"]) == (stop_step, True)
    assert done["reason"].startswith(f"budget.max_usd {CAP_USD:g} is near")
    assert (run_dir / "STOP").is_file()

    # the budget events, each once
    said = [e["message"] for e in svc.events(run_id) if e["kind"] == "budget"]
    for start in ("80% of budget.max_usd spent", "the projected cost", "stopping gracefully: budget.max_usd"):
        assert len([m for m in said if m.startswith(start)]) == 1, (start, said)

    # what it cost: within the cap and one billing minute, to the cent as the simulator billed it
    assert_nothing_left(svc, run_id)
    (entry,) = [e for e in admin(svc, "GET", "/billing")["entries"] if e["instance_id"] == row.provider_instance_id]
    assert not entry["running"]
    assert booked.quantity == entry["billed_minutes"]
    assert Decimal(str(booked.cents)).quantize(Decimal("0.01")) == Decimal(str(entry["cost_cents"])).quantize(
        Decimal("0.01")
    )
    assert booked.cents <= CAP_USD * 100 + MINUTE_CENTS + 1e-9, (booked.cents, entry)
    assert run["cost"]["cents"] == pytest.approx(booked.cents)
    assert run["budget"]["projected_usd"] == pytest.approx(run["cost"]["usd"]) and run["budget"]["eta_s"] is None
    assert run["budget"]["stop_reason"] == done["reason"]
    assert [i.status for i in sim_instances(svc, run_id)] == ["terminated"]
