"""Reading runs for the API: rows -> public schemas, with progress, ETA and cost.

Progress comes straight from the Run's columns (the controller keeps them current), so reading a
run costs a primary-key lookup plus small indexed lookups for cost and, while instances bill, their
US$/h (the projected cost: orchestrator.projection), never a metrics scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TypeAlias

from sqlalchemy import ColumnElement, Float, Row, bindparam, case, cast, func, literal, null, or_, select
from sqlalchemy.orm import Session

from orchestrator import runs
from orchestrator.api import schemas
from orchestrator.costs import booked_cents_of_run, live_instances_cents, runs_cost_cents, unbooked_instances_of_run
from orchestrator.db.models import LogChunk, MetricPoint, Run, RunEvent, RunStatus, aware, utcnow
from orchestrator.errors import NotFoundError
from orchestrator.projection import Rates, live_rates, projected_cents, run_eta
from orchestrator.spec import RunSpec

_ACTIVE = {RunStatus.training.value, RunStatus.recovering.value, RunStatus.bootstrapping.value}

# Reading a run is the hottest path of the service. Its statement is built once (building one
# costs SQLAlchemy more than running it) and returns plain rows of only the columns a response
# shows: ORM objects, with identity map and change tracking, would cost more than the query.
_runs = Run.__table__
_PUBLIC_COLUMNS = tuple(
    _runs.c[name]
    for name in (
        "id",
        "name",
        "status",
        "provider",
        "status_reason",
        "cancel_requested",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "target_tokens",
        "tokens_done",
        "step",
        "train_loss",
        "val_loss",
        "tokens_per_s",
        "test_loss",
        "world_size",
        "recoveries",
        "spec",
        "stop_requested_at",
        "stop_reason",
        "submitted_by",
    )
)
_GET_RUN = select(
    *_PUBLIC_COLUMNS,
    booked_cents_of_run().label("booked_cents"),
    unbooked_instances_of_run().label("unbooked_instances"),
).where(_runs.c.id == bindparam("run_id"))


#: a Run, or a row of its public columns (what `_GET_RUN` and `list_runs` read)
RunOrRow: TypeAlias = "Run | Row"


def progress_of(run: RunOrRow) -> schemas.RunProgress:
    done, target, tps = run.tokens_done or 0, run.target_tokens, run.tokens_per_s
    # A succeeded run is done whatever its counter says: the trainer stops at the last whole step
    # before its token target, a little short of it. `_PROGRESS` sorts by the same rule.
    if run.status == RunStatus.succeeded.value:
        fraction: float | None = 1.0
    else:
        fraction = min(1.0, done / target) if target else None
    eta = None
    if run.status in _ACTIVE and target and tps and tps > 0:
        eta = max(0.0, (target - done) / tps)
    return schemas.RunProgress(
        tokens_done=done,
        target_tokens=target,
        fraction=fraction,
        step=run.step or 0,
        train_loss=run.train_loss,
        val_loss=run.val_loss,
        test_loss=run.test_loss,
        tokens_per_s=tps,
        eta_s=eta,
        world_size=run.world_size,
        recoveries=run.recoveries or 0,
    )


def budget_of(run: RunOrRow, cost_cents: float, rates: Rates, now: datetime) -> schemas.RunBudget:
    spec = run.spec or {}
    caps = spec.get("budget") or {}
    started, ended = aware(run.started_at), RunStatus(run.status).is_terminal
    left = run_eta(run)
    projected = cost_cents if ended else projected_cents(cost_cents, rates, left)
    return schemas.RunBudget(
        max_usd=caps.get("max_usd"),
        max_hours=caps.get("max_hours"),
        usd_per_hour=round(rates.all_cents_per_s * 36.0, 6),  # cents/s -> US$/h
        eta_s=None if ended or left is None else left.total_s,
        projected_usd=None if projected is None else round(projected / 100.0, 6),
        hours=max(0.0, ((aware(run.finished_at) or now) - started).total_seconds() / 3600) if started else 0.0,
        stop_requested_at=run.stop_requested_at,
        stop_reason=run.stop_reason,
    )


def _public_fields(run: RunOrRow, cost_cents: float, now: datetime, rates: Rates) -> dict:
    created = aware(run.created_at)
    end = aware(run.finished_at) or now
    compute = (run.spec or {}).get("compute") or {}
    return dict(
        id=run.id,
        name=run.name,
        status=run.status,
        provider=run.provider,
        instance_type=compute.get("instance_type"),
        status_reason=run.status_reason,
        cancel_requested=bool(run.cancel_requested),
        created_at=run.created_at,
        updated_at=run.updated_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        wall_s=max(0.0, (end - created).total_seconds()),
        progress=progress_of(run),
        cost=schemas.RunCost(cents=round(cost_cents, 4), usd=round(cost_cents / 100.0, 6)),
        budget=budget_of(run, cost_cents, rates, now),
        submitted_by=run.submitted_by,
    )


def run_detail(session: Session, run: Run, now: datetime | None = None) -> schemas.RunDetail:
    now = now or utcnow()
    cost = runs_cost_cents(session, [run.id], now)[run.id]
    rates = live_rates(session, [run.id])[run.id]
    return schemas.RunDetail(spec=run.spec, **_public_fields(run, cost, now, rates))


def submit_run(session: Session, spec: RunSpec, submitted_by: str) -> schemas.RunDetail:
    return run_detail(session, runs.create_run(session, spec, submitted_by))


def cancel_run(session: Session, run_id: str) -> schemas.RunDetail:
    return run_detail(session, runs.request_cancel(session, run_id))


def get_run_detail(session: Session, run_id: str) -> schemas.RunDetail:
    run = session.connection().execute(_GET_RUN, {"run_id": run_id}).one_or_none()
    if run is None:
        raise NotFoundError(f"no run with id {run_id!r}")
    now = utcnow()
    cost, rates = float(run.booked_cents), Rates()
    if run.unbooked_instances:  # only then can an instance still bill
        cost += live_instances_cents(session, [run_id], now)[run_id]
        rates = live_rates(session, [run_id])[run_id]
    return schemas.RunDetail(spec=run.spec, **_public_fields(run, cost, now, rates))


# progress_of's fraction in SQL: 1 for a succeeded run, else tokens done over the target, capped
_PROGRESS = case(
    (_runs.c.status == RunStatus.succeeded.value, literal(1.0)),
    (or_(_runs.c.target_tokens.is_(None), _runs.c.target_tokens <= 0), null()),
    (_runs.c.tokens_done >= _runs.c.target_tokens, literal(1.0)),
    else_=cast(_runs.c.tokens_done, Float) / _runs.c.target_tokens,
)
#: `GET /runs?sort=`: what each key orders by (nulls last whatever the order)
_SORT_COLUMNS: dict[str, ColumnElement] = {
    "created_at": _runs.c.created_at,
    "name": func.lower(_runs.c.name),
    "status": _runs.c.status,
    "progress": _PROGRESS,
    "train_loss": _runs.c.train_loss,
    "val_loss": _runs.c.val_loss,
    "test_loss": _runs.c.test_loss,
    "tokens_per_s": _runs.c.tokens_per_s,
}
#: the keys `GET /runs` sorts by (routes/runs.py spells them out for the OpenAPI schema); `cost`
#: is ordered in Python (`_page_by_cost`): a running run's cost is the one cost rule's arithmetic
#: (orchestrator.costs.instance_cost), which SQL cannot order by without a second formula
SORT_KEYS = (*_SORT_COLUMNS, "cost")


def list_runs(
    session: Session,
    statuses: Sequence[str],
    limit: int,
    offset: int,
    providers: Sequence[str] = (),
    q: str | None = None,
    sort: str = "created_at",
    order: str = "desc",
) -> schemas.RunList:
    """A page of runs, filtered and sorted (`SORT_KEYS`; nulls last in either order, then newest
    first): one query for the page (only the shown columns) and one count with the same filters."""
    filters: list[ColumnElement[bool]] = []
    if statuses:
        filters.append(_runs.c.status.in_(statuses))
    if providers:
        filters.append(_runs.c.provider.in_(providers))
    if q and q.strip():
        needle = q.strip()
        filters.append(
            or_(
                _runs.c.name.icontains(needle, autoescape=True),
                _runs.c.id.startswith(needle.lower(), autoescape=True),
            )
        )
    now = utcnow()
    if sort == "cost":
        rows = _page_by_cost(session, filters, order, limit, offset, now)
    else:
        key = _SORT_COLUMNS[sort]
        ordered = (key.asc() if order == "asc" else key.desc()).nulls_last()
        tiebreak = () if sort == "created_at" else (_runs.c.created_at.desc(),)
        query = select(*_PUBLIC_COLUMNS).where(*filters).order_by(ordered, *tiebreak, _runs.c.id.desc())
        rows = list(session.execute(query.limit(limit).offset(offset)).all())
    costs = runs_cost_cents(session, [r.id for r in rows], now)
    rates = live_rates(session, [r.id for r in rows if not RunStatus(r.status).is_terminal])
    return schemas.RunList(
        runs=[schemas.RunPublic(**_public_fields(r, costs[r.id], now, rates.get(r.id, Rates()))) for r in rows],
        total=session.scalar(select(func.count()).select_from(_runs).where(*filters)) or 0,
        limit=limit,
        offset=offset,
    )


def _page_by_cost(
    session: Session, filters: list[ColumnElement[bool]], order: str, limit: int, offset: int, now: datetime
) -> list[Row]:
    """A page of runs ordered by the cost the table shows (booked + live), newest first among
    equals. Every matching run's cost is computed (runs_cost_cents: two indexed queries whatever
    their number, live arithmetic only for runs with instances still billing), then the page's
    rows are read by id: the cost of thousands of runs is milliseconds, and no second cost rule."""
    keys = session.execute(
        select(_runs.c.id, _runs.c.created_at).where(*filters).order_by(_runs.c.created_at.desc(), _runs.c.id.desc())
    ).all()
    costs = runs_cost_cents(session, [k.id for k in keys], now)
    # sorted() is stable (with reverse too): runs of equal cost keep the newest-first order of `keys`
    ranked = sorted(keys, key=lambda k: costs[k.id], reverse=order == "desc")
    page_ids = [k.id for k in ranked[offset : offset + limit]]
    if not page_ids:
        return []
    by_id = {r.id: r for r in session.execute(select(*_PUBLIC_COLUMNS).where(_runs.c.id.in_(page_ids))).all()}
    return [by_id[i] for i in page_ids]


def run_status(session: Session, run_id: str) -> str:
    """The run's status, or NotFoundError; a single-column read for the sub-resources."""
    status = session.scalar(select(Run.status).where(Run.id == run_id))
    if status is None:
        raise NotFoundError(f"no run with id {run_id!r}")
    return status


def metrics_page(session: Session, run_id: str, after_id: int, limit: int, kind: str | None) -> schemas.MetricsPage:
    run_status(session, run_id)
    query = select(MetricPoint).where(MetricPoint.run_id == run_id, MetricPoint.id > after_id)
    if kind:
        query = query.where(MetricPoint.kind == kind)
    # one extra row tells whether another page follows without a count(*)
    rows = session.scalars(query.order_by(MetricPoint.id).limit(limit + 1)).all()
    page = rows[:limit]
    return schemas.MetricsPage(
        points=[schemas.MetricPointPublic.model_validate(p) for p in page],
        next_after_id=page[-1].id if page else after_id,
        has_more=len(rows) > limit,
    )


def events_page(
    session: Session,
    run_id: str,
    after_id: int,
    limit: int,
    order: str = "asc",
    before_id: int | None = None,
) -> schemas.EventsPage:
    """Events with after_id < id (< before_id), oldest first, or newest first with `order=desc`
    (a page of history read backwards: pass `next_before_id` as `before_id` for older ones)."""
    run_status(session, run_id)
    query = select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.id > after_id)
    if before_id is not None:
        query = query.where(RunEvent.id < before_id)
    newest_first = order == "desc"
    query = query.order_by(RunEvent.id.desc() if newest_first else RunEvent.id)
    # one extra row tells whether another page follows without a count(*)
    rows = session.scalars(query.limit(limit + 1)).all()
    page = rows[:limit]
    ids = [e.id for e in page]
    return schemas.EventsPage(
        events=[schemas.EventPublic.model_validate(e) for e in page],
        next_after_id=max(ids, default=after_id),
        next_before_id=min(ids) if ids else before_id,
        has_more=len(rows) > limit,
    )


def logs_page(session: Session, run_id: str, after_id: int, limit: int, tail: int | None) -> schemas.LogsPage:
    status = run_status(session, run_id)
    base = select(LogChunk).where(LogChunk.run_id == run_id, LogChunk.id > after_id)
    if tail:
        # the last `tail` chunks, oldest first; what follows them is read with the cursor
        rows = list(reversed(session.scalars(base.order_by(LogChunk.id.desc()).limit(tail)).all()))
        page, has_more = rows, False
    else:
        rows = list(session.scalars(base.order_by(LogChunk.id).limit(limit + 1)))
        page, has_more = rows[:limit], len(rows) > limit
    return schemas.LogsPage(
        chunks=[schemas.LogChunkPublic.model_validate(c) for c in page],
        next_after_id=page[-1].id if page else after_id,
        has_more=has_more,
        run_status=status,
        run_terminal=RunStatus(status).is_terminal,
    )
