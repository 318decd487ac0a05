"""What the comparison endpoints accept and return (see orchestrator/comparisons.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.schemas import RunCost, UtcDatetime
from orchestrator.judge.schemas import ComparisonReport, JudgeVersion


class ComparisonCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: run ids, in the order the table shows them; each must have succeeded with IFT answers
    runs: Annotated[list[str], Field(min_length=1, max_length=20)]
    #: OpenAI's GPT-2 weights, evaluated by the same pipeline as the first run (a run is
    #: submitted for each, or a finished one with the same data and evaluation is reused)
    baselines: Annotated[list[Literal["gpt2", "gpt2-medium"]], Field(max_length=2)] = []
    mode: Literal["comparative", "pointwise"] = "comparative"
    #: judge repeats per item
    k: Annotated[int, Field(ge=1, le=10)] = 3
    seed: int = 0


class ComparisonRow(BaseModel):
    """One model of the table: the run's own numbers and the judge's score of its answers."""

    #: the run's name, or the baseline's name ("gpt2"); unique within the comparison
    model: str
    run_id: str
    baseline: str | None
    run_status: str
    run_status_reason: str | None
    test_loss: float | None
    bits_per_byte: float | None
    #: mean judge score (0-100) over the items and its 95% confidence interval; null until judged
    score: float | None
    ci_low: float | None
    ci_high: float | None
    #: items scored, and judgements expected / missing (malformed or failed judge answers)
    n_items: int | None
    n_expected: int | None
    n_missing: int | None
    #: the run's whole cost: instances, storage and its share of the judge's tokens
    cost: RunCost


class ComparisonUsage(BaseModel):
    calls_made: int
    calls_cached: int
    #: what this comparison's judge calls cost, in US cents
    cost_cents: float


class ComparisonPublic(BaseModel):
    id: str
    #: pending (waiting for baseline runs) | running (judging) | succeeded | failed
    status: str
    status_reason: str | None
    mode: str
    k: int
    seed: int
    created_at: UtcDatetime
    updated_at: UtcDatetime
    finished_at: UtcDatetime | None
    #: the full report (every judgement and comment, consistency): GET /comparisons/{id}/report
    report_id: str | None
    judge: JudgeVersion | None
    usage: ComparisonUsage | None
    rows: list[ComparisonRow]


class IftAnswer(BaseModel):
    instruction: str
    input: str
    #: the reference answer
    output: str
    model_response: str


class IftAnswers(BaseModel):
    run_id: str
    #: identifies the test items answered; runs are compared only on the same items
    item_set_hash: str
    #: trainer.ift's summary: best epoch, losses per epoch, item counts, settings
    summary: dict
    answers: list[IftAnswer]


class ComparisonList(BaseModel):
    """`GET /comparisons`: newest first."""

    comparisons: list[ComparisonPublic]
    total: int
    limit: int
    offset: int


class ItemAnswers(BaseModel):
    """One judged item as the dashboard shows it: what was asked, the reference, and each model's
    answer and score (its mean over the repeats that scored it)."""

    index: int
    instruction: str
    input: str
    #: the reference answer
    reference: str
    #: model -> its answer; null when the model's run no longer has answers to these items
    answers: dict[str, str | None]
    #: model -> mean score over the repeats (0-100); null when no repeat scored it
    scores: dict[str, float | None]


class ComparisonReportPublic(ComparisonReport):
    """The stored report, plus each item's answers (the report keeps only the judgements)."""

    #: aligned with `items`: item_answers[i] is items[i]
    item_answers: list[ItemAnswers]
