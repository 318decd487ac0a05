"""What `GET /api/v1/throughput` and `/api/v1/plans/probes` accept and return: throughput records
(orchestrator.planning.records) and probes (orchestrator.planning.probe)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.schemas import RunDetail, UtcDatetime


class ThroughputPublic(BaseModel):
    """What one run or probe measured on one instance type for one model shape."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: str | None
    #: "run" (a user's run) or "probe" (`trainyard plan --probe`)
    source: str
    provider: str
    instance_type: str
    #: the GPU as trainer/gpus.json names it; null for a CPU, `local` or an unknown GPU
    gpu: str | None
    nodes: int
    gpus_per_node: int
    #: records of one shape key compare (model preset, overrides, seq_len, precision as written)
    shape_key: str
    preset: str
    overrides: dict[str, Any]
    seq_len: int
    precision: str
    #: per process, the value that really ran (after `micro_batch: auto`)
    micro_batch: int
    params: int | None
    flops_per_token: float | None
    #: steady state (warm-up and evaluation left out), all nodes together
    tokens_per_s: float
    #: null when the GPU is unknown
    mfu: float | None
    launch_to_first_step_s: float | None
    #: the evaluating stage's wall time; null when the run was not evaluated
    eval_s: float | None
    tokens_trained: int
    created_at: UtcDatetime


class ThroughputList(BaseModel):
    #: newest first
    records: list[ThroughputPublic]


class ProbeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: the run spec to probe: its YAML text (as `trainyard plan SPEC.yaml --probe` sends it) or JSON
    spec: str | dict[str, Any]
    #: one type of the spec's provider; the probe runs one node of it, no fallbacks
    instance_type: str = Field(min_length=1)
    #: the probe's spending cap (budget.max_usd); default: the type's price for max_minutes
    max_usd: float | None = Field(default=None, gt=0)
    #: the probe's time cap (budget.max_hours x 60); default 30
    max_minutes: float | None = Field(default=None, gt=0)


class ProbeInstance(BaseModel):
    name: str
    instance_type: str
    region: str | None
    #: the provider confirmed the termination
    terminated: bool
    #: booked once terminated; null before
    cost_cents: float | None


class ProbePublic(BaseModel):
    """A probe run, with its record once it wrote one."""

    run: RunDetail
    instance_type: str
    #: the probe's token budget (training.max_tokens of its spec)
    train_tokens: int
    #: from the trainer's start line, once it started: the micro-batch its search found, the steps
    micro_batch: int | None
    steps: int | None
    max_usd: float | None
    max_hours: float | None
    record: ThroughputPublic | None
    instances: list[ProbeInstance]
