"""A run's instances: recorded when launched, terminated and booked when done (the budget: budget.py).

`steps.end_run` (the one way a run ends) uses these: its intent written, terminate (idempotent),
then the terminal status, the confirmed terminations and their cost entries in one fenced
transaction. A terminal run with any instance not confirmed terminated stays claimable, and
`cleanup` keeps terminating until the provider confirms (so "failed, but a node still bills"
converges), or until controller/cleanup.py gives up and hands the instance to the orphan sweep.
Every instance named for the run (`ty-<run>-*`) that no row records (a crash between a launch and
its record, or a launch by a worker paused right after its last lease check) is found by its name
and adopted when the run ends and on every cleanup pass, so it is terminated and billed like the
others. Nodes let go of while the run goes on are marked in the caller's write
(`mark_for_termination`) and terminated by the next step (`finish_terminations`). The time of each
terminate request is written on its row before the request (`terminate_instances`), and kept over
a later repeat once the provider shows the instance going. A provider that fails never
keeps a run from ending: what could not be terminated stays for `cleanup`, and what could not be
looked for is found by the orphan sweep (orphans.py) by its name. Nothing here changes a run's
status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from orchestrator.controller.context import RunContext, live_instances, load_run, log, usable_instances
from orchestrator.controller.outcomes import Record
from orchestrator.controller.policy import NodeLost, one_line
from orchestrator.costs import active_since, instance_cost
from orchestrator.db.models import CostEntry, Instance, Run, RunEvent, aware, utcnow
from orchestrator.runs import add_event, rank_of_instance, run_id_of_instance
from provision.base import Instance as ProviderInstance
from provision.base import InstanceStatus
from provision.errors import ProvisionError
from provision.node import RUN_PROCESSES


def record_instance(ctx: RunContext, run: Run, rank: int, inst: ProviderInstance, *, extra: bool = False) -> None:
    """Remember an instance the provider has for this run (its price frozen now). `extra`: one
    found under the run's name beside the rank's recorded one (adopt_unrecorded), recorded too."""
    now = utcnow()
    with ctx.write() as (session, fresh):
        exists = session.scalar(
            select(Instance.id).where(
                Instance.run_id == run.id,
                Instance.provider_instance_id == inst.id
                if extra
                else and_(
                    Instance.rank == rank,
                    Instance.terminated_at.is_(None),
                    Instance.terminate_requested_at.is_(None),
                ),
            )
        )
        if exists is not None:
            return
        booting = inst.status == InstanceStatus.booting
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
                booting_seen_at=now if booting else None,
                # found past booting (launched by a worker that died before recording it, or by
                # the local provider, active at once): it may have billed since its launch was
                # asked for, so billing is counted from then (never below the bill)
                active_at=None if booting else _launch_asked_at(session, run.id, inst.name) or now,
            )
        )
        add_event(
            session,
            run.id,
            "placement",
            f"instance {inst.name} ({inst.instance_type} in {inst.region}, "
            f"{inst.price_cents_per_hour} c/h) is {inst.status.value}"
            + (" (found under the run's name)" if extra else ""),
        )


def note_launch(ctx: RunContext, name: str, instance_type: str, region: str) -> None:
    """The "launch" event placement writes, fenced, right before a launch request: the lease check
    that guards the launch, and the evidence `_launch_asked_at` reads."""
    ctx.event("launch", f"{_launching(name)} {instance_type} in {region}")


def _launching(name: str) -> str:
    return f"launching {name}:"


def _launch_asked_at(session: Session, run_id: str, name: str) -> datetime | None:
    """When a launch of `name` was last asked for (note_launch), or None."""
    return session.scalar(
        select(func.max(RunEvent.time)).where(
            RunEvent.run_id == run_id, RunEvent.kind == "launch", RunEvent.message.startswith(_launching(name))
        )
    )


def adopt_unrecorded(ctx: RunContext, run: Run) -> Run:
    """Record every instance at the provider named for this run (`ty-<run>-<rank>...`) that no
    row records, so ending the run terminates and bills it too: one launched by a worker that
    died before recording it, or, in the window no fence closes, by a worker paused right after
    its last lease check (placement._fence_launch). Names make them findable.

    Never raises a provider error: when the provider cannot be asked (down, or refusing our key),
    the run still ends, and an instance missed here is not lost: its name points to an ended run,
    so the orphan sweep terminates it and books it on this run."""
    if run.started_at is None:
        return run  # it never left pending: nothing is launched before provisioning
    recorded = {row.provider_instance_id for row in run.instances}
    try:
        found = [
            inst
            for inst in ctx.provider.list()
            if run_id_of_instance(inst.name) == run.id and inst.id not in recorded and not inst.status.is_gone
        ]
    except ProvisionError as exc:
        log.warning("run %s: cannot look for unrecorded instances: %s", run.id, exc)
        ctx.event(
            "info",
            f"could not look for instances launched but not recorded ({one_line(exc)}); "
            "the orphan sweep terminates any it finds",
        )
        return run
    for inst in found:
        record_instance(ctx, run, rank_of_instance(inst.name) or 0, inst, extra=True)
    return (load_run(ctx.factory, run.id) or run) if found else run


@dataclass
class Termination:
    """What one terminate request did: which rows it asked for, which the provider confirms
    gone, and the error if the request failed. When each was asked is on its row
    (`terminate_requested_at`, written before the request)."""

    requested: set[int] = field(default_factory=set)
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


#: the provider's states in which an instance still bills: a terminate request was not taken
_RUNNING = frozenset({InstanceStatus.booting, InstanceStatus.active, InstanceStatus.unhealthy})


def terminate_instances(ctx: RunContext, run: Run, rows: list[Instance] | None = None) -> Termination:
    """Ask the provider to terminate the run's live instances (or `rows`), then ask which are
    confirmed gone. Never raises a provider error: a failure is returned and retried by the
    caller. Raises LeaseLostError, asking nothing, when our lease is gone.

    Before the request, one fenced write keeps on each row when it is asked for: billing ends
    when the provider takes the request (costs.py), and a worker killed right after it must
    not leave the next one to book its own repeat, seconds or minutes later. A row asked for
    before keeps that time when the provider shows the instance no longer running (the earlier
    request was taken), and gets the new time when it still runs (the earlier one failed or was
    never sent). An instance never seen active gets its activation here when the provider shows
    it active now (placement.active_since, from its last sighting booting): a run ended just
    after its node turned active still pays for the minute the provider bills."""
    live = rows if rows is not None else live_instances(run)
    launched = [i for i in live if i.provider_instance_id]
    out = Termination()
    if launched:
        times, actives = _request_times(ctx, launched)
        with ctx.write() as (session, _fresh):  # fenced: a worker that lost the run asks nothing
            for row in session.scalars(select(Instance).where(Instance.id.in_([r.id for r in launched]))):
                row.terminate_requested_at = times[row.id]
                if row.active_at is None and row.id in actives:
                    row.active_at = actives[row.id]
        if ctx.provider.keeps_machines:
            _stop_processes(ctx, launched)
        ids = [str(i.provider_instance_id) for i in launched]
        try:
            ctx.provider.terminate(ids)
            out.requested = {i.id for i in launched}
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


def _request_times(ctx: RunContext, rows: list[Instance]) -> tuple[dict[int, datetime], dict[int, datetime]]:
    """For each row: when this terminate request is asked for, as the end of its billing (see
    terminate_instances), and, for rows never seen active, when they turned active if they did.
    Asks the provider only about rows asked for before or never seen active."""
    states: dict[int, InstanceStatus | None] = {}  # None: the provider could not say
    actives: dict[int, datetime] = {}
    for row in rows:
        if row.terminate_requested_at is None and row.active_at is not None:
            continue  # a first request for a node we know: nothing to ask
        if row.terminate_requested_at is not None and row.status == InstanceStatus.terminating.value:
            states[row.id] = InstanceStatus.terminating  # we saw the provider take the request
            continue
        asked = utcnow()
        try:
            inst = ctx.provider.get(str(row.provider_instance_id))
            state = states[row.id] = InstanceStatus.terminated if inst is None else inst.status
        except ProvisionError:
            states[row.id] = None
            continue  # unknown: billed to the later end; its activation is asked about next time
        if row.active_at is None:
            lower = row.booting_seen_at or row.launched_at
            if state in (InstanceStatus.active, InstanceStatus.unhealthy):
                actives[row.id] = active_since(lower, asked, watched=False)
            elif state != InstanceStatus.booting and row.terminate_requested_at is not None:
                # gone or going after an earlier request: it may have turned active before that
                # request was taken, so its bill may have started at its last sighting booting
                actives[row.id] = aware(lower)
    now = utcnow()  # just before the request (the caller's one fenced write between)
    times: dict[int, datetime] = {}
    for row in rows:
        earlier, seen = row.terminate_requested_at, states.get(row.id)
        taken_before = earlier is not None and seen is not None and seen not in _RUNNING
        times[row.id] = aware(earlier) if taken_before and earlier is not None else now
    return times, actives


def book_terminations(session: Session, run: Run, term: Termination) -> None:
    """Mark instances whose terminate request was taken `terminating`, confirmed ones terminated,
    and book each one's cost once (orchestrator.costs.instance_cost: the same rule as the live
    estimate)."""
    now = utcnow()
    touched = term.requested | term.confirmed
    rows = session.scalars(select(Instance).where(Instance.run_id == run.id, Instance.terminated_at.is_(None))).all()
    booked = set(
        session.scalars(select(CostEntry.instance_id).where(CostEntry.run_id == run.id, CostEntry.kind == "instance"))
    )
    for row in rows:
        if row.id not in touched:
            continue
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


def mark_for_termination(_session: Session, run: Run, rows: list[Instance]) -> None:
    """Decide, in the caller's transaction, that `rows` are to be terminated (a lost node, the
    workers after training): they stop being the run's usable nodes at once, in the same write
    as the state change that decided it, and the next step terminates them (finish_terminations),
    whoever holds the run by then. So no takeover in between can mistake a node terminated on
    purpose for a lost one."""
    now = utcnow()
    ids = {r.id for r in rows}
    for row in run.instances:
        if row.id in ids and row.terminate_requested_at is None and row.terminated_at is None:
            row.terminate_requested_at = now


def release_workers(run: Run) -> Record:
    """Terminate every node but node 0 (after training only node 0 has work left, and an idle
    node still bills): the mark, for the caller's status transaction (mark_for_termination)."""
    workers = [row for row in usable_instances(run) if row.rank > 0]
    return lambda session, fresh: mark_for_termination(session, fresh, workers)


def finish_terminations(ctx: RunContext, run: Run) -> None:
    """Carry out the terminations decided but not yet taken by the provider: rows marked
    (mark_for_termination) and rows whose request failed or whose worker died before it. One
    look at the rows when there are none; a provider error is left for the next pass."""
    pending = [
        row
        for row in live_instances(run)
        if row.terminate_requested_at is not None and row.status != InstanceStatus.terminating.value
    ]
    if not pending:
        return
    term = terminate_instances(ctx, run, pending)
    with ctx.write() as (session, fresh):
        book_terminations(session, fresh, term)
    if term.error:
        log.warning(
            "run %s: terminating %s failed, retrying: %s", run.id, ", ".join(r.name for r in pending), term.error
        )


def cleanup(ctx: RunContext, run: Run) -> str | None:
    """For an ended run: terminate what is left (but what cleanup.py gave up: the orphan sweep's
    now). None once nothing is left running, else why not yet (the provider's error, or what it
    has not confirmed gone). Never raises a provider error."""
    run = adopt_unrecorded(ctx, run)  # every pass: an instance named for the run, recorded or not, ends
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
