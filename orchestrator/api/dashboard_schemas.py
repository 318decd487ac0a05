"""What the dashboard's endpoints return (docs/dashboard.md, "The API the pages read"): a run's
series, timeline and evaluations, and test loss against US$ over the finished runs.

Money is US$ (prices US$ per hour); times are UTC-aware on the wire, except the series' `time`,
which is unix seconds (the trainer's clock) to keep a 2,000-point array small.
"""

from __future__ import annotations

from pydantic import BaseModel

from orchestrator.api.comparison_schemas import ComparisonPublic
from orchestrator.api.schemas import UtcDatetime


class Series(BaseModel):
    """One metric, columnar: the i-th point is (tokens[i], time[i], usd[i], y[i])."""

    tokens: list[int]
    #: unix seconds
    time: list[float]
    #: what the run's instances had cost at that moment, US$
    usd: list[float]
    y: list[float]
    #: the points the series has after the cursor, before downsampling
    raw_points: int


class SeriesSet(BaseModel):
    train_loss: Series
    val_loss: Series
    lr: Series
    tokens_per_s: Series


class RunSeries(BaseModel):
    run_id: str
    #: pass as `after_id` to receive only newer points
    next_after_id: int
    #: a series had more than `max_points` points: it was grouped into buckets by step, each
    #: bucket sent as its minimum and its maximum
    downsampled: bool
    series: SeriesSet


class StateSpan(BaseModel):
    status: str
    start: UtcDatetime
    #: null while the run is in this state; a terminal state's span is its moment (end = start)
    end: UtcDatetime | None
    #: what the run's instances accrued during the span
    usd: float


class TimelineInstance(BaseModel):
    id: int
    name: str
    rank: int
    provider: str
    instance_type: str
    #: the list price frozen at launch
    usd_per_hour: float
    launched_at: UtcDatetime
    #: billing starts here; null if it never turned active
    active_at: UtcDatetime | None
    #: billing stops here (our terminate request, or when it was found gone); null while it runs
    ended_at: UtcDatetime | None
    status: str
    usd: float


class CostSeries(BaseModel):
    """Cumulative cost over time: an instance's (its name) or the instances' sum ("total")."""

    name: str
    time: list[UtcDatetime]
    usd: list[float]


class RunTimeline(BaseModel):
    now: UtcDatetime
    #: the spec's budget.max_usd
    budget_usd: float | None
    #: the run's whole cost, as GET /runs/{id} shows it: instances + other_usd
    total_usd: float
    states: list[StateSpan]
    instances: list[TimelineInstance]
    cost_series: list[CostSeries]
    #: cost entries that are not the run's instances: judge tokens, storage, an orphan's time
    other_usd: float


class EvaluationPublic(BaseModel):
    #: "test_loss" | "ift"
    kind: str
    test_loss: float | None
    bits_per_byte: float | None
    tokens: int | None
    #: a test loss's window (tokens per scored sequence: the training seq_len by default) and
    #: precision ("fp32" | "bf16"); null for an IFT row and for rows recorded before they were
    window: int | None
    precision: str | None
    #: the step of the checkpoint evaluated; null when not known
    checkpoint_step: int | None
    created_at: UtcDatetime


class ComparisonList(BaseModel):
    comparisons: list[ComparisonPublic]
    total: int
    limit: int
    offset: int


class ParetoPoint(BaseModel):
    run_id: str
    name: str
    status: str
    test_loss: float
    #: the run's whole cost (as GET /runs/{id} shows it), US$
    usd: float
    #: no other run is at least as cheap and as good, and better in one of the two
    frontier: bool


class Pareto(BaseModel):
    points: list[ParetoPoint]
