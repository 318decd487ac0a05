"""The `provisioning` stage: every node rank placed, recorded and active, on any provider.

Per node rank, a task places `ty-<run>-<rank>` (provision.placement: the spec's instance type,
then its fallbacks, in its regions, waiting for capacity up to compute.placement_timeout_s),
records it (price frozen), and waits until the provider shows it active. On the local provider
each of these is a few file operations; on Lambda they take minutes, which is why they run on the
worker's task threads (tasks.py) while the worker keeps renewing its lease and serving cancels.
Each task is idempotent (placement finds an instance by its name before launching), so a task
lost with its worker is started again. No database transaction is open during a provider call.

A task can outlive its worker's hold on the run (the worker paused or blocked past its lease while
the task slept between looks at capacity). So every launch is fenced: immediately before the
request the lease is checked by a write and the name looked up again (`_fence_launch`), and each
poll of a booting instance keeps its sighting on the row by a fenced write: a task whose worker
lost the run stops at its next side effect.

A provider that fails (a 5xx or a timeout, after the client's own retries) is asked again after
settings.placement_poll_s, not every pass, and never past the deadline: placing fails then, naming
the last error. Once an instance exists, its boot is waited for up to settings.node_boot_timeout_s,
provider failures included. A refused API key fails the run at once (policy.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import select, update

from orchestrator.controller.auto_type import auto_instance_types
from orchestrator.controller.context import RunContext, log, usable_instances
from orchestrator.controller.lifecycle import note_launch, record_instance
from orchestrator.controller.outcomes import WAITING, Done, Outcome
from orchestrator.controller.policy import Cancelled, NodeLost, one_line, run_task
from orchestrator.controller.tasks import sleeper
from orchestrator.costs import active_since
from orchestrator.db.models import Instance, Run, aware, utcnow
from orchestrator.runs import add_event, next_instance_name
from orchestrator.spec import AUTO_INSTANCE_TYPE, RunSpec
from provision.base import Instance as ProviderInstance
from provision.base import InstanceStatus
from provision.errors import PlacementFailed, ProvisionError
from provision.placement import place


def placement(ctx: RunContext, run: Run, spec: RunSpec, since: datetime | None = None) -> Outcome:
    """Place every node and wait until all are active. Placement waits for capacity up to
    compute.placement_timeout_s after `since` (default: the run's start; a recovery passes when it
    began). A rank whose node is being terminated (lost) gets a new one."""
    c = spec.compute
    rows = {row.rank: row for row in usable_instances(run)}
    deadline = aware(since or run.started_at or run.created_at) + timedelta(seconds=c.placement_timeout_s)
    waiting = False
    for rank in range(c.nodes):
        row = rows.get(rank)
        if row is not None and row.active_at is not None:
            continue
        name = row.name if row is not None else next_instance_name(run.id, rank, run.instances)
        placed, pending = run_task(
            ctx,
            f"place-{rank}",
            f"placing {name}",
            partial(_place_until_active, ctx, run, spec, rank, name, row, deadline),
            may_launch=True,
        )
        if pending is not None:
            if pending is not WAITING:
                return pending
            waiting = True  # working, or the next pass starts it again
            continue
        _record_active(ctx, run, rank, *placed)
    return WAITING if waiting else Done(f"all {c.nodes} node(s) are active")


def preferred_instance_types(ctx: RunContext, run: Run, spec: RunSpec) -> list[str]:
    """The instance types to try, best first: the spec's type, then its fallbacks; `auto`: the
    plan's choice by compute.objective (auto_type.py, an event says why); a spec naming none (the
    local provider, the ssh provider's hosts) takes any type the provider has."""
    compute = spec.compute
    if compute.instance_type == AUTO_INSTANCE_TYPE:
        return auto_instance_types(ctx, run, spec)
    wanted = ([compute.instance_type] if compute.instance_type else []) + list(compute.fallback_instance_types)
    return wanted or [t.name for t in ctx.provider.instance_types()]


def _place_until_active(
    ctx: RunContext,
    run: Run,
    spec: RunSpec,
    rank: int,
    name: str,
    recorded: Instance | None,
    deadline: datetime,
    cancel: threading.Event,
) -> tuple[ProviderInstance, datetime]:
    """The task: place node `rank` as `name` and record it (unless an instance is `recorded` for
    it already: that one is waited for, never placed again), then wait until it is active."""
    sleep = sleeper(cancel)
    if recorded is not None and recorded.provider_instance_id is not None:
        since = recorded.booting_seen_at or recorded.launched_at
        return _wait_active(ctx, recorded.provider_instance_id, name, sleep, since)
    try:
        inst = place(
            ctx.provider,
            name=name,
            instance_types=preferred_instance_types(ctx, run, spec),
            regions=spec.compute.regions,
            timeout_s=max(0.0, (deadline - utcnow()).total_seconds()),
            poll_s=ctx.settings.placement_poll_s,
            on_event=partial(ctx.event, "placement"),
            sleep=sleep,
            before_launch=partial(_fence_launch, ctx, name, cancel),
        )
    except ProvisionError as exc:
        if exc.retryable:
            _back_off(ctx, spec, name, deadline, exc, sleep)
        raise  # before the deadline, the next pass tries again; anything else: the policy's
    record_instance(ctx, run, rank, inst)
    if cancel.is_set():
        raise Cancelled("the run ended")  # recorded above, so the run's end terminates it
    return _wait_active(ctx, inst.id, name, sleep, utcnow() if inst.status == InstanceStatus.booting else None)


def _fence_launch(
    ctx: RunContext, name: str, cancel: threading.Event, instance_type: str, region: str
) -> ProviderInstance | None:
    """Immediately before a launch request (provision.placement's `before_launch`): stop if the
    run ended or our lease is gone, and take an instance that has the name by now instead.

    A wait for capacity lasts minutes. Meanwhile this worker may have been paused (SIGSTOP, a
    stalled VM) or blocked past its lease, another worker may have taken the run over and placed
    the node itself, and this task may resume not knowing. The lease check is a fenced write (the
    "launch" event, also when the launch was asked for: record_instance's lower bound for an
    instance found running later), taken last, right before the request: a worker that lost the
    lease raises LeaseLostError there and launches nothing. Left open: a pause that falls between
    this write and the request itself (microseconds); the run's end terminates and books every
    instance named for it, recorded or not (lifecycle.adopt_unrecorded)."""
    if cancel.is_set():
        raise Cancelled("the run ended")
    found = ctx.provider.find_by_name(name)
    if found is not None:
        return found
    note_launch(ctx, name, instance_type, region)
    return None


def _back_off(
    ctx: RunContext, spec: RunSpec, name: str, deadline: datetime, error: ProvisionError, sleep: Callable[[float], None]
) -> None:
    """Placing `name` failed in a way that may pass. Past the deadline: raise PlacementFailed,
    naming the last error. Before it: wait settings.placement_poll_s (so a failing provider is
    asked once a poll, not once a pass), after which the task ends and the next pass starts it."""
    left = (deadline - utcnow()).total_seconds()
    if left <= 0:
        raise PlacementFailed(
            f"could not place {name} within compute.placement_timeout_s "
            f"({spec.compute.placement_timeout_s:g} s): provider {ctx.provider.name} kept failing: {one_line(error)}"
        ) from error
    wait = min(ctx.settings.placement_poll_s, left)
    log.warning("run %s: placing %s: %s; trying again in %.1f s", ctx.run_id, name, one_line(error), wait)
    sleep(wait)


def _wait_active(
    ctx: RunContext, instance_id: str, name: str, sleep: Callable[[float], None], booting_seen: datetime | None
) -> tuple[ProviderInstance, datetime]:
    """Poll until the provider shows the instance active. Returns it and when it turned active
    (`active_since`), given `booting_seen`, the last time it was seen booting before this wait
    (by whoever watched it: a worker that took the run over starts from the row's evidence).
    Each read that shows it booting is kept on its row (`booting_seen_at`), so the next watcher
    has it too. A provider failure that may pass is waited out (settings.placement_poll_s
    between tries), up to settings.node_boot_timeout_s.
    """
    give_up = time.monotonic() + ctx.settings.node_boot_timeout_s
    watched = False  # whether `booting_seen` is this wait's own last read
    while True:
        asked = utcnow()
        try:
            now = ctx.provider.get(instance_id)
        except ProvisionError as exc:
            if not exc.retryable:
                raise
            if time.monotonic() > give_up:
                raise NodeLost(
                    f"instance {name}: provider {ctx.provider.name} kept failing while it booted, for "
                    f"{ctx.settings.node_boot_timeout_s:g} s: {one_line(exc)}"
                ) from exc
            log.warning("run %s: asking about %s: %s; asking again", ctx.run_id, name, one_line(exc))
            sleep(max(ctx.settings.node_active_poll_s, ctx.settings.placement_poll_s))
            continue
        if now is not None and now.status == InstanceStatus.active:
            return now, active_since(booting_seen, asked, watched=watched)
        if now is None or now.status.is_gone or now.status == InstanceStatus.unhealthy:
            state = now.status.value if now is not None else "gone"
            raise NodeLost(f"instance {name} became {state} while booting")
        booting_seen, watched = asked, True
        _note_booting(ctx, instance_id, asked)  # fenced: a task whose worker lost the run stops here
        if time.monotonic() > give_up:
            raise NodeLost(
                f"instance {name} did not become active within "
                f"{ctx.settings.node_boot_timeout_s:g} s (still {now.status.value})"
            )
        sleep(ctx.settings.node_active_poll_s)


def _note_booting(ctx: RunContext, instance_id: str, seen: datetime) -> None:
    with ctx.write() as (session, _fresh):
        session.execute(
            update(Instance)
            .where(Instance.run_id == ctx.run_id, Instance.provider_instance_id == instance_id)
            .values(booting_seen_at=seen)
            .execution_options(synchronize_session=False)
        )


def _record_active(ctx: RunContext, run: Run, rank: int, inst: ProviderInstance, seen: datetime) -> None:
    with ctx.write() as (session, _fresh):
        row = session.scalars(
            select(Instance).where(
                Instance.run_id == run.id,
                Instance.rank == rank,
                Instance.terminated_at.is_(None),
                Instance.terminate_requested_at.is_(None),
            )
        ).first()
        if row is None or row.active_at is not None:
            return
        row.status, row.active_at = inst.status.value, seen
        row.public_ip, row.private_ip = inst.public_ip, inst.private_ip
        add_event(
            session,
            run.id,
            "placement",
            f"instance {row.name} is active at {inst.public_ip} (private {inst.private_ip})",
        )
