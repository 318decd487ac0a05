"""The budget rule (orchestrator/controller/budget.py), in milliseconds, on the fake provider of
test_steps.py: the lead time a stop is given, the billed-minute test that asks the trainer to
stop, the backstop, the alerts (once each), and what the state machine makes of a stopped run.

Every instance here bills 120 c/h (2 cents a started minute, 60 s minutes): budget.max_usd 0.80
buys exactly 40 minutes.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest
from sqlalchemy import select

from orchestrator.controller import budget
from orchestrator.controller.context import spec_of
from orchestrator.controller.evaluation import evaluating
from orchestrator.controller.outcomes import Done
from orchestrator.controller.training import training
from orchestrator.db.models import Checkpoint, Instance, Run, RunStatus, utcnow
from orchestrator.db.session import transaction
from orchestrator.settings import Settings
from orchestrator_helpers import sessions, set_run
from provision.errors import NodeUnreachable
from test_steps import Env, assert_all_terminated_and_booked

S = RunStatus
CAP = {"max_usd": 0.80}  # 40 billed minutes
LEAD_S = 60.0
WHY = "budget.max_usd 0.8 is near"


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    from orchestrator.db.migrations import upgrade

    path = tmp_path_factory.mktemp("db") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def env(template_db, tmp_path):
    shutil.copy(template_db, tmp_path / "trainyard.db")
    url = f"sqlite:///{tmp_path / 'trainyard.db'}"
    factory = sessions(url)
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        worker_id="worker-t",
        lease_s=30,
        reconcile_interval_s=1.0,
        budget_stop_lead_s=LEAD_S,
    )
    yield Env(factory, settings)
    factory.kw["bind"].dispose()


def up_for(env: Env, seconds: float) -> None:
    """Every instance of the run turned active `seconds` ago."""
    with transaction(env.factory) as s:
        for row in s.scalars(select(Instance).where(Instance.run_id == env.run_id)):
            row.active_at = utcnow() - timedelta(seconds=seconds)


def check(env: Env) -> str | None:
    run = env.run()
    return budget.check(env.ctx, run, spec_of(run))


def stop_file(env: Env) -> dict | None:
    text = env.node(0).files.get(env.file(0, "STOP"))
    return None if text is None else json.loads(text)


# -- the lead time --------------------------------------------------------------------------------
def test_the_lead_time_is_the_settings_floor_or_what_the_run_measured_if_longer(env):
    env.make_run(S.training, budget=CAP)
    run = env.run()
    assert budget.stop_lead_s(env.ctx, run, spec_of(run)) == LEAD_S  # nothing measured yet

    # 1,000 tokens/s and 5,000 tokens a step; the last checkpoint took 40 s to reach the store;
    # the test split is 5% of the data the 1M-token target needs (1M / 0.9), forward only at 3x
    set_run(env.factory, env.run_id, tokens_per_s=1000.0, target_tokens=1_000_000)
    set_run(env.factory, env.run_id, trainer_start={"tokens_per_step": 5000})
    made = utcnow() - timedelta(minutes=5)
    with transaction(env.factory) as s:
        for step, upload_s in ((10, 5), (20, 40)):
            s.add(
                Checkpoint(
                    run_id=env.run_id,
                    step=step,
                    tokens=step * 5000,
                    uri=f"file:///store/step_{step:06d}",
                    state="stored",
                    created_at=made,
                    stored_at=made + timedelta(seconds=upload_s),
                )
            )
    run = env.run()
    evaluation_s = 55_555 / 3000
    want = 5 + 2 * 40 + evaluation_s + 2 * 1.0  # a step, save + upload, evaluation, two passes
    assert budget.stop_lead_s(env.ctx, run, spec_of(run)) == pytest.approx(want)


def test_without_a_test_loss_the_lead_time_has_no_evaluation(env):
    env.make_run(S.training, budget=CAP, test_loss=False)
    set_run(env.factory, env.run_id, tokens_per_s=10.0, target_tokens=1_000_000)  # a slow evaluation, if any
    run = env.run()
    assert budget.stop_lead_s(env.ctx, run, spec_of(run)) == LEAD_S


# -- the graceful stop, on billed minutes ---------------------------------------------------------
def test_the_trainer_is_asked_to_stop_only_when_finishing_later_would_bill_a_minute_past_the_cap(env):
    env.make_run(S.training, budget=CAP)
    # up 38m30s: 39 minutes billed; the stop would end at 39m30s, inside the 40th: in budget
    up_for(env, 38 * 60 + 30)
    assert check(env) is None
    assert env.run().stop_requested_at is None and stop_file(env) is None

    # up 39m10s: 40 minutes billed (the cap exactly, not over it); a stop ending 60 s later would
    # start a 41st minute, so the trainer is asked now
    up_for(env, 39 * 60 + 10)
    assert check(env) is None  # not the backstop: the run goes on to its checkpoint
    run = env.run()
    assert run.status == "training" and run.stop_requested_at is not None
    assert run.stop_reason == (
        "budget.max_usd 0.8 is near: the run has cost $0.80 and would be billed $0.82 by the time a "
        "final checkpoint is stored and its test loss measured (~60 s)"
    )
    assert stop_file(env)["reason"] == run.stop_reason
    (said,) = [m for m in env.events("budget") if m.startswith("stopping gracefully")]
    assert said.startswith(f"stopping gracefully: {run.stop_reason}; the trainer checkpoints now")

    # asked once; a STOP node 0 lost (a replaced node 0) is written again
    del env.node(0).files[env.file(0, "STOP")]
    assert check(env) is None
    assert [m for m in env.events("budget") if m.startswith("stopping")] == [said]
    assert env.run().stop_requested_at == run.stop_requested_at
    assert stop_file(env)["reason"] == run.stop_reason


def test_the_trainer_is_asked_before_max_hours_comes(env):
    env.make_run(S.training, budget={"max_hours": 1})
    set_run(env.factory, env.run_id, started_at=utcnow() - timedelta(minutes=58))
    assert check(env) is None and env.run().stop_requested_at is None  # 58 min + 60 s < 1 h
    set_run(env.factory, env.run_id, started_at=utcnow() - timedelta(minutes=59, seconds=30))
    assert check(env) is None
    assert env.run().stop_reason == (
        "budget.max_hours 1 is near: the run has taken 0.99 h and needs ~60 s to store a final "
        "checkpoint and measure its test loss"
    )
    assert stop_file(env) is not None


def test_a_node_0_that_does_not_answer_is_asked_again_next_pass(env):
    env.make_run(S.training, budget=CAP)
    up_for(env, 39 * 60 + 10)
    env.node(0).broken = NodeUnreachable("node 0: no answer")
    assert check(env) is None
    assert env.run().stop_requested_at is not None and env.node(0).files.get(env.file(0, "STOP")) is None
    env.node(0).broken = None
    assert check(env) is None and stop_file(env) is not None


# -- the backstop ---------------------------------------------------------------------------------
def test_over_the_cap_the_run_ends_at_once_even_while_it_stops(env):
    env.make_run(S.training, budget=CAP)
    set_run(env.factory, env.run_id, stop_requested_at=utcnow(), stop_reason=WHY)
    up_for(env, 40 * 60 - 1)  # 40 minutes billed: the cap, not over it
    assert check(env) is None
    up_for(env, 40 * 60 + 1)  # a 41st minute started
    assert check(env) == "budget reached: the run has cost $0.82, budget.max_usd is 0.8"
    assert env.reconcile() is True
    run = env.run()
    assert (run.status, run.status_reason) == (
        "stopped",
        "budget reached: the run has cost $0.82, budget.max_usd is 0.8",
    )


@pytest.mark.parametrize("status", [S.provisioning, S.bootstrapping, S.recovering])
def test_before_training_the_run_ends_before_its_next_minute_would_pass_the_cap(env, status):
    env.make_run(status, budget=CAP, launched=True)
    up_for(env, 39 * 60)  # 40 minutes billed; two passes from now still within the 40th
    assert check(env) is None
    up_for(env, 39 * 60 + 59)  # two passes from now a 41st minute starts
    assert check(env) == (
        "budget reached: the run has cost $0.80 and its next billing increment would pass budget.max_usd 0.8"
    )
    assert stop_file(env) is None  # no graceful stop outside training


def test_a_zero_budget_ends_the_run_before_anything_bills(env):
    env.make_run(S.pending, budget={"max_usd": 0})
    assert check(env) == (
        "budget reached: the run has cost $0.00 and its next billing increment would pass budget.max_usd 0"
    )


def test_the_time_cap_ends_the_run_as_before(env):
    env.make_run(S.training, budget={"max_hours": 0.25})
    assert check(env) == "budget reached: the run has taken 0.50 h, budget.max_hours is 0.25"


# -- the alerts -----------------------------------------------------------------------------------
def test_each_alert_is_recorded_once(env):
    env.make_run(S.training, budget={"max_usd": 0.80, "max_hours": 1})
    # 33 minutes billed (66 cents: over 80%); 1,000 s of training left at 1,000 tokens/s then the
    # evaluation: projected ~100 cents and ~1.1 h, both over their caps; 50 minutes gone (over 80%)
    up_for(env, 32 * 60 + 30)
    set_run(
        env.factory,
        env.run_id,
        started_at=utcnow() - timedelta(minutes=50),
        tokens_per_s=1000.0,
        target_tokens=1_000_000,
        tokens_done=0,
    )
    for _ in range(3):
        assert check(env) is None
    said = env.events("budget")
    assert len(said) == 4
    assert said[0] == "80% of budget.max_usd spent: $0.66 of $0.80"
    assert said[1].startswith("the projected cost $1.00 is over budget.max_usd 0.8 ($0.66 so far, 16m58s to go)")
    assert said[2] == "80% of budget.max_hours gone: 0.83 h of 1 h"
    assert said[3].startswith("the projected time 1.12 h is over budget.max_hours 1")
    assert env.run().stop_requested_at is None  # the stop itself is not due yet


def test_a_run_without_a_budget_is_left_alone(env):
    env.make_run(S.training)
    up_for(env, 100 * 3600)
    assert check(env) is None and env.events("budget") == []


# -- after the stop: the state machine ------------------------------------------------------------
def test_a_stopped_trainer_is_evaluated_without_fine_tuning_and_the_run_ends_stopped(env):
    env.make_run(S.training, nodes=2, budget=CAP, evaluation={"test_loss": True, "ift": {"enabled": True}})
    set_run(env.factory, env.run_id, stop_requested_at=utcnow(), stop_reason=WHY)
    node = env.node(0)
    node.set_proc(env.workdir(0), "train", running=True)
    node.write(env.file(0, "DONE"), json.dumps({"step": 7, "tokens": 700, "stopped": True, "reason": WHY}))
    node.write(
        env.file(0, "metrics.jsonl"), json.dumps({"kind": "stopped", "step": 7, "tokens": 700, "reason": WHY}) + "\n"
    )
    out = env.stage(training)
    assert out == Done("training stopped with a final checkpoint; measuring the test loss on node 0")
    run = env.apply(out)
    assert (run.status, run.step, run.tokens_done) == ("evaluating", 7, 700)
    env.next_step()
    assert_all_terminated_and_booked(env, ranks={1})  # the worker is released as after any training

    node.set_proc(env.workdir(0), "eval", exit_code=0)
    node.write(env.file(0, "eval.json"), json.dumps({"test_loss": 5.5, "step": 7, "checkpoint": "step_000007"}))
    out = env.stage(evaluating)
    assert out.message == "test loss 5.5000 on the test split"
    run = env.apply(out)
    assert (run.status, run.test_loss) == ("stopped", 5.5)
    assert run.status_reason == f"stopped for its budget: {WHY}; test loss 5.5000 on the test split"
    assert "ift" not in node.started_names()  # no fine-tuning: it would cost more time
    assert_all_terminated_and_booked(env)


def test_a_stopped_run_without_evaluation_ends_stopped(env):
    env.make_run(S.training, budget=CAP, test_loss=False)
    set_run(env.factory, env.run_id, stop_requested_at=utcnow(), stop_reason=WHY)
    run = env.apply(Done("training stopped with a final checkpoint (evaluation is off)"))
    assert (run.status, run.status_reason) == (
        "stopped",
        f"stopped for its budget: {WHY}; training stopped with a final checkpoint (evaluation is off)",
    )
    with env.factory() as s:
        assert s.get(Run, env.run_id).finished_at is not None


# -- what the CLI shows ---------------------------------------------------------------------------
def test_status_and_watch_show_the_projected_cost_against_the_budget():
    from orchestrator.cli.output import budget_text
    from orchestrator.cli.watch import _plain_line

    run = {
        "id": "r1",
        "status": "training",
        "progress": {
            "train_loss": 5.0,
            "val_loss": None,
            "tokens_per_s": 1000.0,
            "eta_s": 60.0,
            "tokens_done": 1000,
            "target_tokens": 5000,
        },
        "cost": {"cents": 40.0},
        "budget": {
            "max_usd": 0.8,
            "max_hours": 2,
            "hours": 0.5,
            "projected_usd": 1.234,
            "stop_requested_at": None,
        },
    }
    assert budget_text(run) == "projected $1.23 of $0.80 budget, 0.50 h of 2 h"
    assert _plain_line(run).endswith("ETA 1m00s  (projected $1.23 of $0.80 budget, 0.50 h of 2 h)")
    run["budget"].update(max_usd=0.075, max_hours=None, stop_requested_at="2026-01-01T00:00:00Z")
    assert budget_text(run) == "projected $1.23 of $0.075 budget, stopping for the budget (checkpoint, then test loss)"
    run["budget"] = {"max_usd": None, "max_hours": None, "projected_usd": None}
    assert budget_text(run) == "-" and "(" not in _plain_line(run)
