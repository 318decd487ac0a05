"""Cost arithmetic: what an instance and a run have cost so far, in US cents.

One rule, for the live estimate and the booked cost alike (`instance_cost`): Lambda's, which the
simulator's ledger keeps too (the tests compare the two to the cent). The price and the billing
increment are frozen on the instance row at launch; every started increment is billed in full;
billing runs from when the instance turned active until the provider took the terminate request.
Lambda's API shows no timestamps, so both ends are our view of those moments: `active_at` is
`active_since`'s (the middle between one watcher's last read showing it booting and its first
showing it active; when nobody watched in between, the last sighting booting, never below the
bill), and `terminate_requested_at` is taken just before the first terminate request that the
provider took (controller/lifecycle.py keeps it over a later repeat). Confirmation comes later (an instance is `terminating` for a while) and
does not count. An instance found gone without a request of ours (preempted) is billed until we
saw it gone (`terminated_at`), the conservative bound; one still running, until now.

A run's cost = its recorded cost entries (billed instances, judge tokens, storage) + the live cost
of each instance that has no "instance" cost entry yet (still running, or terminated but not yet
booked). Counting "not yet booked" rather than "not yet terminated" means the number never dips
in the window between termination and the controller writing the entry, and since both use
`instance_cost`, the number does not move when the entry is written either.

Pure functions over rows; the two query helpers read only indexed columns (never metric points),
so they stay cheap on every `GET /runs/{id}`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import ScalarSelect, bindparam, func, select
from sqlalchemy.orm import Session

from orchestrator.db.models import CostEntry, Instance, Run, aware
from provision.lambda_cloud import billing


class Billable(Protocol):
    """What `instance_cost` reads: an Instance row, or a plain row of the same columns."""

    active_at: datetime | None
    terminate_requested_at: datetime | None
    terminated_at: datetime | None
    price_cents_per_hour: int
    billing_minute_s: float


@dataclass(frozen=True)
class InstanceCost:
    minutes: int  # billed increments (minutes, unless the simulator compresses them)
    cents: float


def instance_cost(instance: Billable, now: datetime) -> InstanceCost:
    """What the instance has cost up to `now` (see the module doc for where billing ends)."""
    return _billed(instance, instance.terminate_requested_at or instance.terminated_at or now)


def instance_cost_at(instance: Billable, t: datetime) -> InstanceCost:
    """What the instance had cost at the moment `t`: `instance_cost`'s rule with billing cut at
    `t` (nothing before it turned active; every increment started by `t` in full). For the
    dashboard's cost axis and timeline: the cost of a run at a metric point or a state change."""
    end = instance.terminate_requested_at or instance.terminated_at
    return _billed(instance, t if end is None else min(aware(end), aware(t)))


def _billed(instance: Billable, end: datetime) -> InstanceCost:
    """The one cost formula: the increments started between turning active and `end`."""
    if instance.active_at is None:
        return InstanceCost(0, 0.0)
    up_s = (aware(end) - aware(instance.active_at)).total_seconds()
    minutes = billing.billed_minutes(up_s, minute_s=instance.billing_minute_s)
    return InstanceCost(minutes, minutes * instance.price_cents_per_hour / 60.0)


def active_since(booting_seen: datetime | None, seen_active: datetime, *, watched: bool) -> datetime:
    """When an instance seen booting at `booting_seen` and active at `seen_active` turned active,
    for billing (`instance_cost`), which starts then.

    The provider does not say when (Lambda's API has no timestamps), only that it happened
    between the two reads. When they are one watcher's consecutive polls (`watched`), their
    middle is the estimate, off by at most half a poll interval. When nobody watched in between
    (the worker died or was paused, or the run ended before the activation was recorded), the
    interval can be long and its middle minutes late, which would bill less than the provider
    does: the earliest possible moment, `booting_seen`, is booked instead, never below the bill.
    With no sighting at all, `seen_active` is all there is.
    """
    if booting_seen is None:
        return seen_active
    if watched:
        return aware(booting_seen) + (seen_active - aware(booting_seen)) / 2
    return aware(booting_seen)


_entries_t, _instances_t, _runs_t = CostEntry.__table__, Instance.__table__, Run.__table__

# Built once, with bound parameters: these run on every `GET /runs/{id}`, and building a statement
# costs SQLAlchemy more than executing it. Core, not ORM: plain rows are all that is needed.
_BOOKED_SUMS = (
    select(_entries_t.c.run_id, func.sum(_entries_t.c.cents))
    .where(_entries_t.c.run_id.in_(bindparam("run_ids", expanding=True)))
    .group_by(_entries_t.c.run_id)
)
# An instance is "unbooked" while it has no "instance" cost entry: its cost is still live.
_NOT_BOOKED = (
    ~select(_entries_t.c.id)
    .where(
        _entries_t.c.run_id == _instances_t.c.run_id,
        _entries_t.c.instance_id == _instances_t.c.id,
        _entries_t.c.kind == "instance",
    )
    .exists()
)

_UNBOOKED_INSTANCES = select(
    _instances_t.c.run_id,
    _instances_t.c.active_at,
    _instances_t.c.terminate_requested_at,
    _instances_t.c.terminated_at,
    _instances_t.c.price_cents_per_hour,
    _instances_t.c.billing_minute_s,
).where(_instances_t.c.run_id.in_(bindparam("run_ids", expanding=True)), _NOT_BOOKED)


def unbooked_instances_of_run() -> ScalarSelect:
    """A column expression: how many of `runs.id`'s instances have live cost, so a reader of one
    run asks for live cost only when there is some (a finished run needs no second round trip)."""
    return (
        select(func.count(_instances_t.c.id))
        .where(_instances_t.c.run_id == _runs_t.c.id, _NOT_BOOKED)
        .scalar_subquery()
    )


def booked_cents_of_run() -> ScalarSelect:
    """A column expression: the sum of the cost entries of `runs.id`, to select with a run's row
    (one round trip fewer than asking for it separately)."""
    return (
        select(func.coalesce(func.sum(_entries_t.c.cents), 0.0))
        .where(_entries_t.c.run_id == _runs_t.c.id)
        .scalar_subquery()
    )


def live_instances_cents(session: Session, run_ids: list[str], now: datetime) -> dict[str, float]:
    """The live cost of each run's instances that have no "instance" cost entry yet."""
    totals = dict.fromkeys(run_ids, 0.0)
    for inst in session.connection().execute(_UNBOOKED_INSTANCES, {"run_ids": run_ids}):
        totals[inst.run_id] += instance_cost(inst, now).cents
    return totals


def runs_cost_cents(session: Session, run_ids: Iterable[str], now: datetime) -> dict[str, float]:
    """Cost so far of several runs at once: two indexed queries whatever the number of runs."""
    ids = list(dict.fromkeys(run_ids))
    if not ids:
        return {}
    totals = live_instances_cents(session, ids, now)
    for run_id, cents in session.connection().execute(_BOOKED_SUMS, {"run_ids": ids}):
        totals[run_id] += float(cents or 0.0)
    return totals


def run_cost_cents(session: Session, run_id: str, now: datetime) -> float:
    """Cost so far of one run: booked entries + live cost of instances not booked yet."""
    return runs_cost_cents(session, [run_id], now)[run_id]
