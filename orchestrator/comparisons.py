"""Comparisons of runs by their instruction-following answers (`trainyard compare`, the REST API).

    POST /comparisons {runs, baselines, mode, k, seed}
      -> create(): the runs must have succeeded with IFT answers to the same test items; each
         baseline (OpenAI's GPT-2 weights, evaluated by the same pipeline) is a run of its own,
         reused when one with the same data and evaluation settings exists, else submitted
      -> a `comparison_requests` row, pending
    a worker (controller/comparing.py) waits until the baseline runs succeed, then judges in the
    service process (orchestrator.judge.judge_answers) and links the report; the table rows are the
    runs' test loss and cost with the report's scores (api/comparison_views.py).

Shared by the API (create) and the worker (answers_of); no network call happens here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.db.models import (
    UNSUCCESSFUL_ENDINGS,
    ComparisonRequest,
    ComparisonStatus,
    Evaluation,
    Run,
    RunStatus,
    utcnow,
)
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.judge.errors import InvalidComparisonError
from orchestrator.judge.schemas import Item
from orchestrator.runs import add_event, create_run
from orchestrator.spec import RunSpec, validate_spec

IFT_KIND = "ift"
#: a baseline run in one of these states will never have answers; another is submitted
_DEAD = [s.value for s in UNSUCCESSFUL_ENDINGS]


@dataclass(frozen=True)
class Answers:
    """A run's stored IFT answers: the test items and its responses, in the same order."""

    run_id: str
    item_set_hash: str
    items: list[Item]
    responses: list[str]


def ift_evaluation(session: Session, run_id: str) -> Evaluation | None:
    """The run's latest IFT evaluation (its summary and answers), if it has one."""
    return session.scalars(
        select(Evaluation)
        .where(Evaluation.run_id == run_id, Evaluation.kind == IFT_KIND)
        .order_by(Evaluation.id.desc())
        .limit(1)
    ).first()


def answers_of(session: Session, run_id: str) -> Answers | None:
    ev = ift_evaluation(session, run_id)
    if ev is None:
        return None
    rows = ev.details.get("answers") or []
    return Answers(
        run_id=run_id,
        item_set_hash=ev.details["item_set_hash"],
        items=[Item(instruction=a["instruction"], input=a["input"], output=a["output"]) for a in rows],
        responses=[a["model_response"] for a in rows],
    )


# -- creating a comparison ------------------------------------------------------------------------
def _comparable(session: Session, run_id: str) -> tuple[Run, Answers]:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"no run with id {run_id!r}")
    if run.status != RunStatus.succeeded.value:
        why = f" ({run.status_reason})" if run.status_reason and RunStatus(run.status).is_terminal else ""
        raise ConflictError(
            f"run {run_id} ({run.name}) is {run.status}{why}: only a succeeded run with IFT answers can be compared"
        )
    answers = answers_of(session, run_id)
    if answers is None:
        raise InvalidComparisonError(
            f"run {run_id} ({run.name}) has no IFT answers: it ran without evaluation.ift.enabled", field="runs"
        )
    return run, answers


def baseline_key(spec: RunSpec) -> tuple[dict, dict]:
    """What a baseline's numbers depend on besides its weights: the data (the test split for the
    test loss) and the evaluation settings (test tokens, the IFT data and settings)."""
    return spec.data.model_dump(mode="json"), spec.evaluation.model_dump(mode="json")


def baseline_spec(spec: RunSpec, name: str) -> RunSpec:
    """The run that evaluates OpenAI's `name` exactly as `spec`'s run was evaluated: same data,
    evaluation, provider, instance types and budget; one node; no training."""
    base = spec.model_dump(mode="json")
    compute = {**base["compute"], "nodes": 1, "procs_per_node": 1}
    return validate_spec(
        {
            "name": f"baseline {name}",
            "model": {"pretrained": name},
            "data": base["data"],
            "compute": compute,
            "artifact_uri": base["artifact_uri"],
            "evaluation": base["evaluation"],
            "budget": base["budget"],
        }
    )


def find_baseline(session: Session, spec: RunSpec, name: str) -> Run | None:
    """A run of OpenAI's `name` with `spec`'s data and evaluation settings that has succeeded (or
    may still: one in flight is waited for rather than paid for twice); None if there is none."""
    wanted = baseline_key(spec)
    candidates = session.scalars(
        select(Run)
        .where(Run.spec[("model", "pretrained")].as_string() == name, Run.status.not_in(_DEAD))
        .order_by(Run.created_at.desc())
    ).all()
    same = [r for r in candidates if baseline_key(RunSpec.model_validate(r.spec)) == wanted]
    done = [r for r in same if r.status == RunStatus.succeeded.value and ift_evaluation(session, r.id)]
    alive = [r for r in same if not RunStatus(r.status).is_terminal]
    return (done or alive)[0] if done or alive else None


def _label(run: Run, used: set[str], name: str | None = None) -> str:
    label = name or run.name
    if label in used:
        label = f"{label} ({run.id})"
    used.add(label)
    return label


def create(
    session: Session,
    run_ids: list[str],
    baselines: list[str],
    *,
    mode: str,
    k: int,
    seed: int,
    submitted_by: str | None = None,
) -> ComparisonRequest:
    """Check what is asked, find or submit the baseline runs (as `submitted_by`), record the
    request (pending)."""
    for field, values in (("runs", run_ids), ("baselines", baselines)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise InvalidComparisonError(f"{field}: {', '.join(twice)} named more than once", field=field)
    if not run_ids:
        raise InvalidComparisonError("runs: name at least one run", field="runs")
    compared = [_comparable(session, rid) for rid in run_ids]
    first_run, first = compared[0]
    for run, answers in compared[1:]:
        if answers.item_set_hash != first.item_set_hash:
            raise InvalidComparisonError(
                f"runs {first_run.id} ({first_run.name}) and {run.id} ({run.name}) answered different "
                f"test items (their evaluation.ift data or limit_test differ); compare runs that "
                f"answered the same items",
                field="runs",
            )

    used: set[str] = set()
    models = [{"label": _label(run, used), "run_id": run.id, "baseline": None} for run, _a in compared]
    spec = RunSpec.model_validate(first_run.spec)
    comparison_id = uuid.uuid4().hex[:12]
    for name in baselines:
        baseline = find_baseline(session, spec, name)
        if baseline is None:
            baseline = create_run(session, baseline_spec(spec, name), submitted_by)
            add_event(session, baseline.id, "info", f"submitted as the {name} baseline of comparison {comparison_id}")
        if baseline.id in run_ids:
            continue  # named as a run already: it is compared once
        models.append({"label": _label(baseline, used, name), "run_id": baseline.id, "baseline": name})
    if mode == "comparative" and len(models) < 2:
        raise InvalidComparisonError(
            "comparative judging sets models against each other: name at least "
            "two runs, or a run and a --baseline (or use mode pointwise)",
            field="runs",
        )
    now = utcnow()
    request = ComparisonRequest(
        id=comparison_id,
        status=ComparisonStatus.pending.value,
        mode=mode,
        k=k,
        seed=seed,
        models=models,
        created_at=now,
        updated_at=now,
    )
    session.add(request)
    session.flush()
    return request
