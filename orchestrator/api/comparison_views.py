"""Comparisons and IFT answers for the API: rows -> public schemas.

A comparison's table is read fresh each time: the runs' test loss and status from their rows,
their cost from their cost entries (judge tokens included) and live instances, the scores from
the linked report. So a pending comparison already shows its runs, and the baseline's progress.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from orchestrator import comparisons
from orchestrator.api import comparison_schemas as cs
from orchestrator.api.schemas import RunCost
from orchestrator.costs import runs_cost_cents
from orchestrator.db.models import Comparison, ComparisonRequest, Evaluation, Run, utcnow
from orchestrator.errors import ConflictError, NotFoundError


def create_comparison(session: Session, body: cs.ComparisonCreate, submitted_by: str) -> cs.ComparisonPublic:
    request = comparisons.create(
        session, body.runs, list(body.baselines), mode=body.mode, k=body.k, seed=body.seed, submitted_by=submitted_by
    )
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
    return _details(session, [_request(session, comparison_id)])[0]


def list_comparisons(session: Session, limit: int, offset: int) -> cs.ComparisonList:
    """A page of comparisons, newest first, each as GET /comparisons/{id} shows it."""
    requests = session.scalars(
        select(ComparisonRequest)
        .order_by(ComparisonRequest.created_at.desc(), ComparisonRequest.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return cs.ComparisonList(
        comparisons=_details(session, requests),
        total=session.scalar(select(func.count()).select_from(ComparisonRequest)) or 0,
        limit=limit,
        offset=offset,
    )


def _details(session: Session, requests: Sequence[ComparisonRequest]) -> list[cs.ComparisonPublic]:
    """The comparisons' tables, reading the runs, costs and reports of all of them at once."""
    ids = list(dict.fromkeys(m["run_id"] for r in requests for m in r.models))
    runs = {r.id: r for r in session.execute(select(*_RUN_COLUMNS).where(Run.id.in_(ids)))}
    costs = runs_cost_cents(session, ids, utcnow())
    bpb = _bits_per_byte(session, ids)
    report_ids = [r.report_id for r in requests if r.report_id]
    # the parts of each report a table shows, not its every judgement
    reports = {
        row.id: row
        for row in session.execute(
            select(
                Comparison.id,
                Comparison.report["models"].label("models"),
                Comparison.report["usage"].label("usage"),
                Comparison.report["judge"].label("judge"),
            ).where(Comparison.id.in_(report_ids))
        )
    }
    return [_detail(r, runs, costs, bpb, reports.get(r.report_id or "")) for r in requests]


_RUN_COLUMNS = (Run.id, Run.status, Run.status_reason, Run.test_loss)


def _detail(
    request: ComparisonRequest,
    runs: dict[str, Row],
    costs: dict[str, float],
    bpb: dict[str, float | None],
    report: Row | None,
) -> cs.ComparisonPublic:
    scores = {m["model"]: m for m in report.models} if report else {}
    rows = []
    for m in request.models:
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
    usage = report.usage if report else None
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
        judge=report.judge if report else None,
        usage=cs.ComparisonUsage(
            calls_made=usage["calls_made"], calls_cached=usage["calls_cached"], cost_cents=usage["cost_cents"]
        )
        if usage
        else None,
        rows=rows,
    )


def comparison_report(session: Session, comparison_id: str) -> cs.ComparisonReportPublic:
    """The stored report, with each item's answers read from the models' runs (their IFT
    evaluations, when they still answer the report's items)."""
    request = _request(session, comparison_id)
    stored = session.get(Comparison, request.report_id) if request.report_id else None
    if stored is None:
        raise ConflictError(
            f"comparison {comparison_id} is {request.status}: it has no report"
            + (f" ({request.status_reason})" if request.status_reason else "")
        )
    # validated once, as the response it becomes; its item answers are filled in below
    report = cs.ComparisonReportPublic.model_validate({**stored.report, "item_answers": []})
    answers = {
        m.model: a
        for m in report.models
        if m.run_id is not None
        and (a := comparisons.answers_of(session, m.run_id)) is not None
        and a.item_set_hash == report.judge.item_set_hash
    }
    reference = next(iter(answers.values()), None)
    for item in report.items:
        scored: dict[str, list[float]] = {m.model: [] for m in report.models}
        for judgement in item.judgements:
            for model, entry in judgement.scores.items():
                if entry.score is not None:
                    scored.setdefault(model, []).append(entry.score)
        asked = reference.items[item.index] if reference and item.index < len(reference.items) else None
        report.item_answers.append(
            cs.ItemAnswers(
                index=item.index,
                instruction=item.instruction,
                input=asked.input if asked else "",
                reference=asked.output if asked else "",
                answers={m.model: _answer(answers.get(m.model), item.index) for m in report.models},
                scores={model: sum(v) / len(v) if v else None for model, v in scored.items()},
            )
        )
    return report


def _answer(theirs: comparisons.Answers | None, index: int) -> str | None:
    return theirs.responses[index] if theirs is not None and index < len(theirs.responses) else None


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
