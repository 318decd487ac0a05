"""What the API accepts (`...Create`) and returns (`...Public`), kept apart from the db models
so a column added for the controller never leaks into a response by accident."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

from orchestrator.db.models import aware
from orchestrator.spec import SubmittedSpec


def _utc(t: datetime) -> datetime:
    """SQLite hands back naive datetimes (every time is stored as UTC), PostgreSQL ones in its
    session's zone: on the wire every time is UTC and says so."""
    return aware(t).astimezone(timezone.utc)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class RunCreate(SubmittedSpec):
    """A run spec as JSON: the same strict schema as the YAML the CLI reads."""


class RunProgress(BaseModel):
    tokens_done: int
    target_tokens: int | None
    #: tokens_done / target_tokens, 0..1; exactly 1 once the run succeeded
    fraction: float | None
    step: int
    train_loss: float | None
    val_loss: float | None
    test_loss: float | None
    tokens_per_s: float | None
    #: seconds left at the current throughput; null when unknown or not training
    eta_s: float | None
    world_size: int | None
    recoveries: int


class RunCost(BaseModel):
    #: booked cost entries + live cost of instances still running, in US cents
    cents: float
    usd: float


class RunBudget(BaseModel):
    """The spec's caps, where the run is headed, and whether it was asked to stop for them
    (orchestrator.projection; the controller's rule: controller/budget.py)."""

    max_usd: float | None
    max_hours: float | None
    #: what the instances still in use cost per hour, in US$ (per hour of billing increments:
    #: a simulator's compressed minute makes it higher than the list price)
    usd_per_hour: float
    #: seconds until the run ends: the training left at its tokens/s, then its evaluation; null
    #: while unknown (before the trainer measured its speed) and once the run has ended
    eta_s: float | None
    #: cost so far + what the instances in use bill until the ETA, in US$; the final cost once
    #: the run has ended; null while unknown
    projected_usd: float | None
    #: hours since provisioning began (until the run ended)
    hours: float
    #: when the controller asked the trainer to stop for the budget: it checkpoints, the test
    #: loss is measured on that checkpoint, and the run ends `stopped`
    stop_requested_at: UtcDatetime | None
    stop_reason: str | None


class RunPublic(BaseModel):
    id: str
    name: str
    status: str
    #: the spec's compute.provider: local | lambda | ssh
    provider: str
    #: the spec's compute.instance_type (`auto`: the plan picks it at placement); null for local
    instance_type: str | None
    status_reason: str | None
    cancel_requested: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    #: seconds from submission until it ended (or until now)
    wall_s: float
    progress: RunProgress
    cost: RunCost
    budget: RunBudget
    #: the name of the API token it was submitted with ("local": the service had no tokens)
    submitted_by: str | None


class RunDetail(RunPublic):
    spec: dict[str, Any]


class RunList(BaseModel):
    runs: list[RunPublic]
    total: int
    limit: int
    offset: int


class MetricPointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    step: int
    tokens: int
    time: float
    train_loss: float | None
    val_loss: float | None
    lr: float | None
    tokens_per_s: float | None


class MetricsPage(BaseModel):
    points: list[MetricPointPublic]
    #: pass as `after_id` to get the points after these
    next_after_id: int
    has_more: bool


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    time: UtcDatetime
    kind: str
    from_status: str | None
    to_status: str | None
    message: str


class EventsPage(BaseModel):
    events: list[EventPublic]
    #: the newest event id in the page (or the `after_id` asked for): pass as `after_id` to get
    #: what came after
    next_after_id: int
    #: the oldest event id in the page (or the `before_id` asked for): with `order=desc`, pass as
    #: `before_id` for the page before it
    next_before_id: int | None
    #: another page follows in the page's order (newer with asc, older with desc)
    has_more: bool


class LogChunkPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    rank: int
    time: UtcDatetime
    text: str


class LogsPage(BaseModel):
    chunks: list[LogChunkPublic]
    next_after_id: int
    has_more: bool
    #: the run's status when this page was read; a follower stops once it is terminal and drained
    run_status: str
    run_terminal: bool


class Health(BaseModel):
    status: str
    version: str
    #: "sqlite" or "postgresql" (never the URL: it may hold a password)
    database: str


class InstanceTypePublic(BaseModel):
    name: str
    description: str
    gpus: int
    gpu_description: str
    price_cents_per_hour: int
    #: empty = no capacity anywhere right now
    regions_with_capacity: list[str]


class InstanceTypeList(BaseModel):
    provider: str
    instance_types: list[InstanceTypePublic]
