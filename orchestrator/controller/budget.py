"""The run's budget (spec `budget.max_usd`, `budget.max_hours`): one rule, checked once per pass
before the stage (steps.reconcile).

- **What the run will cost**: a `BudgetView`: cost so far (orchestrator.costs: booked + live),
  the US$/h of the instances in use, the ETA and the projected final cost
  (orchestrator.projection, the same numbers `GET /runs/{id}` shows), hours since provisioning
  began.
- **Alerts** (events of kind `budget`, each once per run): 80% of `max_usd` spent or of
  `max_hours` gone; the projected cost or time over the cap.
- **A graceful stop** while `training`: when the run billed at (now + the stop's lead time)
  would pass `max_usd`, or that moment would reach `max_hours`, the controller writes `STOP` on
  node 0 (trainer.control) and records `stop_requested_at` / `stop_reason`. The trainer
  checkpoints at its current step, stores the checkpoint and writes DONE; the run then evaluates
  that checkpoint (no instruction fine-tuning) and ends `stopped` with its test loss (steps.py).
  Billing is by started increment (costs.instance_cost), so the test is on billed minutes: a
  stop that ends within the minute already started costs nothing more, and the trainer is asked
  only when finishing later would start a minute past the cap.
- **The lead time** covers the step in progress, saving and uploading the checkpoint (twice the
  run's last upload), the test-loss evaluation (projection.eta) and two passes of the
  controller, and is never less than `settings.budget_stop_lead_s`.
- **The backstop**, in every state: a cost over the cap (strictly) or `max_hours` reached ends
  the run `stopped` at once (its nodes terminated, the work since the last stored checkpoint
  lost), which bounds what a run costs at the cap plus one billing increment of its nodes. In
  the states before training (and while recovering) a run also ends as soon as its next billing
  increment would pass `max_usd`: nothing there is worth a graceful stop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from orchestrator.controller import commands as cmd
from orchestrator.controller.context import RunContext, log, usable_instances
from orchestrator.controller.policy import NodeLost, one_line
from orchestrator.costs import run_cost_cents
from orchestrator.db.models import Checkpoint, Run, RunEvent, RunStatus, aware, utcnow
from orchestrator.projection import Eta, Rates, eta, projected_cents, rates_of, run_eta
from orchestrator.runs import add_event
from orchestrator.spec import BudgetSpec, RunSpec
from provision.errors import ProvisionError

S = RunStatus
#: the kind of every budget event
KIND = "budget"
#: the alerts (each recorded once per run: its message starts with these words)
USD_80 = "80% of budget.max_usd"
HOURS_80 = "80% of budget.max_hours"
USD_PROJECTED = "the projected cost"
HOURS_PROJECTED = "the projected time"
#: the states in which the run winds down gracefully (the backstop alone may end it at once)
_GRACEFUL = (S.training.value, S.evaluating.value)
#: cents below which two costs are the same (float sums of a price x minutes / 60)
_EPS = 1e-6


@dataclass(frozen=True)
class BudgetView:
    """What the run has cost and will cost, at `now`."""

    now: datetime
    cost_cents: float
    rates: Rates
    eta: Eta | None
    #: since provisioning began
    hours: float

    @property
    def projected_cents(self) -> float | None:
        return projected_cents(self.cost_cents, self.rates, self.eta)

    @property
    def projected_hours(self) -> float | None:
        return None if self.eta is None else self.hours + self.eta.total_s / 3600


def view_of(ctx: RunContext, run: Run, now: datetime) -> BudgetView:
    with ctx.factory() as session:
        cost = run_cost_cents(session, run.id, now)
    started = aware(run.started_at)
    return BudgetView(
        now=now,
        cost_cents=cost,
        rates=rates_of(run.instances),
        eta=run_eta(run),
        hours=max(0.0, (now - started).total_seconds() / 3600) if started is not None else 0.0,
    )


def check(ctx: RunContext, run: Run, spec: RunSpec) -> str | None:
    """The budget rule for one pass: records the alerts due, asks the trainer to stop when it is
    time, and returns why the run must end now (the backstop), or None."""
    budget = spec.budget
    if budget.max_usd is None and budget.max_hours is None:
        return None
    v = view_of(ctx, run, utcnow())
    over = backstop(v, budget)
    if over is not None:
        return over
    if run.status not in _GRACEFUL and budget.max_usd is not None:
        soon = v.now + timedelta(seconds=2 * ctx.settings.reconcile_interval_s)  # the terminate's time
        at = billed_at(ctx, run, soon)
        if at > budget.max_usd * 100 + _EPS or budget.max_usd == 0:  # 0: not one minute may be billed
            return (
                f"budget reached: the run has cost {_usd(v.cost_cents)} and its next billing increment "
                f"would pass budget.max_usd {budget.max_usd:g}"
            )
    _alert(ctx, run, budget, v)
    if run.status == S.training.value:
        if run.stop_requested_at is not None:
            _ask_trainer(ctx, run, run.stop_reason or "budget")  # again, if node 0 lost the file
        else:
            why = stop_due(ctx, run, spec, v)
            if why is not None:
                request_stop(ctx, run, why)
    return None


def backstop(v: BudgetView, budget: BudgetSpec) -> str | None:
    """Why the run must end at once: over the cost cap (strictly), or out of time."""
    if budget.max_hours is not None and v.hours >= budget.max_hours:
        return f"budget reached: the run has taken {v.hours:.2f} h, budget.max_hours is {budget.max_hours:g}"
    if budget.max_usd is not None and v.cost_cents > budget.max_usd * 100 + _EPS:
        return f"budget reached: the run has cost {_usd(v.cost_cents)}, budget.max_usd is {budget.max_usd:g}"
    return None


def billed_at(ctx: RunContext, run: Run, when: datetime) -> float:
    """What the run will have cost at `when`, its instances in use still up then (in cents)."""
    with ctx.factory() as session:
        return run_cost_cents(session, run.id, when)


def stop_lead_s(ctx: RunContext, run: Run, spec: RunSpec) -> float:
    """Seconds from asking the trainer to stop until the run has ended (see the module doc)."""
    tps = run.tokens_per_s or 0.0
    step_s = float((run.trainer_start or {}).get("tokens_per_step") or 0) / tps if tps > 0 else 0.0
    with ctx.factory() as session:
        last = session.execute(
            select(Checkpoint.created_at, Checkpoint.stored_at)
            .where(Checkpoint.run_id == run.id, Checkpoint.stored_at.is_not(None))
            .order_by(Checkpoint.step.desc())
            .limit(1)
        ).first()
    upload_s = max(0.0, (aware(last.stored_at) - aware(last.created_at)).total_seconds()) if last else 0.0
    evaluation = eta(
        run.spec,
        run.status,
        target_tokens=run.target_tokens,
        tokens_done=run.tokens_done or 0,
        tokens_per_s=run.tokens_per_s,
        test_loss_known=False,
        stopping=True,
    )
    evaluation_s = evaluation.evaluation_s if evaluation is not None and spec.evaluation.test_loss else 0.0
    estimate = step_s + 2 * upload_s + evaluation_s + 2 * ctx.settings.reconcile_interval_s
    return max(ctx.settings.budget_stop_lead_s, estimate)


def stop_due(ctx: RunContext, run: Run, spec: RunSpec, v: BudgetView) -> str | None:
    """Why the trainer must be asked to stop now, or None while finishing later stays in budget."""
    budget = spec.budget
    lead = stop_lead_s(ctx, run, spec)
    if budget.max_hours is not None and v.hours + lead / 3600 >= budget.max_hours:
        return (
            f"budget.max_hours {budget.max_hours:g} is near: the run has taken {v.hours:.2f} h and needs "
            f"~{lead:.0f} s to store a final checkpoint and measure its test loss"
        )
    if budget.max_usd is not None:
        at = billed_at(ctx, run, v.now + timedelta(seconds=lead))
        if at > budget.max_usd * 100 + _EPS:
            return (
                f"budget.max_usd {budget.max_usd:g} is near: the run has cost {_usd(v.cost_cents)} and "
                f"would be billed {_usd(at)} by the time a final checkpoint is stored and its test loss "
                f"measured (~{lead:.0f} s)"
            )
    return None


def request_stop(ctx: RunContext, run: Run, why: str) -> None:
    """Record the stop (once), then ask the trainer (STOP on node 0)."""
    with ctx.write() as (session, fresh):
        if fresh.stop_requested_at is not None:
            return
        fresh.stop_requested_at, fresh.stop_reason = utcnow(), why
        add_event(
            session,
            fresh.id,
            KIND,
            f"stopping gracefully: {why}; the trainer checkpoints now, the test loss is measured on that "
            "checkpoint, then the nodes are terminated",
        )
    _ask_trainer(ctx, run, why)


def _ask_trainer(ctx: RunContext, run: Run, why: str) -> None:
    """STOP on node 0, unless it is there already. A node that does not answer is asked again
    next pass (the training stage meets the same node and deals with it)."""
    head = next((row for row in usable_instances(run) if row.rank == 0), None)
    if head is None:
        return
    try:
        h = ctx.handle(head)
        stop = cmd.path(h.workdir, cmd.STOP)
        if not h.node.exists(stop):
            h.node.write_json(stop, {"reason": why, "time": round(time.time(), 3)})
    except (NodeLost, ProvisionError) as exc:
        log.warning("run %s: cannot write STOP on %s yet: %s", run.id, head.name, one_line(exc))


def _alert(ctx: RunContext, run: Run, budget: BudgetSpec, v: BudgetView) -> None:
    """Record the alerts that are due and not recorded yet."""
    due: list[tuple[str, str]] = []
    if budget.max_usd is not None:
        cap = budget.max_usd * 100
        if v.cost_cents >= 0.8 * cap - _EPS:
            due.append((USD_80, f"{USD_80} spent: {_usd(v.cost_cents)} of {_usd(cap)}"))
        projected = v.projected_cents
        if projected is not None and projected > cap + _EPS:
            due.append(
                (
                    USD_PROJECTED,
                    f"{USD_PROJECTED} ${projected / 100:.2f} is over budget.max_usd {budget.max_usd:g} "
                    f"({_usd(v.cost_cents)} so far, {_eta_text(v)} to go): the run will stop before the "
                    "cap, with a final checkpoint and its test loss",
                )
            )
    if budget.max_hours is not None:
        if v.hours >= 0.8 * budget.max_hours:
            due.append((HOURS_80, f"{HOURS_80} gone: {v.hours:.2f} h of {budget.max_hours:g} h"))
        hours = v.projected_hours
        if hours is not None and hours > budget.max_hours:
            due.append(
                (
                    HOURS_PROJECTED,
                    f"{HOURS_PROJECTED} {hours:.2f} h is over budget.max_hours {budget.max_hours:g}: the run "
                    "will stop before, with a final checkpoint and its test loss",
                )
            )
    if not due:
        return
    with ctx.factory() as session:
        said = session.scalars(select(RunEvent.message).where(RunEvent.run_id == run.id, RunEvent.kind == KIND)).all()
    new = [message for key, message in due if not any(m.startswith(key) for m in said)]
    if new:
        with ctx.write() as (session, _fresh):
            for message in new:
                add_event(session, run.id, KIND, message)


def _usd(cents: float) -> str:
    """US$ to the cent, or to 1/100 cent when that is not exact ($0.0625: 5 minutes at 75 c/h)."""
    return f"${cents / 100:.2f}" if abs(cents - round(cents)) < 1e-6 else f"${cents / 100:.4f}".rstrip("0")


def _eta_text(v: BudgetView) -> str:
    s = int(v.eta.total_s) if v.eta is not None else 0
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
