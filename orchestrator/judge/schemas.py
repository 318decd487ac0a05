"""What goes into a comparison and what comes out: pydantic, so a report is JSON as it is."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

Mode = Literal["comparative", "pointwise"]


class Item(BaseModel):
    """One test item in Alpaca format; `output` is the reference answer."""

    instruction: str
    input: str = ""
    output: str


class JudgeVersion(BaseModel):
    """Everything a score depends on besides the answers judged. Two scores are comparable only
    when their judge versions are equal."""

    mode: Mode
    model: str
    template_hash: str
    item_set_hash: str
    k: int
    seed: int


class ScoreEntry(BaseModel):
    """One model's score within one judgement; `score` is None when the judgement is missing."""

    score: float | None
    comments: str = ""
    #: 1-based place where the answer was shown (comparative); None in pointwise mode
    position: int | None = None


class JudgementRecord(BaseModel):
    """One judge call (after its retries) for one item and one repeat."""

    repeat: int
    #: the seed of this item's shuffle in this repeat (comparative), so the order can be rebuilt
    shuffle_seed: int | None = None
    #: the models in the order they were shown: order[0] was "Model 1"
    order: list[str]
    scores: dict[str, ScoreEntry]
    #: why this judgement is missing (None when it was scored)
    error: str | None = None
    #: "malformed" (answers failed validation on every attempt) | "call_failed" (timeout,
    #: connection or HTTP error after the client's retries) | None
    missing_reason: Literal["malformed", "call_failed"] | None = None
    attempts: int
    #: every attempt's answer came from the cache (no call was made)
    cached: bool


class ItemReport(BaseModel):
    index: int
    instruction: str
    judgements: list[JudgementRecord]


class ModelScore(BaseModel):
    """A model's score: the mean over items of its item score (the mean over the repeats in which
    the item was judged), with a 95% confidence interval over items."""

    model: str
    run_id: str | None = None
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n_items_scored: int
    #: judgements (item x repeat) expected, scored, and missing; scored + missing == expected
    n_expected: int
    n_scored: int
    n_missing: int


class Difference(BaseModel):
    """model_a - model_b over the items both were scored on (paired), with a 95% CI: when the
    interval excludes 0 the difference is unlikely to be noise from the choice of items."""

    model_a: str
    model_b: str
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n_items: int


class ModelConsistency(BaseModel):
    model: str
    #: the model's mean score in each repeat (None where a repeat scored none of its items)
    repeat_means: list[float | None]
    #: sample standard deviation of `repeat_means`: how much the headline number moves between
    #: repeats of the same comparison
    repeat_std: float | None
    #: mean over items of the standard deviation of the item's scores across repeats
    mean_item_std: float | None
    #: mean score of this model when shown at each position ("1", "2", ...)
    mean_by_position: dict[str, float]
    #: max - min of `mean_by_position`: large values mean the label order moved its score
    position_spread: float | None


class PositionStat(BaseModel):
    position: int
    n: int
    mean_score: float | None
    #: mean of (score - that model's mean on that item over repeats) at this position: the
    #: position's own effect with models and items taken out; ~0 everywhere for an unbiased judge
    effect: float | None


class ConsistencyReport(BaseModel):
    models: list[ModelConsistency]
    #: empty in pointwise mode (no positions)
    positions: list[PositionStat]
    #: max - min of the position effects
    position_bias: float | None


class Usage(BaseModel):
    calls_made: int
    calls_cached: int
    input_tokens: int
    output_tokens: int
    #: tokens of the calls made by this comparison (cached ones were paid before)
    paid_input_tokens: int
    paid_output_tokens: int
    #: what this comparison's calls cost, in US cents
    cost_cents: float
    #: the part booked as "judge" cost entries of runs (shares of models that are not runs, and
    #: judgements booked by an earlier comparison, are not booked again)
    booked_cents: float


class ComparisonReport(BaseModel):
    id: str
    created_at: datetime
    judge: JudgeVersion
    models: list[ModelScore]
    differences: list[Difference]
    #: judgements (one per judge call after its retries: item x repeat in comparative mode,
    #: model x item x repeat in pointwise mode) expected and missing, and why they are missing
    n_expected: int
    n_missing: int
    missing_reasons: dict[str, int] = Field(default_factory=dict)
    consistency: ConsistencyReport
    usage: Usage
    items: list[ItemReport]

    def model(self, name: str) -> ModelScore:
        return next(m for m in self.models if m.model == name)
