"""The `provisioning` stage: every node rank placed, recorded and active, on any provider.

Per node rank, a task places `ty-<run>-<rank>` (provision.placement: the spec's instance type,
then its fallbacks, in its regions, waiting for capacity up to compute.placement_timeout_s),
records it (price frozen), and waits until the provider shows it active. On the local provider
each of these is a few file operations; on Lambda they take minutes, which is why they run on the
worker's task threads (tasks.py) while the worker keeps renewing its lease and serving cancels.
Each task is idempotent (placement finds an instance by its name before launching), so a task
lost with its worker is started again. No database transaction is open during a provider call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import select

from orchestrator.controller.context import RunContext, usable_instances
from orchestrator.controller.lifecycle import record_instance
from orchestrator.controller.outcomes import WAITING, Done, Outcome
from orchestrator.controller.policy import Cancelled, NodeLost, run_task
from orchestrator.controller.tasks import sleeper
from orchestrator.db.models import Instance, Run, aware, utcnow
from orchestrator.runs import add_event, next_instance_name
from orchestrator.spec import ComputeSpec, RunSpec
from provision.base import Instance as ProviderInstance
from provision.base import InstanceStatus, Provider
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
        recorded = row.provider_instance_id if row is not None else None
        placed, pending = run_task(
            ctx,
            f"place-{rank}",
            f"placing {name}",
            partial(_place_until_active, ctx, run, spec, rank, name, recorded, deadline),
            may_launch=True,
        )
        if pending is not None:
            if pending is not WAITING:
                return pending
            waiting = True  # working, or the next pass starts it again
            continue
        _record_active(ctx, run, rank, *placed)
    return WAITING if waiting else Done(f"all {c.nodes} node(s) are active")


def preferred_instance_types(compute: ComputeSpec, provider: Provider) -> list[str]:
    """The instance types to try, best first: the spec's type, then its fallbacks; a spec naming
    none (the local provider, the ssh provider's hosts) takes any type the provider has."""
    wanted = ([compute.instance_type] if compute.instance_type else []) + list(compute.fallback_instance_types)
    return wanted or [t.name for t in provider.instance_types()]


def _place_until_active(
    ctx: RunContext,
    run: Run,
    spec: RunSpec,
    rank: int,
    name: str,
    recorded: str | None,
    deadline: datetime,
    cancel: threading.Event,
) -> tuple[ProviderInstance, datetime]:
    """The task: place node `rank` as `name` and record it (unless an instance is `recorded` for
    it already: that one is waited for, never placed again), then wait until it is active."""
    sleep = sleeper(cancel)
    if recorded is not None:
        inst = ctx.provider.get(recorded)
        if inst is None:
            raise NodeLost(f"instance {name} disappeared while booting")
    else:
        inst = place(
            ctx.provider,
            name=name,
            instance_types=preferred_instance_types(spec.compute, ctx.provider),
            regions=spec.compute.regions,
            timeout_s=max(0.0, (deadline - utcnow()).total_seconds()),
            poll_s=ctx.settings.placement_poll_s,
            on_event=partial(ctx.event, "placement"),
            sleep=sleep,
        )
        record_instance(ctx, run, rank, inst)
    if cancel.is_set():
        raise Cancelled("the run ended")  # recorded above, so the run's end terminates it
    return _wait_active(ctx, inst, sleep)


def _wait_active(
    ctx: RunContext, inst: ProviderInstance, sleep: Callable[[float], None]
) -> tuple[ProviderInstance, datetime]:
    """Poll until the provider shows the instance active. Returns it and when it turned active.

    Billing starts when an instance turns active, and the API does not say when that was: only
    that it happened between the last read showing it booting and the first showing it active.
    The middle of the two is the estimate, off by at most half a poll interval
    (settings.node_active_poll_s), which is why this polls on its own thread and not once per
    reconcile pass. An instance already active at the first read gets that read's time.
    """
    give_up = time.monotonic() + ctx.settings.node_boot_timeout_s
    booting_seen: datetime | None = None
    while True:
        asked = utcnow()
        now = ctx.provider.get(inst.id)
        if now is not None and now.status == InstanceStatus.active:
            return now, asked if booting_seen is None else booting_seen + (asked - booting_seen) / 2
        booting_seen = asked
        if now is None or now.status.is_gone or now.status == InstanceStatus.unhealthy:
            state = now.status.value if now is not None else "gone"
            raise NodeLost(f"instance {inst.name} became {state} while booting")
        if time.monotonic() > give_up:
            raise NodeLost(
                f"instance {inst.name} did not become active within "
                f"{ctx.settings.node_boot_timeout_s:g} s (still {now.status.value})"
            )
        sleep(ctx.settings.node_active_poll_s)


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
