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

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.db.models import CostEntry, Instance
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
    """What the instance has cost up to `now` (or up to its confirmed termination)."""
    end = instance.terminated_at or now
    return billed_minutes(instance.active_at, end) * instance.price_cents_per_hour / 60.0


def _booked_instance_ids(session: Session, run_ids: Iterable[str]) -> set[int]:
    rows = session.execute(
        select(CostEntry.instance_id).where(
            CostEntry.run_id.in_(list(run_ids)),
            CostEntry.kind == "instance",
            CostEntry.instance_id.is_not(None),
        )
    )
    return {r[0] for r in rows}


def runs_cost_cents(session: Session, run_ids: Iterable[str], now: datetime) -> dict[str, float]:
    """Cost so far of several runs at once (one query per table, for listing pages)."""
    ids = list(dict.fromkeys(run_ids))
    totals = {rid: 0.0 for rid in ids}
    if not ids:
        return totals
    entries = session.execute(
        select(CostEntry.run_id, func.sum(CostEntry.cents))
        .where(CostEntry.run_id.in_(ids))
        .group_by(CostEntry.run_id)
    )
    for run_id, cents in entries:
        totals[run_id] += float(cents or 0.0)
    booked = _booked_instance_ids(session, ids)
    instances = session.scalars(select(Instance).where(Instance.run_id.in_(ids)))
    for inst in instances:
        if inst.id not in booked:
            totals[inst.run_id] += instance_cost_cents(inst, now)
    return totals


def run_cost_cents(session: Session, run_id: str, now: datetime) -> float:
    """Cost so far of one run: booked entries + live cost of instances not booked yet."""
    return runs_cost_cents(session, [run_id], now)[run_id]
