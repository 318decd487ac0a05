"""How runs end: every terminal path terminates the run's instances and books what they cost.

Order matters for crash safety. `end_run` first asks the provider to terminate (idempotent), then
writes the terminal status, the confirmed terminations and their cost entries in one fenced
transaction. A crash before that write leaves the run in its old state and the next pass ends it
again; a terminal run with any instance not confirmed terminated stays claimable, and `cleanup`
keeps terminating until the provider confirms (so "failed, but a node still bills" converges).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.controller.context import RunContext, aware, live_instances, log, set_status
from orchestrator.costs import billed_minutes, instance_cost_cents, run_cost_cents
from orchestrator.db.models import CostEntry, Instance, Run, RunStatus, utcnow
from orchestrator.runs import add_event
from orchestrator.spec import RunSpec
from provision.base import InstanceStatus
from provision.errors import ProvisionError


def terminate_instances(ctx: RunContext, run: Run) -> tuple[set[int], str | None]:
    """Ask the provider to terminate the run's live instances; return the rows whose termination
    the provider confirms (ids of Instance rows) and the error, if the request failed."""
    live = live_instances(run)
    ids = [i.provider_instance_id for i in live if i.provider_instance_id]
    error = None
    if ids:
        try:
            ctx.provider.terminate(ids)
        except ProvisionError as exc:
            error = str(exc)
            log.warning("run %s: terminate %s failed, will retry: %s", run.id, ids, exc)
    confirmed: set[int] = set()
    for row in live:
        ctx.forget(row.provider_instance_id)
        if row.provider_instance_id is None:
            confirmed.add(row.id)  # nothing was ever launched for it
            continue
        try:
            inst = ctx.provider.get(row.provider_instance_id)
        except ProvisionError as exc:
            log.warning("run %s: cannot confirm %s is terminated: %s", run.id, row.name, exc)
            continue  # unknown: not confirmed, asked again next pass
        if inst is None or inst.status.is_gone:
            confirmed.add(row.id)
    return confirmed, error


def book_terminations(session: Session, run: Run, confirmed: set[int], requested: bool) -> None:
    """Mark confirmed instances terminated and book their cost once; note pending requests."""
    now = utcnow()
    rows = session.scalars(
        select(Instance).where(Instance.run_id == run.id, Instance.terminated_at.is_(None))
    ).all()
    booked = set(session.scalars(
        select(CostEntry.instance_id).where(CostEntry.run_id == run.id, CostEntry.kind == "instance")
    ))
    for row in rows:
        if row.id not in confirmed:
            if requested and row.terminate_requested_at is None:
                row.terminate_requested_at = now
                row.status = InstanceStatus.terminating.value
            continue
        row.terminate_requested_at = row.terminate_requested_at or now
        row.terminated_at = now
        row.status = InstanceStatus.terminated.value
        if row.id in booked:
            continue
        minutes = billed_minutes(aware(row.active_at), now)
        session.add(CostEntry(
            run_id=run.id, instance_id=row.id, kind="instance",
            cents=instance_cost_cents(row, now), quantity=float(minutes), unit="minute",
            description=f"{row.name} ({row.instance_type}, {row.region or 'no region'}) "
                        f"at {row.price_cents_per_hour} c/h",
        ))
        add_event(session, run.id, "info", f"instance {row.name} terminated ({minutes} billed minutes)")


def end_run(ctx: RunContext, run: Run, status: RunStatus, reason: str,
            extra: Callable[[Session, Run], None] | None = None) -> None:
    """Terminate everything the run holds, then record how it ended (and `extra` rows with it)."""
    confirmed, error = terminate_instances(ctx, run)
    with ctx.write() as (session, fresh):
        if RunStatus(fresh.status).is_terminal:
            return  # already ended by an earlier pass of ours; cleanup handles the instances
        if extra is not None:
            extra(session, fresh)
        set_status(session, fresh, status, reason=reason)
        book_terminations(session, fresh, confirmed, requested=error is None)
        if error:
            add_event(session, fresh.id, "info", f"terminating the instances failed, retrying: {error}")


def cleanup(ctx: RunContext, run: Run) -> bool:
    """For an ended run: terminate what is left. True when nothing is left running."""
    if not live_instances(run):
        return True
    confirmed, error = terminate_instances(ctx, run)
    with ctx.write() as (session, fresh):
        book_terminations(session, fresh, confirmed, requested=error is None)
    return len(confirmed) == len(live_instances(run))


def budget_exceeded(ctx: RunContext, run: Run, spec: RunSpec) -> str | None:
    """Why the run must stop for its budget, or None while it is within it."""
    budget = spec.budget
    now = utcnow()
    started = aware(run.started_at)
    if budget.max_hours is not None and started is not None:
        hours = (now - started).total_seconds() / 3600
        if hours >= budget.max_hours:
            return f"budget reached: the run has taken {hours:.2f} h, budget.max_hours is {budget.max_hours:g}"
    if budget.max_usd is not None and run.instances:
        with ctx.factory() as session:
            cents = run_cost_cents(session, run.id, now)
        if cents >= budget.max_usd * 100:
            return f"budget reached: the run has cost ${cents / 100:.2f}, budget.max_usd is {budget.max_usd:g}"
    return None
