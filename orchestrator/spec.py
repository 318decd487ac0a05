"""The run spec: what a user writes (as YAML) to ask for a run.

Strict on purpose: an unknown field or an impossible value is rejected with the field named
(HTTP 422), because a typo that is silently ignored becomes a run that did not do what its
author thinks it did (the users' "run configs that no longer match what really ran").

`training` keys are the trainer's own config keys (docs/trainer-contract.md), passed through.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import InvalidSpecError

MODEL_PRESETS = ("gpt2-tiny", "gpt2-small", "gpt2-medium")
PROVIDERS = ("local", "lambda", "ssh")

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    preset: Literal["gpt2-tiny", "gpt2-small", "gpt2-medium"] = "gpt2-tiny"
    #: architecture overrides passed to the trainer, e.g. {n_layer: 2, tie_weights: true}
    overrides: dict[str, Any] = Field(default_factory=dict)


class DataSpec(_Strict):
    #: `builtin:corpus` (shipped, no download), a path on the node, or `hf:NAME[:CONFIG]`
    source: str = "builtin:corpus"
    format: Literal["auto", "text", "jsonl", "parquet", "hf"] = "auto"
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    test_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    #: stop tokenising after this many tokens (None: all of the source)
    max_tokens: PositiveInt | None = None


class TrainingSpec(_Strict):
    seq_len: PositiveInt = 128
    micro_batch: PositiveInt | Literal["auto"] = 8
    grad_accum: PositiveInt = 1
    lr: Annotated[float, Field(gt=0)] = 1e-3
    min_lr: NonNegativeFloat = 1e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: Annotated[int, Field(ge=0)] = 10
    weight_decay: NonNegativeFloat = 0.1
    grad_clip: NonNegativeFloat = 1.0
    max_tokens: PositiveInt | Literal["chinchilla"] = 500_000
    log_every: PositiveInt = 10
    eval_every: PositiveInt = 50
    eval_tokens: PositiveInt = 32_768
    checkpoint_every: PositiveInt = 100
    keep_last: PositiveInt = 3
    seed: int = 1337
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False


class ComputeSpec(_Strict):
    provider: Literal["local", "lambda", "ssh"] = "local"
    #: provider instance type, e.g. gpu_8x_h100_sxm5 (ignored by `local`)
    instance_type: str | None = None
    #: tried in order when `instance_type` has no capacity
    fallback_instance_types: list[str] = Field(default_factory=list)
    #: regions to try, in order; empty = any region with capacity
    regions: list[str] = Field(default_factory=list)
    nodes: PositiveInt = 1
    #: trainer processes per node (GPUs per node; 1 on CPU)
    procs_per_node: PositiveInt = 1
    #: give up placing after this many seconds without capacity
    placement_timeout_s: Annotated[float, Field(gt=0)] = 600.0

    @model_validator(mode="after")
    def _cloud_needs_type(self) -> "ComputeSpec":
        if self.provider == "lambda" and not self.instance_type:
            raise ValueError("instance_type is required when provider is lambda")
        if self.provider == "local" and self.nodes != 1:
            raise ValueError("the local provider runs exactly 1 node")
        return self


class EvaluationSpec(_Strict):
    test_loss: bool = True
    #: evaluate on at most this many test tokens (None: the whole test split)
    test_max_tokens: PositiveInt | None = None


class BudgetSpec(_Strict):
    max_usd: NonNegativeFloat | None = None
    max_hours: Annotated[float, Field(gt=0)] | None = None


class RunSpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    #: where checkpoints go (file:// or s3://); default: the service's artifact store
    artifact_uri: str | None = None
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)

    @field_validator("name")
    @classmethod
    def _printable_name(cls, v: str) -> str:
        if not re.fullmatch(r"[\w .:@+/-]+", v):
            raise ValueError("name may hold letters, digits, spaces and . _ - : @ + / only")
        return v

    def trainer_config(self, *, data_dir: str) -> dict[str, Any]:
        """The trainer's config file contents for this spec (docs/trainer-contract.md)."""
        return {
            "model": self.model.preset,
            "model_overrides": dict(self.model.overrides),
            "data_dir": data_dir,
            **self.training.model_dump(),
        }


def parse_spec_yaml(text: str) -> RunSpec:
    """Parse and validate a YAML run spec, raising InvalidSpecError that names the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidSpecError(f"the spec is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise InvalidSpecError("the spec must be a YAML mapping (name: ..., model: ..., ...)")
    return validate_spec(data)


_FIELD_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_path(loc: tuple | list) -> str:
    """`budget.max_usd` from a pydantic error location, leaving out the union-member tags
    pydantic adds (`training.max_tokens.constrained-int` names the field `training.max_tokens`)."""
    return ".".join(str(p) for p in loc if isinstance(p, int) or _FIELD_PART.fullmatch(str(p)))


def validate_spec(data: dict[str, Any]) -> RunSpec:
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = field_path(first["loc"]) or None
        raise InvalidSpecError(f"{field}: {first['msg']}" if field else first["msg"], field=field) from exc
