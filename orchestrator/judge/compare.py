"""`judge_answers`: judge several models' answers to the same test items and report the scores.

The judge's one entry point; the worker calls it (controller/comparing.py) for a comparison that
`trainyard compare` or POST /comparisons asked for. It plans every judge call (pure), runs them
(cache first; network outside any transaction), then in one transaction books the judge's token
cost to the runs compared, stores the report as a `comparisons` row and records each run's score
with its judge version as an `evaluations` row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Comparison, Evaluation, Run, utcnow
from orchestrator.db.session import transaction
from orchestrator.judge import comparative, cost, pointwise, runner
from orchestrator.judge.client import JudgeClient
from orchestrator.judge.consistency import consistency
from orchestrator.judge.errors import InvalidComparisonError, JudgeNotConfiguredError
from orchestrator.judge.prompts import TEMPLATE_HASHES
from orchestrator.judge.schemas import ComparisonReport, Item, JudgeVersion, Mode, Usage
from orchestrator.judge.scoring import (
    differences,
    item_reports,
    missing_counts,
    model_scores,
    observations,
)
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


def item_set_hash(items: list[Item]) -> str:
    blob = json.dumps([i.model_dump() for i in items], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def make_client(settings: Settings) -> JudgeClient:
    if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
        raise JudgeNotConfiguredError("the judge is off: set TRAINYARD_OPENAI_API_KEY")
    return JudgeClient.from_settings(settings, settings.openai_api_key.get_secret_value())


def _check(items: list[Item], answers: dict[str, list[str]], k: int, mode: str, run_ids: dict[str, str]) -> None:
    if not items:
        raise InvalidComparisonError("no test items to judge", field="items")
    if not answers:
        raise InvalidComparisonError("no models to judge", field="answers")
    if mode not in TEMPLATE_HASHES:
        raise InvalidComparisonError(f"unknown mode {mode!r}", field="mode")
    if k < 1:
        raise InvalidComparisonError("k must be at least 1", field="k")
    for model, texts in answers.items():
        if len(texts) != len(items):
            raise InvalidComparisonError(
                f"model {model!r} has {len(texts)} answers for {len(items)} items", field="answers"
            )
    unknown = set(run_ids) - set(answers)
    if unknown:
        raise InvalidComparisonError(f"run ids given for models not compared: {sorted(unknown)}", field="run_ids")


def _check_runs_exist(factory: sessionmaker[Session], run_ids: dict[str, str]) -> None:
    # before any paid call: a cost entry or evaluation for an unknown run could not be stored
    if not run_ids:
        return
    with factory() as session:
        known = set(session.scalars(select(Run.id).where(Run.id.in_(list(run_ids.values())))))
    missing = sorted(set(run_ids.values()) - known)
    if missing:
        raise InvalidComparisonError(f"no such runs: {missing}", field="run_ids")


def _usage(verdicts: list[runner.Verdict], prices: cost.Prices, booked: float) -> Usage:
    paid_in = sum(o.paid_input_tokens for o in verdicts)
    paid_out = sum(o.paid_output_tokens for o in verdicts)
    return Usage(
        calls_made=sum(o.calls_made for o in verdicts),
        calls_cached=sum(o.calls_cached for o in verdicts),
        input_tokens=sum(o.input_tokens for o in verdicts),
        output_tokens=sum(o.output_tokens for o in verdicts),
        paid_input_tokens=paid_in,
        paid_output_tokens=paid_out,
        cost_cents=cost.token_cost_cents(paid_in, paid_out, prices),
        booked_cents=booked,
    )


def judge_answers(
    session_factory: sessionmaker[Session],
    settings: Settings,
    items: Sequence[Item | dict[str, Any]],
    answers: dict[str, list[str]],
    *,
    k: int = 3,
    seed: int = 0,
    mode: Mode = "comparative",
    run_ids: dict[str, str] | None = None,
    client: JudgeClient | None = None,
) -> ComparisonReport:
    """Judge `answers` (model name -> one answer per item) against `items`' reference outputs.

    comparative: per item and repeat, one call with every model's answer in a shuffled order
    (seeded by `seed`, the item and the repeat), K repeats. pointwise: the book's prompt, one
    call per (model, item, repeat). `run_ids` maps the models that are runs to their run ids:
    their judge cost is booked to them and their score recorded as an evaluation.
    Same arguments and judge model again: answered from the cache, no new calls.
    """
    checked = [i if isinstance(i, Item) else Item.model_validate(i) for i in items]
    run_ids = dict(run_ids or {})
    _check(checked, answers, k, mode, run_ids)
    _check_runs_exist(session_factory, run_ids)
    own_client = client is None
    client = client or make_client(settings)
    try:
        return _judge(session_factory, settings, checked, answers, k, seed, mode, run_ids, client)
    finally:
        if own_client:
            client.close()


def _judge(
    session_factory: sessionmaker[Session],
    settings: Settings,
    items: list[Item],
    answers: dict[str, list[str]],
    k: int,
    seed: int,
    mode: Mode,
    run_ids: dict[str, str],
    client: JudgeClient,
) -> ComparisonReport:
    template_hash = TEMPLATE_HASHES[mode]
    version = JudgeVersion(
        mode=mode, model=client.model, template_hash=template_hash, item_set_hash=item_set_hash(items), k=k, seed=seed
    )
    is_comparative = mode == "comparative"
    planned = (
        comparative.plan(items, answers, k=k, seed=seed) if is_comparative else pointwise.plan(items, answers, k=k)
    )
    setup = runner.JudgeSetup(
        client=client, mode=mode, template_hash=template_hash, attempts=max(1, settings.judge_attempts)
    )
    verdicts = runner.run(session_factory, setup, planned, settings.judge_concurrency)

    models = list(answers)
    obs = observations(verdicts, is_comparative)
    comparison_id = uuid.uuid4().hex
    prices = cost.Prices.from_settings(settings)
    with transaction(session_factory) as session:
        booked = cost.book(
            session, verdicts, run_ids, prices, f"judge ({mode}, {client.model}) for comparison {comparison_id}"
        )
        n_missing = sum(o.scores is None for o in verdicts)
        report = ComparisonReport(
            id=comparison_id,
            created_at=utcnow(),
            judge=version,
            models=model_scores(obs, models, run_ids),
            differences=differences(obs, models),
            n_expected=len(verdicts),
            n_missing=n_missing,
            missing_reasons=missing_counts(verdicts),
            consistency=consistency(obs, models, k),
            usage=_usage(verdicts, prices, booked),
            items=item_reports(items, verdicts, is_comparative),
        )
        judge = version.model_dump(mode="json")
        session.add(
            Comparison(
                id=comparison_id,
                mode=mode,
                judge_model=client.model,
                judge_version=judge,
                models=models,
                report=report.model_dump(mode="json"),
            )
        )
        for score in report.models:
            if score.run_id is not None:
                session.add(
                    Evaluation(
                        run_id=score.run_id,
                        kind=f"judge_{mode}",
                        details={
                            "comparison_id": comparison_id,
                            "judge": judge,
                            **score.model_dump(mode="json", exclude={"run_id"}),
                        },
                    )
                )
    log.info(
        "judge comparison %s: %d models, %d items x %d repeats, %d of %d judgements missing, "
        "%d calls made, %d from cache",
        comparison_id,
        len(models),
        len(items),
        k,
        n_missing,
        len(verdicts),
        report.usage.calls_made,
        report.usage.calls_cached,
    )
    return report
