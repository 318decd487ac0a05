"""Cost arithmetic: what an instance and a run have cost so far, in US cents.

Billing follows Lambda's rule: an instance is billed in one-minute increments, rounded up, from
when it became active until its termination was confirmed; the price is the one frozen at launch.

A run's cost = its recorded cost entries (billed instances, judge tokens, storage) + the live cost
of each instance that has no "instance" cost entry yet (still running, or terminated but not yet
booked). Counting "not yet booked" rather than "not yet terminated" means the number never dips
in the window between termination and the controller writing the entry.

Pure functions over rows; the two query helpers read only indexed columns (never metric points),
so they stay cheap on every `GET /runs/{id}`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from sqlalchemy import ScalarSelect, bindparam, func, select
from sqlalchemy.orm import Session

from orchestrator.db.models import CostEntry, Instance, Run
from provision.lambda_cloud import billing


def _aware(t: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; they were stored as UTC.
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def billed_minutes(active_at: datetime | None, end: datetime, minute_s: float = billing.MINUTE_S) -> int:
    """Whole minutes billed from `active_at` to `end`, any started minute counting in full.
    The rule lives in provision.lambda_cloud.billing; this only turns two times into seconds.
    `minute_s` is 60 except under a simulator whose clock is compressed."""
    if active_at is None:
        return 0
    return billing.billed_minutes((_aware(end) - _aware(active_at)).total_seconds(), minute_s=minute_s)


def instance_cost_cents(instance: Instance, now: datetime) -> float:
    """What the instance has cost up to `now` (or up to its confirmed termination).
    Takes an Instance or any row with active_at, terminated_at and price_cents_per_hour."""
    end = instance.terminated_at or now
    return billed_minutes(instance.active_at, end) * instance.price_cents_per_hour / 60.0


_entries_t, _instances_t, _runs_t = CostEntry.__table__, Instance.__table__, Run.__table__

# Built once, with bound parameters: these run on every `GET /runs/{id}`, and building a statement
# costs SQLAlchemy more than executing it. Core, not ORM: plain rows are all that is needed.
_BOOKED_SUMS = (
    select(_entries_t.c.run_id, func.sum(_entries_t.c.cents))
    .where(_entries_t.c.run_id.in_(bindparam("run_ids", expanding=True)))
    .group_by(_entries_t.c.run_id)
)
# An instance is "unbooked" while it has no "instance" cost entry: its cost is still live.
_NOT_BOOKED = ~select(_entries_t.c.id).where(
    _entries_t.c.run_id == _instances_t.c.run_id,
    _entries_t.c.instance_id == _instances_t.c.id,
    _entries_t.c.kind == "instance",
).exists()

_UNBOOKED_INSTANCES = select(
    _instances_t.c.run_id, _instances_t.c.active_at, _instances_t.c.terminated_at,
    _instances_t.c.price_cents_per_hour,
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
        totals[inst.run_id] += instance_cost_cents(inst, now)
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
