"""`/runs`: submit, list, read and cancel runs, and read what they produced (metrics, series,
events, logs, timeline, evaluations)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, status
from fastapi.responses import JSONResponse

from orchestrator import series
from orchestrator.api import dashboard_schemas as ds
from orchestrator.api import dashboard_views, schemas, submits, views
from orchestrator.api.deps import CallerDep, DbDep, SettingsDep
from orchestrator.api.limits import MAX_INT
from orchestrator.db.models import RunStatus

router = APIRouter(prefix="/runs", tags=["runs"])

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "no run with this id"}}

Provider = Literal["local", "lambda", "ssh"]
#: views.SORT_KEYS, spelled out so the OpenAPI schema and a 422 name every allowed value
RunSort = Literal[
    "created_at", "name", "status", "progress", "train_loss", "val_loss", "test_loss", "tokens_per_s", "cost"
]
Order = Literal["desc", "asc"]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.RunDetail,
    responses={409: {"description": "this Idempotency-Key was used for another spec"}},
)
async def submit_run(
    spec: schemas.RunCreate,
    db: DbDep,
    caller: CallerDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
) -> JSONResponse:
    """Submit a run; it starts `pending` and the controller takes it from there. Atomic: 201 with
    the run, or an error and no run. With an `Idempotency-Key` (per submitter, kept 24 h), the
    same key and spec give back the same run (201, `Idempotent-Replayed: true`), and the same
    key with another spec is a 409 (api/submits.py)."""
    return await submits.submit_run(db, spec, caller.name, idempotency_key, settings.idempotency_key_ttl_s)


@router.get("", response_model=schemas.RunList)
async def list_runs(
    db: DbDep,
    status_: Annotated[list[RunStatus], Query(alias="status")] = [],  # noqa: B006 - FastAPI copies it
    provider: Annotated[list[Provider], Query()] = [],  # noqa: B006 - FastAPI copies it
    q: Annotated[str | None, Query(max_length=200)] = None,
    sort: RunSort = "created_at",
    order: Order = "desc",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> schemas.RunList:
    """Newest first by default. `status` and `provider` may be given several times; `q` matches
    the name (case-insensitive substring) or an id prefix; `sort` by any of its values, `order`
    desc or asc, nulls last either way. Sorting by `cost` uses the booked cost entries (a running
    run's live instance minutes are not in it until they are booked)."""
    return await db.read(views.list_runs, [s.value for s in status_], limit, offset, list(provider), q, sort, order)


@router.get("/{run_id}", response_model=schemas.RunDetail, responses=_ERRORS)
async def get_run(run_id: str, db: DbDep) -> schemas.RunDetail:
    return await db.read(views.get_run_detail, run_id)


@router.post(
    "/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.RunDetail,
    responses={**_ERRORS, 409: {"description": "the run already ended"}},
)
async def cancel_run(run_id: str, db: DbDep) -> schemas.RunDetail:
    """Ask for the run to be cancelled; the controller stops it and terminates its nodes."""
    return await db.write(views.cancel_run, run_id)


@router.get("/{run_id}/metrics", response_model=schemas.MetricsPage, responses=_ERRORS)
async def get_metrics(
    run_id: str,
    db: DbDep,
    after_id: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    kind: Literal["train", "val"] | None = None,
) -> schemas.MetricsPage:
    """Metric points with id > after_id, oldest first (cursor paging)."""
    return await db.read(views.metrics_page, run_id, after_id, limit, kind)


@router.get("/{run_id}/events", response_model=schemas.EventsPage, responses=_ERRORS)
async def get_events(
    run_id: str,
    db: DbDep,
    after_id: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    order: Order = "asc",
    before_id: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> schemas.EventsPage:
    """Events after `after_id`, oldest first; `order=desc` gives the newest first, and with
    `before_id=next_before_id` the page before (history read backwards)."""
    return await db.read(views.events_page, run_id, after_id, limit, order, before_id)


@router.get("/{run_id}/logs", response_model=schemas.LogsPage, responses=_ERRORS)
async def get_logs(
    run_id: str,
    db: DbDep,
    after_id: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    tail: Annotated[int | None, Query(ge=1, le=10_000)] = None,
) -> schemas.LogsPage:
    """Log chunks after the cursor; `tail=N` gives only the last N. Follow by polling with
    `after_id=next_after_id` until `run_terminal` and an empty page."""
    return await db.read(views.logs_page, run_id, after_id, limit, tail)


@router.get("/{run_id}/series", response_model=ds.RunSeries, responses=_ERRORS)
async def get_series(
    run_id: str,
    db: DbDep,
    after_id: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    max_points: Annotated[int, Query(ge=series.MIN_POINTS, le=series.MAX_POINTS)] = 2000,
) -> ds.RunSeries:
    """The charts' series (train_loss, val_loss, lr, tokens_per_s), columnar, with the points
    after `after_id`: at most `max_points` per series, grouped into buckets by step (each keeps
    its minimum and maximum) beyond that. Poll with `after_id=next_after_id` for what is new."""
    return await db.read(dashboard_views.series, run_id, after_id, max_points)


@router.get("/{run_id}/timeline", response_model=ds.RunTimeline, responses=_ERRORS)
async def get_timeline(run_id: str, db: DbDep) -> ds.RunTimeline:
    """The run's state spans and instances, each with its cost, the cost accrual per instance
    over time, and the budget."""
    return await db.read(dashboard_views.timeline, run_id)


@router.get("/{run_id}/evaluations", response_model=list[ds.EvaluationPublic], responses=_ERRORS)
async def get_evaluations(run_id: str, db: DbDep) -> list[ds.EvaluationPublic]:
    """Test loss, bits per byte, tokens and the checkpoint's step of each evaluation, oldest
    first (the IFT answers: /runs/{id}/answers)."""
    return await db.read(dashboard_views.evaluations, run_id)
