from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, status

from orchestrator import runs as run_ops
from orchestrator.api import schemas, views
from orchestrator.api.deps import SessionDep
from orchestrator.db.models import RunStatus

router = APIRouter(prefix="/runs", tags=["runs"])

_ERRORS = {404: {"description": "no run with this id"}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.RunDetail)
def submit_run(spec: schemas.RunCreate, session: SessionDep) -> schemas.RunDetail:
    """Submit a run; it starts `pending` and the controller takes it from there."""
    with session.begin():
        run = run_ops.create_run(session, spec)
    return views.run_detail(session, run)


@router.get("", response_model=schemas.RunList)
def list_runs(
    session: SessionDep,
    status_: Annotated[list[RunStatus], Query(alias="status")] = [],  # noqa: B006 - FastAPI copies it
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> schemas.RunList:
    """Newest first; `status` may be given several times."""
    return views.list_runs(session, [s.value for s in status_], limit, offset)


@router.get("/{run_id}", response_model=schemas.RunDetail, responses=_ERRORS)
def get_run(run_id: str, session: SessionDep) -> schemas.RunDetail:
    return views.get_run_detail(session, run_id)


@router.post(
    "/{run_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.RunDetail,
    responses={**_ERRORS, 409: {"description": "the run already ended"}},
)
def cancel_run(run_id: str, session: SessionDep) -> schemas.RunDetail:
    """Ask for the run to be cancelled; the controller stops it and terminates its nodes."""
    with session.begin():
        run = run_ops.request_cancel(session, run_id)
    return views.run_detail(session, run)


@router.get("/{run_id}/metrics", response_model=schemas.MetricsPage, responses=_ERRORS)
def get_metrics(
    run_id: str,
    session: SessionDep,
    after_id: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    kind: Literal["train", "val"] | None = None,
) -> schemas.MetricsPage:
    """Metric points with id > after_id, oldest first (cursor paging)."""
    return views.metrics_page(session, run_id, after_id, limit, kind)


@router.get("/{run_id}/events", response_model=schemas.EventsPage, responses=_ERRORS)
def get_events(
    run_id: str,
    session: SessionDep,
    after_id: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> schemas.EventsPage:
    return views.events_page(session, run_id, after_id, limit)


@router.get("/{run_id}/logs", response_model=schemas.LogsPage, responses=_ERRORS)
def get_logs(
    run_id: str,
    session: SessionDep,
    after_id: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    tail: Annotated[int | None, Query(ge=1, le=10_000)] = None,
) -> schemas.LogsPage:
    """Log chunks after the cursor; `tail=N` gives only the last N. Follow by polling with
    `after_id=next_after_id` until `run_terminal` and an empty page."""
    return views.logs_page(session, run_id, after_id, limit, tail)
