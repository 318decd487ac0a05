"""Comparisons of runs by the LLM judge, and the IFT answers they judge.

`POST /comparisons` records what is asked and submits (or reuses) the baseline runs; a worker
judges once every run has succeeded. Poll `GET /comparisons/{id}` until it is succeeded or
failed: its rows are the table (model, test loss, score +- CI, cost).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status

from orchestrator.api import comparison_schemas as cs
from orchestrator.api import comparison_views as views
from orchestrator.api.deps import CallerDep, DbDep
from orchestrator.api.limits import MAX_INT
from orchestrator.judge.errors import JudgeNotConfiguredError
from orchestrator.settings import Settings

router = APIRouter(prefix="/comparisons", tags=["comparisons"])
answers_router = APIRouter(prefix="/runs", tags=["runs"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no comparison with this id"}}


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(_settings)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=cs.ComparisonPublic,
    responses={
        404: {"description": "a run does not exist"},
        409: {"description": "a run has not succeeded"},
        422: {"description": "a run has no IFT answers, or the runs answered different items"},
        503: {"description": "the judge is off (no TRAINYARD_OPENAI_API_KEY)"},
    },
)
async def create_comparison(
    body: cs.ComparisonCreate, db: DbDep, settings: SettingsDep, caller: CallerDep
) -> cs.ComparisonPublic:
    """Compare runs' IFT answers (and baselines'), judged by the service; answers at once (pending)."""
    key = settings.openai_api_key
    if key is None or not key.get_secret_value():
        # before any baseline is paid for: without a judge the comparison could never finish
        raise JudgeNotConfiguredError("the judge is off: set TRAINYARD_OPENAI_API_KEY for the service")
    return await db.write(views.create_comparison, body, caller.name)


@router.get("", response_model=cs.ComparisonList)
async def list_comparisons(
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> cs.ComparisonList:
    """Comparisons, newest first, each with its table as GET /comparisons/{id} shows it."""
    return await db.read(views.list_comparisons, limit, offset)


@router.get("/{comparison_id}", response_model=cs.ComparisonPublic, responses=_NOT_FOUND)
async def get_comparison(comparison_id: str, db: DbDep) -> cs.ComparisonPublic:
    return await db.read(views.comparison_detail, comparison_id)


@router.get(
    "/{comparison_id}/report",
    response_model=cs.ComparisonReportPublic,
    responses={**_NOT_FOUND, 409: {"description": "not judged (yet)"}},
)
async def get_comparison_report(comparison_id: str, db: DbDep) -> cs.ComparisonReportPublic:
    """Every judgement with its comments, the differences between models, the consistency report
    (`consistency.position_bias`), and each item's answers and mean score per model
    (`item_answers`, aligned with `items`)."""
    return await db.read(views.comparison_report, comparison_id)


@answers_router.get(
    "/{run_id}/answers",
    response_model=cs.IftAnswers,
    responses={404: {"description": "no such run, or it has no IFT answers"}},
)
async def get_ift_answers(run_id: str, db: DbDep) -> cs.IftAnswers:
    """The run's instruction-fine-tuned answers to the IFT test items, and the fine-tuning summary."""
    return await db.read(views.ift_answers, run_id)
