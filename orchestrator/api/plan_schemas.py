"""What `POST /api/v1/plans` accepts and returns (the estimator's rows: orchestrator.planning)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class PlanCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: the run spec: its YAML text (as `trainyard plan SPEC.yaml` sends it) or the spec as JSON
    spec: str | dict[str, Any]
    #: plan on this provider instead of the spec's compute.provider
    provider: str | None = Field(default=None, description="local, lambda or ssh")


class PlanBand(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    #: the half-width, relative (0.4: ±40%); by source: measured (the records' spread, >= 10%),
    #: scaled 25%, prior 40%
    relative: float
    usd_low: float
    usd_high: float
    hours_low: float
    hours_high: float


class PlanRowPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    instance_type: str
    #: the GPU as trainer/gpus.json names it; null for a CPU or an unknown GPU
    gpu: str | None
    gpus: int
    gpu_description: str
    nodes: int
    #: trainer processes (GPUs used) per node: the spec's compute.procs_per_node
    procs_per_node: int
    price_cents_per_hour: int
    regions_with_capacity: list[str]
    #: false when the model (or the spec's processes per node) cannot fit: see `reason`
    fits: bool
    reason: str | None
    #: where tokens/s comes from: measured, scaled, prior, or none (no estimate)
    source: Literal["measured", "scaled", "prior", "none"]
    #: the records or the published figure behind it, in words
    source_detail: str
    #: throughput records the estimate used
    records: int
    micro_batch: int | None
    #: GPU memory the memory model expects at that micro-batch
    memory_gb: float | None
    #: all nodes and GPUs together
    tokens_per_s: float | None
    mfu: float | None
    #: launch, boot, bootstrap and data preparation
    setup_s: float | None
    #: the token budget, validation included
    training_s: float | None
    #: test loss (and IFT when enabled)
    eval_s: float | None
    total_s: float | None
    hours: float | None
    billed_minutes: int | None
    #: every node, by the started minute, at the listed price
    usd: float | None
    usd_per_billion_tokens: float | None
    band: PlanBand | None
    notes: list[str]
    #: within budget.max_usd and budget.max_hours; null without an estimate
    within_budget: bool | None
    cheapest: bool
    fastest: bool
    #: on the Pareto frontier of US$ against hours
    frontier: bool


class PlanChoice(BaseModel):
    """The row the spec would run on: its named type, or what `instance_type: auto` picks now."""

    instance_type: str | None
    reason: str


class PlanPublic(BaseModel):
    provider: str
    spec_name: str
    shape_key: str
    shape: str
    params: int
    flops_per_token: float
    #: the token budget (training.max_tokens; chinchilla = 20 x params)
    train_tokens: int
    max_usd: float | None
    max_hours: float | None
    #: throughput records of this shape the plan read
    records: int
    #: the spec's compute.instance_type (or auto) and compute.objective
    instance_type: str | None
    objective: str
    chosen: PlanChoice
    #: estimated rows cheapest first, then the rows without an estimate
    rows: list[PlanRowPublic]
