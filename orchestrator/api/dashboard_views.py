"""Reading what the dashboard's pages draw: a run's series, timeline and evaluations, and test loss
against US$ over the finished runs (schemas: dashboard_schemas.py).

The work is in orchestrator.series and orchestrator.timeline (plain dataclasses); this module
checks the run exists and turns their results into the response schemas.
"""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.api import dashboard_schemas as ds
from orchestrator.api.views import run_status
from orchestrator.costs import booked_cents_of_run, live_instances_cents, unbooked_instances_of_run
from orchestrator.db.models import Checkpoint, Evaluation, Run, RunStatus, utcnow
from orchestrator.pareto import on_frontier
from orchestrator.series import run_series
from orchestrator.timeline import run_timeline

#: the runs a Pareto chart compares: they ended with a model whose test loss was measured
PARETO_STATUSES = (RunStatus.succeeded.value, RunStatus.stopped.value)


def series(session: Session, run_id: str, after_id: int, max_points: int) -> ds.RunSeries:
    run_status(session, run_id)
    return ds.RunSeries.model_validate(asdict(run_series(session, run_id, after_id, max_points)))


def timeline(session: Session, run_id: str) -> ds.RunTimeline:
    return ds.RunTimeline.model_validate(asdict(run_timeline(session, run_id, utcnow())))


def evaluations(session: Session, run_id: str) -> list[ds.EvaluationPublic]:
    """The run's evaluations, oldest first, without their details (the IFT answers are
    `GET /runs/{id}/answers`)."""
    run_status(session, run_id)
    rows = session.execute(
        select(
            Evaluation.kind,
            Evaluation.test_loss,
            Evaluation.bits_per_byte,
            Evaluation.tokens,
            Evaluation.window,
            Evaluation.precision,
            Checkpoint.step.label("checkpoint_step"),
            Evaluation.created_at,
        )
        .outerjoin(Checkpoint, Checkpoint.id == Evaluation.checkpoint_id)
        .where(Evaluation.run_id == run_id)
        .order_by(Evaluation.id)
    ).all()
    return [ds.EvaluationPublic.model_validate(dict(r._mapping)) for r in rows]


def pareto(session: Session) -> ds.Pareto:
    """Every succeeded or stopped run with a test loss, its cost as GET /runs/{id} shows it, and
    whether it is on the frontier of (US$, test loss) (orchestrator.pareto: the plan's rule)."""
    rows = session.execute(
        select(
            Run.id,
            Run.name,
            Run.status,
            Run.test_loss,
            booked_cents_of_run().label("booked_cents"),
            unbooked_instances_of_run().label("unbooked"),
        )
        .where(Run.status.in_(PARETO_STATUSES), Run.test_loss.is_not(None))
        .order_by(Run.created_at, Run.id)
    ).all()
    # an ended run's instances are booked as it ends; only one caught in between has live cost
    live = live_instances_cents(session, [r.id for r in rows if r.unbooked], utcnow())
    usd = [round((float(r.booked_cents) + live.get(r.id, 0.0)) / 100.0, 6) for r in rows]
    frontier = on_frontier([(u, float(r.test_loss)) for u, r in zip(usd, rows, strict=True)])
    return ds.Pareto(
        points=[
            ds.ParetoPoint(run_id=r.id, name=r.name, status=r.status, test_loss=r.test_loss, usd=u, frontier=f)
            for r, u, f in zip(rows, usd, frontier, strict=True)
        ]
    )
