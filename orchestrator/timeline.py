"""A run's timeline for the dashboard (`GET /runs/{id}/timeline`): its state spans, its instances,
what each cost and when, against its budget.

Every amount comes from orchestrator.costs: `instance_cost` for an instance's cost now (what its
booked cost entry holds once booked), `instance_cost_at` for what it had cost at a moment. So:

- a state span's US$ is what the run's instances accrued during it (their cost at its end less
  their cost at its start), and the spans add up to the instances' cost: the first span begins
  at submission, before any instance bills, and a run ends only after its instances were
  terminated (controller/steps.py `end_run`);
- `total_usd` is the run's cost as `GET /runs/{id}` shows it (orchestrator.costs.run_cost_cents):
  the instances' cost + `other_usd` (cost entries of other kinds: judge tokens, storage, an
  orphan's time).

States come from the run's "status" events (`to_status` at `time`); a span ends where the next
begins, the current one has no end, and a terminal state's span is its moment. The cost series
sample each instance's cumulative cost at most `SAMPLES` + 1 times between when it turned active
and when its billing ended (or now), plus its launch; "total" sums them on a grid of its own plus
every instance's ends. A few small indexed queries; no metric points are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.costs import instance_cost, instance_cost_at, run_cost_cents
from orchestrator.db.models import TERMINAL_VALUES, CostEntry, Instance, Run, RunEvent, aware
from orchestrator.errors import NotFoundError

#: samples of a cost series between its ends (the chart is a line: more would add no detail)
SAMPLES = 200
#: the name of the series that sums every instance's
TOTAL = "total"


@dataclass
class StateSpan:
    status: str
    start: datetime
    end: datetime | None
    usd: float


@dataclass
class TimelineInstance:
    id: int
    name: str
    rank: int
    provider: str
    instance_type: str
    usd_per_hour: float
    launched_at: datetime
    active_at: datetime | None
    ended_at: datetime | None
    status: str
    usd: float


@dataclass
class CostSeries:
    name: str
    time: list[datetime]
    usd: list[float]


@dataclass
class Timeline:
    now: datetime
    budget_usd: float | None
    total_usd: float
    states: list[StateSpan]
    instances: list[TimelineInstance]
    cost_series: list[CostSeries]
    other_usd: float


def _usd(cents: float) -> float:
    return round(cents / 100.0, 6)


def _cents_at(instances: Sequence[Instance], t: datetime) -> float:
    return sum(instance_cost_at(i, t).cents for i in instances)


def _billing_end(inst: Instance) -> datetime | None:
    return aware(inst.terminate_requested_at or inst.terminated_at)


def _grid(start: datetime, end: datetime, steps: int) -> list[datetime]:
    """`steps` + 1 moments from `start` to `end`, both included (one when they are equal)."""
    if end <= start:
        return [start]
    step = (end - start) / steps
    return [start + step * k for k in range(steps)] + [end]


def _instance_series(inst: Instance, now: datetime) -> CostSeries:
    launched, active = aware(inst.launched_at), aware(inst.active_at)
    end = _billing_end(inst) or now
    if active is None:
        times = [launched, max(launched, end)]
    else:
        times = ([launched] if launched < active else []) + _grid(active, max(active, end), SAMPLES)
    return CostSeries(inst.name, times, [_usd(instance_cost_at(inst, t).cents) for t in times])


def _total_series(instances: Sequence[Instance], now: datetime) -> CostSeries:
    if not instances:
        return CostSeries(TOTAL, [], [])
    start = min(aware(i.launched_at) for i in instances)
    end = max((_billing_end(i) or now for i in instances), default=now)
    ends = {t for i in instances for t in (aware(i.active_at), _billing_end(i)) if t is not None}
    times = sorted(set(_grid(start, max(start, end), SAMPLES)) | ends)
    return CostSeries(TOTAL, times, [_usd(_cents_at(instances, t)) for t in times])


def _spans(events: Sequence[Any], instances: Sequence[Instance], now: datetime) -> list[StateSpan]:
    spans = []
    for k, ev in enumerate(events):
        start = aware(ev.time)
        if k + 1 < len(events):
            end: datetime | None = aware(events[k + 1].time)
        elif ev.to_status in TERMINAL_VALUES:
            end = start
        else:
            end = None
        cents = _cents_at(instances, end or now) - _cents_at(instances, start)
        spans.append(StateSpan(ev.to_status, start, end, _usd(cents)))
    return spans


def run_timeline(session: Session, run_id: str, now: datetime) -> Timeline:
    spec = session.scalar(select(Run.spec).where(Run.id == run_id))
    if spec is None:
        raise NotFoundError(f"no run with id {run_id!r}")
    events = session.execute(
        select(RunEvent.time, RunEvent.to_status)
        .where(RunEvent.run_id == run_id, RunEvent.kind == "status", RunEvent.to_status.is_not(None))
        .order_by(RunEvent.id)
    ).all()
    instances = session.scalars(select(Instance).where(Instance.run_id == run_id).order_by(Instance.id)).all()
    other = session.scalar(
        select(func.coalesce(func.sum(CostEntry.cents), 0.0)).where(
            CostEntry.run_id == run_id, CostEntry.kind != "instance"
        )
    )
    lines = [
        TimelineInstance(
            id=i.id,
            name=i.name,
            rank=i.rank,
            provider=i.provider,
            instance_type=i.instance_type,
            usd_per_hour=i.price_cents_per_hour / 100.0,
            launched_at=aware(i.launched_at),
            active_at=aware(i.active_at),
            ended_at=_billing_end(i),
            status=i.status,
            usd=_usd(instance_cost(i, now).cents),
        )
        for i in instances
    ]
    budget = (spec.get("budget") or {}).get("max_usd")
    return Timeline(
        now=now,
        budget_usd=None if budget is None else float(budget),
        total_usd=_usd(run_cost_cents(session, run_id, now)),
        states=_spans(events, instances, now),
        instances=sorted(lines, key=lambda line: (line.rank, line.id)),
        cost_series=[_instance_series(i, now) for i in instances] + [_total_series(instances, now)],
        other_usd=_usd(float(other or 0.0)),
    )
