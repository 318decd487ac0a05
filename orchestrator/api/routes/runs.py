from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status

from orchestrator.api import schemas, views
from orchestrator.api.deps import DbDep
from orchestrator.db.models import RunStatus

router = APIRouter(prefix="/runs", tags=["runs"])

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "no run with this id"}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.RunDetail)
async def submit_run(spec: schemas.RunCreate, db: DbDep) -> schemas.RunDetail:
    """Submit a run; it starts `pending` and the controller takes it from there."""
    return await db.write(views.submit_run, spec)


@router.get("", response_model=schemas.RunList)
async def list_runs(
    db: DbDep,
    status_: Annotated[list[RunStatus], Query(alias="status")] = [],  # noqa: B006 - FastAPI copies it
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> schemas.RunList:
    """Newest first; `status` may be given several times."""
    return await db.read(views.list_runs, [s.value for s in status_], limit, offset)


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
    after_id: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    kind: Literal["train", "val"] | None = None,
) -> schemas.MetricsPage:
    """Metric points with id > after_id, oldest first (cursor paging)."""
    return await db.read(views.metrics_page, run_id, after_id, limit, kind)


@router.get("/{run_id}/events", response_model=schemas.EventsPage, responses=_ERRORS)
async def get_events(
    run_id: str,
    db: DbDep,
    after_id: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> schemas.EventsPage:
    return await db.read(views.events_page, run_id, after_id, limit)


@router.get("/{run_id}/logs", response_model=schemas.LogsPage, responses=_ERRORS)
async def get_logs(
    run_id: str,
    db: DbDep,
    after_id: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    tail: Annotated[int | None, Query(ge=1, le=10_000)] = None,
) -> schemas.LogsPage:
    """Log chunks after the cursor; `tail=N` gives only the last N. Follow by polling with
    `after_id=next_after_id` until `run_terminal` and an empty page."""
    return await db.read(views.logs_page, run_id, after_id, limit, tail)
