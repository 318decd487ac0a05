"""How runs end: every terminal path terminates the run's instances and books what they cost.

Order matters for crash safety. `end_run` first asks the provider to terminate (idempotent), then
writes the terminal status, the confirmed terminations and their cost entries in one fenced
transaction. A crash before that write leaves the run in its old state and the next pass ends it
again; a terminal run with any instance not confirmed terminated stays claimable, and `cleanup`
keeps terminating until the provider confirms (so "failed, but a node still bills" converges).
An instance launched but never recorded (a crash between the two) is found by its name and
adopted before the run ends, so it is terminated and billed like the others.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.controller.context import (
    RunContext, aware, live_instances, load_run, log, set_status, spec_of,
)
from orchestrator.costs import billed_minutes, instance_cost_cents, run_cost_cents
from orchestrator.db.models import CostEntry, Instance, Run, RunStatus, utcnow
from orchestrator.runs import add_event, instance_name
from orchestrator.spec import RunSpec
from provision.base import Instance as ProviderInstance
from provision.base import InstanceStatus
from provision.errors import ProvisionError


def record_instance(ctx: RunContext, run: Run, rank: int, inst: ProviderInstance) -> None:
    """Remember an instance the provider has for this run (its price frozen now)."""
    now = utcnow()
    with ctx.write() as (session, fresh):
        exists = session.scalar(select(Instance.id).where(
            Instance.run_id == run.id, Instance.rank == rank, Instance.terminated_at.is_(None)))
        if exists is not None:
            return
        active = inst.status == InstanceStatus.active
        session.add(Instance(
            run_id=run.id, rank=rank, name=inst.name, provider=ctx.provider.name,
            provider_instance_id=inst.id, instance_type=inst.instance_type, region=inst.region,
            public_ip=inst.public_ip, private_ip=inst.private_ip, ssh_port=inst.ssh_port,
            price_cents_per_hour=inst.price_cents_per_hour,  # frozen at launch
            status=inst.status.value, workdir=inst.extra.get("workdir"),
            launched_at=now, active_at=now if active else None,
        ))
        add_event(session, run.id, "placement",
                  f"instance {inst.name} ({inst.instance_type} in {inst.region}, "
                  f"{inst.price_cents_per_hour} c/h) is {inst.status.value}")


def adopt_unrecorded(ctx: RunContext, run: Run) -> Run:
    """Record instances launched for the run but never written down (a crash between a launch
    and its record), so ending the run terminates and bills them too. Names make them findable."""
    if run.status == RunStatus.pending.value:
        return run  # nothing is launched before provisioning
    recorded = {row.rank for row in run.instances}
    adopted = False
    for rank in range(spec_of(run).compute.nodes):
        if rank in recorded:
            continue
        inst = ctx.provider.find_by_name(instance_name(run.id, rank))
        if inst is not None:
            record_instance(ctx, run, rank, inst)
            adopted = True
    return (load_run(ctx.factory, run.id) or run) if adopted else run


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
    run = adopt_unrecorded(ctx, run)
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
