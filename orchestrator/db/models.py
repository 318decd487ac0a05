"""SQLAlchemy 2.0 models: what the service remembers about every run.

Tables are created only by Alembic migrations (`alembic/`); these classes are the source the
migrations were generated from, and a test checks that the two agree.

Money is stored as integer cents (micro-cents where fractions matter) so sums are exact.
Times are timezone-aware UTC.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import overload

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@overload
def aware(t: datetime) -> datetime: ...


@overload
def aware(t: None) -> None: ...


def aware(t: datetime | None) -> datetime | None:
    """`t` as a timezone-aware UTC time. SQLite hands back naive datetimes even for timezone-aware
    columns; every time here was stored as UTC, so a naive one is UTC."""
    return t.replace(tzinfo=timezone.utc) if t is not None and t.tzinfo is None else t


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware column that reads back as aware UTC on every database: the one place a
    time gets its zone (SQLite hands back naive datetimes, PostgreSQL its session's zone), so
    every response and every comparison sees `+00:00`. Stored as DateTime(timezone=True)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else aware(value).astimezone(timezone.utc)


# Deterministic constraint names, so migrations are the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UtcDateTime()}


class RunStatus(str, enum.Enum):
    pending = "pending"
    provisioning = "provisioning"
    bootstrapping = "bootstrapping"
    training = "training"
    evaluating = "evaluating"
    recovering = "recovering"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    stopped = "stopped"  # a budget limit was reached

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


#: how a run may end without succeeding (from any state that is not terminal)
UNSUCCESSFUL_ENDINGS = frozenset({RunStatus.failed, RunStatus.cancelled, RunStatus.stopped})
#: the statuses a run never leaves (the one definition; orchestrator.controller.steps.TRANSITIONS
#: gives them no way out)
TERMINAL_STATUSES = frozenset({RunStatus.succeeded}) | UNSUCCESSFUL_ENDINGS
#: their values, for queries and for the CLI, which sees statuses as JSON strings
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL_STATUSES)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.pending.value, index=True)
    #: the spec's `compute.provider` (local | lambda | ssh), a column of its own so the runs list
    #: filters on it with an index rather than reading every spec
    provider: Mapped[str] = mapped_column(String(40), default="local", server_default="local", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    #: the user asked to cancel; the controller acts on it (desired state, level-triggered)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    # the lease: one worker at a time acts on a run; every write is fenced by the token
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)

    # progress, kept up to date by the controller so reading a run never scans its metrics
    target_tokens: Mapped[int | None] = mapped_column(BigInteger)
    tokens_done: Mapped[int] = mapped_column(BigInteger, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    train_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    world_size: Mapped[int | None] = mapped_column(Integer)
    recoveries: Mapped[int] = mapped_column(Integer, default=0)

    #: "train" (a user's run) or "probe" (`trainyard plan --probe`: a short timed training that
    #: only measures throughput; its record is what it is for)
    purpose: Mapped[str] = mapped_column(String(20), default="train", server_default="train")
    #: the trainer's `start` metrics line as it came (micro-batch that really ran, dtype, device,
    #: flops per token, ...): what the throughput record is built from
    trainer_start: Mapped[dict | None] = mapped_column(JSON)
    #: set when the controller asked the trainer to stop early (a budget about to be reached):
    #: the trainer checkpoints, the checkpoint is evaluated, and the run ends `stopped`
    stop_requested_at: Mapped[datetime | None]
    stop_reason: Mapped[str | None] = mapped_column(Text)
    #: how the run ends, written (with what the ending records) before its instances are
    #: terminated: a worker that takes the run over in between finishes this same ending rather
    #: than finding its nodes gone and diagnosing a loss (controller/steps.py `end_run`); the
    #: first decision stands, and `ending_at` becomes the run's `finished_at`
    ending_status: Mapped[str | None] = mapped_column(String(20))
    ending_reason: Mapped[str | None] = mapped_column(Text)
    ending_at: Mapped[datetime | None]

    #: who submitted it: the API token's name (orchestrator/auth.py), "local" when the service
    #: was open on loopback (no tokens); null for runs from before tokens existed
    submitted_by: Mapped[str | None] = mapped_column(String(100))

    #: the run's folder in the artifact store (checkpoints/ under it); null while pending, frozen
    #: when the controller starts provisioning, so a later change of settings moves no checkpoints
    artifact_uri: Mapped[str | None] = mapped_column(Text)

    # where the controller is in reading the node's files (byte offsets, so reads are incremental)
    metrics_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    log_offset: Mapped[int] = mapped_column(BigInteger, default=0)

    events: Mapped[list[RunEvent]] = relationship(back_populates="run", order_by="RunEvent.id")
    instances: Mapped[list[Instance]] = relationship(back_populates="run", order_by="Instance.rank")


class RunEvent(Base):
    """Every status change and why, plus notable happenings (recoveries, placement moves)."""

    __tablename__ = "run_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    time: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))  # "status", "placement", "recovery", "info", ...
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str | None] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")

    run: Mapped[Run] = relationship(back_populates="events")


class Instance(Base):
    """One rented (or local) machine of a run. The price is frozen at launch."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100), index=True)  # ty-<run>-<rank>
    provider: Mapped[str] = mapped_column(String(40))
    provider_instance_id: Mapped[str | None] = mapped_column(String(100))
    instance_type: Mapped[str] = mapped_column(String(100))
    region: Mapped[str | None] = mapped_column(String(100))
    public_ip: Mapped[str | None] = mapped_column(String(100))
    private_ip: Mapped[str | None] = mapped_column(String(100))
    ssh_port: Mapped[int | None] = mapped_column(Integer)
    price_cents_per_hour: Mapped[int] = mapped_column(Integer, default=0)
    #: the provider's billing increment in seconds (60 on Lambda; shorter under a simulator whose
    #: clock is compressed), frozen at launch with the price: orchestrator.costs bills by it
    billing_minute_s: Mapped[float] = mapped_column(Float, default=60.0, server_default="60")
    status: Mapped[str] = mapped_column(String(20), default="booting")
    #: the trainer's working directory on the node
    workdir: Mapped[str | None] = mapped_column(Text)
    #: the interpreter that runs the trainer there (a bootstrapped node's venv); set when the
    #: node is ready, so it also records that bootstrap finished on this node
    python: Mapped[str | None] = mapped_column(Text)
    #: pid of the detached trainer on the node (informational; the node's pid file is the truth)
    trainer_pid: Mapped[int | None] = mapped_column(Integer)

    launched_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: the last time the provider showed it booting (kept on every poll while it boots): it cannot
    #: have turned active, nor started billing, before then (controller/placement.py `active_since`)
    booting_seen_at: Mapped[datetime | None]
    active_at: Mapped[datetime | None]
    terminate_requested_at: Mapped[datetime | None]
    terminated_at: Mapped[datetime | None]
    #: when the ended run's cleanup gave up terminating it (controller/cleanup.py): left running
    #: for the orphan sweep, which terminates and books it; the run no longer holds a worker
    cleanup_gave_up_at: Mapped[datetime | None]

    run: Mapped[Run] = relationship(back_populates="instances")


class MetricPoint(Base):
    """One metrics line from the trainer (train step or validation)."""

    __tablename__ = "metric_points"
    __table_args__ = (
        Index("ix_metric_points_run_id_id", "run_id", "id"),
        # the dashboard's series read one kind of a run at a time (orchestrator.series)
        Index("ix_metric_points_run_id_kind_id", "run_id", "kind", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # "train" | "val"
    step: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[float] = mapped_column(Float)  # unix seconds, as the trainer wrote it
    train_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    mfu: Mapped[float | None] = mapped_column(Float)
    peak_mem_bytes: Mapped[int | None] = mapped_column(BigInteger)
    wall_s: Mapped[float | None] = mapped_column(Float)


class MetricRollup(Base):
    """A run's metric points of one kind pre-aggregated per bucket of ROLLUP_STEPS steps
    (orchestrator.rollups): what the dashboard's downsampled series are grouped from, so a long
    run's first page reads a few thousand rows rather than every point. Kept current by the
    ingest, in the transaction that writes or deletes the points. Every row carries all four
    series (a train row's val_loss count is 0): one statement computes any kind."""

    __tablename__ = "metric_rollups"
    __table_args__ = (
        # a reader finds the buckets holding points newer than its cursor (orchestrator.series)
        # without scanning the run's rollups: usually none, an empty index range
        Index("ix_metric_rollups_run_id_kind_max_id", "run_id", "kind", "max_id"),
    )

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    #: step / ROLLUP_STEPS, truncated (the same integer division on SQLite and PostgreSQL)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    points: Mapped[int] = mapped_column(Integer)
    min_step: Mapped[int] = mapped_column(Integer)
    max_step: Mapped[int] = mapped_column(Integer)
    min_tokens: Mapped[int] = mapped_column(BigInteger)
    max_tokens: Mapped[int] = mapped_column(BigInteger)
    min_time: Mapped[float] = mapped_column(Float)
    max_time: Mapped[float] = mapped_column(Float)
    #: the bucket's raw point ids span min_id..max_id: a refresh finds its rows through the
    #: (run_id, kind, id) index (metric_points has no step index), a reader knows what it covers
    min_id: Mapped[int] = mapped_column(BigInteger)
    max_id: Mapped[int] = mapped_column(BigInteger)
    train_loss_min: Mapped[float | None] = mapped_column(Float)
    train_loss_max: Mapped[float | None] = mapped_column(Float)
    train_loss_n: Mapped[int] = mapped_column(Integer)
    lr_min: Mapped[float | None] = mapped_column(Float)
    lr_max: Mapped[float | None] = mapped_column(Float)
    lr_n: Mapped[int] = mapped_column(Integer)
    tokens_per_s_min: Mapped[float | None] = mapped_column(Float)
    tokens_per_s_max: Mapped[float | None] = mapped_column(Float)
    tokens_per_s_n: Mapped[int] = mapped_column(Integer)
    val_loss_min: Mapped[float | None] = mapped_column(Float)
    val_loss_max: Mapped[float | None] = mapped_column(Float)
    val_loss_n: Mapped[int] = mapped_column(Integer)


class CheckpointState(str, enum.Enum):
    on_node = "on_node"  # committed on the node; its upload to the store is not confirmed yet
    stored = "stored"  # committed in the artifact store (manifest written, every hash checked)
    deleting = "deleting"  # chosen by retention; its manifest may already be gone from the store
    deleted = "deleted"  # removed from the store by retention (the row stays, as history)


class CheckpointKind(str, enum.Enum):
    train = "train"  # committed by the training
    ift = "ift"  # the instruction-fine-tuned weights of the evaluating stage (trainer.ift)


class Checkpoint(Base):
    """One committed checkpoint of a run: where the trainer wrote it and, once uploaded, where it
    lives in the artifact store (`uri`). One row per (run, kind, step): a step saved again after a
    recovery updates its row; the IFT checkpoint has the step of the checkpoint it was tuned from."""

    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_run_id_kind_step", "run_id", "kind", "step", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    #: CheckpointKind: only `train` checkpoints are resumed from, ranked (best) and pruned
    kind: Mapped[str] = mapped_column(String(20), default=CheckpointKind.train.value, server_default="train")
    step: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)
    val_loss: Mapped[float | None] = mapped_column(Float)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: the store URI once stored; before that the node's copy (file:// or node://)
    uri: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), default=CheckpointState.on_node.value)
    #: the folder on the node the trainer committed it in
    node_path: Mapped[str | None] = mapped_column(Text)
    stored_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def best_checkpoint(rows: Iterable[Checkpoint]) -> Checkpoint | None:
    """The run's best checkpoint among `rows`: the lowest validation loss, the later step on a tie
    (the one rule the API's `best` flag and checkpoint retention share)."""
    scored = [r for r in rows if r.val_loss is not None]
    return min(scored, key=lambda r: (r.val_loss, -r.step)) if scored else None


class Evaluation(Base):
    """A measured result of one checkpoint, e.g. test loss on the pinned test set."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(40))  # "test_loss"
    test_loss: Mapped[float | None] = mapped_column(Float)
    bits_per_byte: Mapped[float | None] = mapped_column(Float)
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    test_set_sha256: Mapped[str | None] = mapped_column(String(64))
    #: a test loss's window (tokens per scored sequence) and precision ("fp32" | "bf16"): two test
    #: losses compare only when both agree; null for an IFT row, and for rows from before 0011
    window: Mapped[int | None] = mapped_column(Integer)
    precision: Mapped[str | None] = mapped_column(String(10))
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CostEntry(Base):
    """Money spent: an instance's billed time, judge tokens, storage, an orphan's time. Only an
    orphan instance (kind "orphan") of no run the database knows has no run."""

    __tablename__ = "cost_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(20))  # "instance" | "judge" | "storage" | "orphan"
    #: exact amount in US cents (fractions allowed: judge tokens cost fractions of a cent)
    cents: Mapped[float] = mapped_column(Float)
    quantity: Mapped[float | None] = mapped_column(Float)  # billed minutes, tokens, GB-months
    unit: Mapped[str | None] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LogChunk(Base):
    """The trainer's log, copied off the node as it is written, kept after the run ends."""

    __tablename__ = "log_chunks"
    __table_args__ = (Index("ix_log_chunks_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    rank: Mapped[int] = mapped_column(Integer, default=0)
    text: Mapped[str] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(default=utcnow)


class Judgement(Base):
    """One answer of the LLM judge, kept so that asking the same thing again never pays twice.

    `key` is the SHA-256 of what was asked (judge model, prompt template hash, the exact rendered
    messages, the repeat and the attempt number; see orchestrator/judge/cache.py). The request is
    stored without any credential. `cost_booked` is set once the call's tokens were booked as
    cost, so a judgement paid for but not booked (a crash mid-comparison) is booked the next time
    it is used, and never twice.
    """

    __tablename__ = "judgements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    mode: Mapped[str] = mapped_column(String(20))  # "comparative" | "pointwise"
    judge_model: Mapped[str] = mapped_column(String(200))
    template_hash: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict] = mapped_column(JSON)
    response_text: Mapped[str | None] = mapped_column(Text)
    #: the validated answer, or null when it was malformed (then `error` says why)
    parsed: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_booked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Comparison(Base):
    """A finished judge comparison: the whole report (scores, CIs, per-item judgements and
    comments, consistency, usage) as JSON, with its judge version, for later inspection."""

    __tablename__ = "comparisons"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    mode: Mapped[str] = mapped_column(String(20))
    judge_model: Mapped[str] = mapped_column(String(200))
    judge_version: Mapped[dict] = mapped_column(JSON)
    models: Mapped[list] = mapped_column(JSON)
    report: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ComparisonStatus(str, enum.Enum):
    pending = "pending"  # waiting for its baseline runs to succeed
    running = "running"  # a worker is judging (in the service process, never on a node)
    succeeded = "succeeded"  # judged: `report_id` names the report
    failed = "failed"  # `status_reason` says why

    @property
    def is_terminal(self) -> bool:
        return self in (ComparisonStatus.succeeded, ComparisonStatus.failed)


class ComparisonRequest(Base):
    """A comparison asked for (`POST /comparisons`, `trainyard compare`): the runs and baseline
    runs to judge together, and how. A worker waits until the baseline runs have succeeded, then
    judges under a lease (owner, token, expiry: one worker at a time) and links the report."""

    __tablename__ = "comparison_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default=ComparisonStatus.pending.value, index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(20))
    k: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    #: in table order: [{"label": name in the report, "run_id": ..., "baseline": "gpt2" | null}]
    models: Mapped[list] = mapped_column(JSON)
    report_id: Mapped[str | None] = mapped_column(ForeignKey("comparisons.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]


class ThroughputRecord(Base):
    """What one run (or probe) measured on one instance type for one model shape: the facts
    `trainyard plan` estimates from. Written once, when the run ends after training."""

    __tablename__ = "throughput_records"
    __table_args__ = (Index("ix_throughput_records_type_shape", "instance_type", "shape_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), unique=True)
    source: Mapped[str] = mapped_column(String(20))  # "run" | "probe"
    provider: Mapped[str] = mapped_column(String(40))
    instance_type: Mapped[str] = mapped_column(String(100))
    #: the GPU of the type as the GPU table names it (trainer/gpus.json), null when unknown
    gpu: Mapped[str | None] = mapped_column(String(100))
    nodes: Mapped[int] = mapped_column(Integer)
    gpus_per_node: Mapped[int] = mapped_column(Integer)
    #: hash of the model shape (preset, overrides, seq_len, precision): records of one shape
    #: compare; the parts are kept as columns too, for people
    shape_key: Mapped[str] = mapped_column(String(64))
    preset: Mapped[str] = mapped_column(String(40))
    overrides: Mapped[dict] = mapped_column(JSON, default=dict)
    seq_len: Mapped[int] = mapped_column(Integer)
    precision: Mapped[str] = mapped_column(String(20))
    #: per process (GPU), the value that really ran (after `micro_batch: auto`)
    micro_batch: Mapped[int] = mapped_column(Integer)
    params: Mapped[int | None] = mapped_column(BigInteger)
    flops_per_token: Mapped[float | None] = mapped_column(Float)
    #: steady state, all nodes together: warm-up and evaluation left out
    tokens_per_s: Mapped[float] = mapped_column(Float)
    #: flops_per_token x tokens/s / (the GPUs' dense bf16 peak); null when the GPU is unknown
    mfu: Mapped[float | None] = mapped_column(Float)
    #: first launch request to the first training step (provisioning + bootstrap + data)
    launch_to_first_step_s: Mapped[float | None] = mapped_column(Float)
    #: the evaluating stage's wall time (null when the run was not evaluated)
    eval_s: Mapped[float | None] = mapped_column(Float)
    tokens_trained: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class OrphanInstance(Base):
    """A provider instance named like trainyard's that no live run owns, found by the orphan
    sweep (controller/orphans.py). One row per provider instance, so sweeping workers terminate
    and book it once."""

    __tablename__ = "orphan_instances"
    __table_args__ = (Index("ix_orphan_instances_provider_instance", "provider", "provider_instance_id", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(40))
    provider_instance_id: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    instance_type: Mapped[str] = mapped_column(String(100))
    region: Mapped[str | None] = mapped_column(String(100))
    price_cents_per_hour: Mapped[int] = mapped_column(Integer, default=0)
    billing_minute_s: Mapped[float] = mapped_column(Float, default=60.0)
    #: the run its name points to, when the database knows it (an ended run)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    terminate_requested_at: Mapped[datetime | None]
    terminated_at: Mapped[datetime | None]
    #: the cost entry that booked it, once booked
    cost_entry_id: Mapped[int | None] = mapped_column(ForeignKey("cost_entries.id", ondelete="SET NULL"))


class ApiToken(Base):
    """A credential for the API (orchestrator/auth.py): only the SHA-256 of its secret is kept.
    Names are never reused, so a run's `submitted_by` always names one token."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    scope: Mapped[str] = mapped_column(String(20))  # read | submit | admin
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class ApiSession(Base):
    """A dashboard sign-in: the cookie holds a random id, this row its SHA-256. It acts as its
    token, and ends with it (revoked) or at `expires_at`."""

    __tablename__ = "api_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class IdempotencyKey(Base):
    """A submit's `Idempotency-Key` (api/idempotency.py): the same key from the same submitter
    with the same spec gives the same run; kept for `settings.idempotency_key_ttl_s`."""

    __tablename__ = "idempotency_keys"

    #: the caller's name (orchestrator.auth: a token's name, or "local"): keys are per submitter
    submitter: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: SHA-256 of the spec as the service read it: another body under the same key is a 409
    request_sha256: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class WorkerRecord(Base):
    """A controller worker's name, held by one live process at a time (controller/identity.py).
    The process beats here every settings.worker_heartbeat_s; once `expires_at` has passed it
    counts as dead: the leases its name holds may be taken before their own expiry."""

    __tablename__ = "workers"

    #: the worker's name: what `runs.lease_owner` holds
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    #: the live process that holds the name, new on every start: a restart takes the name over
    token: Mapped[str] = mapped_column(String(64))
    #: where that process runs, "<host>:<data dir>"; a restart from the same home may take the
    #: name at once (its file lock there proves the predecessor is gone)
    home: Mapped[str] = mapped_column(String(500))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
