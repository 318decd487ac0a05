"""Comparisons and IFT answers for the API: rows -> public schemas.

A comparison's table is read fresh each time: the runs' test loss and status from their rows,
their cost from their cost entries (judge tokens included) and live instances, the scores from
the linked report. So a pending comparison already shows its runs, and the baseline's progress.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator import comparisons
from orchestrator.api import comparison_schemas as cs
from orchestrator.api.schemas import RunCost
from orchestrator.costs import runs_cost_cents
from orchestrator.db.models import Comparison, ComparisonRequest, Evaluation, Run, utcnow
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.judge.schemas import ComparisonReport


def create_comparison(session: Session, body: cs.ComparisonCreate) -> cs.ComparisonPublic:
    request = comparisons.create(session, body.runs, list(body.baselines), mode=body.mode, k=body.k, seed=body.seed)
    return comparison_detail(session, request.id)


def _request(session: Session, comparison_id: str) -> ComparisonRequest:
    request = session.get(ComparisonRequest, comparison_id)
    if request is None:
        raise NotFoundError(f"no comparison with id {comparison_id!r}")
    return request


def _bits_per_byte(session: Session, run_ids: list[str]) -> dict[str, float | None]:
    rows = session.execute(
        select(Evaluation.run_id, Evaluation.bits_per_byte)
        .where(Evaluation.run_id.in_(run_ids), Evaluation.kind == "test_loss")
        .order_by(Evaluation.id)
    ).all()
    return {run_id: bpb for run_id, bpb in rows}  # the latest wins


def comparison_detail(session: Session, comparison_id: str) -> cs.ComparisonPublic:
    request = _request(session, comparison_id)
    models = list(request.models)
    ids = [m["run_id"] for m in models]
    runs = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(ids)))}
    costs = runs_cost_cents(session, ids, utcnow())
    bpb = _bits_per_byte(session, ids)
    report = session.get(Comparison, request.report_id) if request.report_id else None
    scores = {m["model"]: m for m in report.report["models"]} if report else {}
    rows = []
    for m in models:
        run, score = runs.get(m["run_id"]), scores.get(m["label"], {})
        cents = costs.get(m["run_id"], 0.0)
        rows.append(
            cs.ComparisonRow(
                model=m["label"],
                run_id=m["run_id"],
                baseline=m["baseline"],
                run_status=run.status if run else "missing",
                run_status_reason=run.status_reason if run else None,
                test_loss=run.test_loss if run else None,
                bits_per_byte=bpb.get(m["run_id"]),
                score=score.get("mean"),
                ci_low=score.get("ci_low"),
                ci_high=score.get("ci_high"),
                n_items=score.get("n_items_scored"),
                n_expected=score.get("n_expected"),
                n_missing=score.get("n_missing"),
                cost=RunCost(cents=round(cents, 4), usd=round(cents / 100.0, 6)),
            )
        )
    usage = report.report["usage"] if report else None
    return cs.ComparisonPublic(
        id=request.id,
        status=request.status,
        status_reason=request.status_reason,
        mode=request.mode,
        k=request.k,
        seed=request.seed,
        created_at=request.created_at,
        updated_at=request.updated_at,
        finished_at=request.finished_at,
        report_id=request.report_id,
        judge=report.report["judge"] if report else None,
        usage=cs.ComparisonUsage(
            calls_made=usage["calls_made"], calls_cached=usage["calls_cached"], cost_cents=usage["cost_cents"]
        )
        if usage
        else None,
        rows=rows,
    )


def comparison_report(session: Session, comparison_id: str) -> ComparisonReport:
    request = _request(session, comparison_id)
    report = session.get(Comparison, request.report_id) if request.report_id else None
    if report is None:
        raise ConflictError(
            f"comparison {comparison_id} is {request.status}: it has no report"
            + (f" ({request.status_reason})" if request.status_reason else "")
        )
    return ComparisonReport.model_validate(report.report)


def ift_answers(session: Session, run_id: str) -> cs.IftAnswers:
    if session.scalar(select(Run.id).where(Run.id == run_id)) is None:
        raise NotFoundError(f"no run with id {run_id!r}")
    ev = comparisons.ift_evaluation(session, run_id)
    if ev is None:
        raise NotFoundError(
            f"run {run_id} has no IFT answers (evaluation.ift is off, or it has not finished evaluating)"
        )
    return cs.IftAnswers(
        run_id=run_id,
        item_set_hash=ev.details["item_set_hash"],
        summary=ev.details.get("summary") or {},
        answers=ev.details.get("answers") or [],
    )
