"""A run's instances: recorded when launched, terminated and booked when done (the budget: budget.py).

`steps.end_run` (the one way a run ends) uses these: terminate first (idempotent), then write the
terminal status, the confirmed terminations and their cost entries in one fenced transaction. A
terminal run with any instance not confirmed terminated stays claimable, and `cleanup` keeps
terminating until the provider confirms (so "failed, but a node still bills" converges), or until
controller/cleanup.py gives up and hands the instance to the orphan sweep. An
instance launched but never recorded (a crash between the two) is found by its name and adopted
before the run ends, so it is terminated and billed like the others. A provider that fails never
keeps a run from ending: what could not be terminated stays for `cleanup`, and what could not be
looked for is found by the orphan sweep (orphans.py) by its name. Nothing here changes a run's
status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.controller.context import RunContext, live_instances, load_run, log, spec_of
from orchestrator.controller.outcomes import Record
from orchestrator.controller.policy import NodeLost, one_line
from orchestrator.costs import instance_cost
from orchestrator.db.models import CostEntry, Instance, Run, RunStatus, utcnow
from orchestrator.runs import add_event, next_instance_name
from provision.base import Instance as ProviderInstance
from provision.base import InstanceStatus
from provision.errors import ProvisionError
from provision.node import RUN_PROCESSES


def record_instance(ctx: RunContext, run: Run, rank: int, inst: ProviderInstance) -> None:
    """Remember an instance the provider has for this run (its price frozen now)."""
    now = utcnow()
    with ctx.write() as (session, fresh):
        exists = session.scalar(
            select(Instance.id).where(
                Instance.run_id == run.id,
                Instance.rank == rank,
                Instance.terminated_at.is_(None),
                Instance.terminate_requested_at.is_(None),
            )
        )
        if exists is not None:
            return
        active = inst.status == InstanceStatus.active
        session.add(
            Instance(
                run_id=run.id,
                rank=rank,
                name=inst.name,
                provider=ctx.provider.name,
                provider_instance_id=inst.id,
                instance_type=inst.instance_type,
                region=inst.region,
                public_ip=inst.public_ip,
                private_ip=inst.private_ip,
                ssh_port=inst.ssh_port,
                price_cents_per_hour=inst.price_cents_per_hour,  # frozen at launch, with the billing increment
                billing_minute_s=ctx.settings.billing_minute_s,
                status=inst.status.value,
                workdir=inst.extra.get("workdir"),
                launched_at=now,
                active_at=now if active else None,
            )
        )
        add_event(
            session,
            run.id,
            "placement",
            f"instance {inst.name} ({inst.instance_type} in {inst.region}, "
            f"{inst.price_cents_per_hour} c/h) is {inst.status.value}",
        )


def adopt_unrecorded(ctx: RunContext, run: Run) -> Run:
    """Record instances launched for the run but never written down (a crash between a launch
    and its record), so ending the run terminates and bills them too. Names make them findable.

    Never raises a provider error: when the provider cannot be asked (down, or refusing our key),
    the run still ends, and an instance missed here is not lost: its name (`ty-<run>-<rank>`)
    points to an ended run, so the orphan sweep terminates it and books it on this run."""
    if run.status == RunStatus.pending.value:
        return run  # nothing is launched before provisioning
    # a rank is covered by a row that is not being terminated; a lost node's replacement is
    # looked up under its own name (see runs.instance_name)
    covered = {row.rank for row in run.instances if row.terminate_requested_at is None}
    adopted = False
    for rank in range(spec_of(run).compute.nodes):
        if rank in covered:
            continue
        name = next_instance_name(run.id, rank, run.instances)
        try:
            inst = ctx.provider.find_by_name(name)
        except ProvisionError as exc:
            log.warning("run %s: cannot look for an unrecorded %s: %s", run.id, name, exc)
            ctx.event(
                "info",
                f"could not look for instances launched but not recorded ({one_line(exc)}); "
                "the orphan sweep terminates any it finds",
            )
            break  # the same provider, asked again, would only fail again
        if inst is not None:
            record_instance(ctx, run, rank, inst)
            adopted = True
    return (load_run(ctx.factory, run.id) or run) if adopted else run


@dataclass
class Termination:
    """What one terminate request did: which rows it asked for (and when), which the provider
    confirms gone, and the error if the request failed."""

    requested: set[int] = field(default_factory=set)
    requested_at: datetime | None = None
    confirmed: set[int] = field(default_factory=set)
    error: str | None = None


def _stop_processes(ctx: RunContext, rows: list[Instance]) -> None:
    """On machines the provider keeps running (the user's own hosts), stop what we started."""
    for row in rows:
        try:
            handle = ctx.handle(row)
            for name in RUN_PROCESSES:
                handle.node.stop(workdir=handle.workdir, name=name)
        except (ProvisionError, NodeLost) as exc:  # best effort: the host is released anyway
            log.warning("run %s: could not stop the processes on %s: %s", row.run_id, row.name, exc)


def terminate_instances(ctx: RunContext, run: Run, rows: list[Instance] | None = None) -> Termination:
    """Ask the provider to terminate the run's live instances (or `rows`), then ask which are
    confirmed gone. Never raises a provider error: a failure is returned and retried by the caller."""
    live = live_instances(run) if rows is None else rows
    ids = [i.provider_instance_id for i in live if i.provider_instance_id]
    out = Termination()
    if ids:
        if ctx.provider.keeps_machines:
            _stop_processes(ctx, live)
        # Taken just before the request: the provider stops billing when it handles it, a few
        # milliseconds later (see book_terminations).
        asked = utcnow()
        try:
            ctx.provider.terminate(ids)
            out.requested, out.requested_at = {i.id for i in live if i.provider_instance_id}, asked
        except ProvisionError as exc:
            out.error = str(exc)
            log.warning("run %s: terminate %s failed, will retry: %s", run.id, ids, exc)
    asked_failed = False
    for row in live:
        ctx.forget(row.provider_instance_id)
        if row.provider_instance_id is None:
            out.confirmed.add(row.id)  # nothing was ever launched for it
            continue
        if asked_failed:
            continue  # the provider failed us just now: not confirmed, asked again next pass
        try:
            inst = ctx.provider.get(row.provider_instance_id)
        except ProvisionError as exc:
            log.warning("run %s: cannot confirm %s is terminated: %s", run.id, row.name, exc)
            asked_failed = True
            continue  # unknown: not confirmed, asked again next pass
        if inst is None or inst.status.is_gone:
            out.confirmed.add(row.id)
    return out


def book_terminations(session: Session, run: Run, term: Termination) -> None:
    """Note terminate requests, mark confirmed instances terminated, and book each one's cost once
    (orchestrator.costs.instance_cost: the same rule as the live estimate)."""
    now = utcnow()
    touched = term.requested | term.confirmed
    rows = session.scalars(select(Instance).where(Instance.run_id == run.id, Instance.terminated_at.is_(None))).all()
    booked = set(
        session.scalars(select(CostEntry.instance_id).where(CostEntry.run_id == run.id, CostEntry.kind == "instance"))
    )
    for row in rows:
        if row.id not in touched:
            continue
        if row.id in term.requested and row.terminate_requested_at is None:
            row.terminate_requested_at = term.requested_at
        if row.id not in term.confirmed:
            row.status = InstanceStatus.terminating.value
            continue
        row.terminated_at = now
        row.status = InstanceStatus.terminated.value
        if row.id in booked:
            continue
        minutes = book_instance(session, row, now)
        add_event(session, run.id, "info", f"instance {row.name} terminated ({minutes} billed minutes)")


def book_instance(session: Session, row: Instance, now: datetime) -> int:
    """Add the cost entry of a terminated instance (orchestrator.costs.instance_cost: the same
    rule as the live estimate); returns its billed minutes. The caller makes sure it is once."""
    cost = instance_cost(row, now)
    session.add(
        CostEntry(
            run_id=row.run_id,
            instance_id=row.id,
            kind="instance",
            cents=cost.cents,
            quantity=float(cost.minutes),
            unit="minute",
            description=f"{row.name} ({row.instance_type}, {row.region or 'no region'}) at {row.price_cents_per_hour} c/h",
        )
    )
    return cost.minutes


def release_workers(ctx: RunContext, run: Run) -> Record:
    """Terminate every node but node 0 (after training only node 0 has work left, and an idle
    node still bills). Returns the write that books them, for the caller's status transaction."""
    workers = [row for row in live_instances(run) if row.rank > 0 and row.terminate_requested_at is None]
    term = terminate_instances(ctx, run, workers) if workers else Termination()
    return lambda session, fresh: book_terminations(session, fresh, term)


def cleanup(ctx: RunContext, run: Run) -> str | None:
    """For an ended run: terminate what is left (but what cleanup.py gave up: the orphan sweep's
    now). None once nothing is left running, else why not yet (the provider's error, or what it
    has not confirmed gone). Never raises a provider error."""
    left = [row for row in live_instances(run) if row.cleanup_gave_up_at is None]
    if not left:
        return None
    term = terminate_instances(ctx, run, left)
    with ctx.write() as (session, fresh):
        book_terminations(session, fresh, term)
    waiting = [row.name for row in left if row.id not in term.confirmed]
    if not waiting:
        return None
    return term.error or f"{', '.join(waiting)} not confirmed terminated by provider {ctx.provider.name} yet"
