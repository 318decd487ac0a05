"""The run spec: what a user writes (as YAML) to ask for a run.

Strict on purpose: an unknown field or an impossible value is rejected with the field named
(HTTP 422), because a typo that is silently ignored becomes a run that did not do what its
author thinks it did (the users' "run configs that no longer match what really ran").

`training` is the trainer's own schema (trainer.schema.TrainingSettings, torch-free): the same
keys, defaults and rules as the train config file (docs/trainer-contract.md), so a spec that
passes here is a config the trainer accepts (up to the checks that need the model).

A NEW spec (`validate_spec`, `parse_spec_yaml`, the API's `SubmittedSpec` body) also goes through
the door (orchestrator.door): NaN, infinity, lone surrogates, schemes, unknown model overrides,
local paths outside the data roots and sizes over the service's limits are refused with the
schema's own mistakes, all at once. `RunSpec.model_validate` alone reads a stored spec back, and
does not check it against today's limits again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from orchestrator.door import Limits, Problem, current_limits, field_problems, unsafe_values
from orchestrator.errors import InvalidSpecError
from trainer.schema import TrainConfigFile, TrainingSettings, field_path

MODEL_PRESETS = ("gpt2-tiny", "gpt2-small", "gpt2-medium")
#: OpenAI's GPT-2 weights a run may evaluate instead of training (`model.pretrained`)
PRETRAINED_MODELS = ("gpt2", "gpt2-medium")
#: the book's instruction data (chapter 7), downloaded on the node at run time
BOOK_INSTRUCTION_DATA = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"
)
PROVIDERS = ("local", "lambda", "ssh")
#: `compute.instance_type: auto`: the plan picks the type when the run is placed
AUTO_INSTANCE_TYPE = "auto"

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelSpec(_Strict):
    preset: Literal["gpt2-tiny", "gpt2-small", "gpt2-medium"] = "gpt2-tiny"
    #: architecture overrides passed to the trainer, e.g. {n_layer: 2, tie_weights: true}
    overrides: dict[str, Any] = Field(default_factory=dict)
    #: OpenAI's GPT-2 weights, evaluated by the same pipeline instead of training: a baseline
    pretrained: Literal["gpt2", "gpt2-medium"] | None = None

    @model_validator(mode="after")
    def _pretrained_has_no_architecture(self) -> "ModelSpec":
        if self.pretrained is not None and (self.overrides or self.preset != "gpt2-tiny"):
            raise ValueError(
                f"pretrained: {self.pretrained} is OpenAI's architecture and weights; leave out preset and overrides"
            )
        return self


class DataSpec(_Strict):
    #: `builtin:corpus` (shipped, no download), an absolute path on the node under the data roots
    #: (orchestrator.door), or `hf:NAME[:CONFIG]`
    source: str = "builtin:corpus"
    format: Literal["auto", "text", "jsonl", "parquet", "hf"] = "auto"
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    test_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    #: stop tokenising after this many tokens (None: all of the source)
    max_tokens: PositiveInt | None = None


class ComputeSpec(_Strict):
    provider: Literal["local", "lambda", "ssh"] = "local"
    #: provider instance type, e.g. gpu_8x_h100_sxm5 (ignored by `local`), or `auto`: the type the
    #: plan (orchestrator.planning) ranks first by `objective`, chosen when the run is placed
    instance_type: str | None = None
    #: what `instance_type: auto` optimises: the lowest estimated US$, or the shortest wall time
    objective: Literal["cheapest", "fastest"] = "cheapest"
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
        problems = []
        if self.provider == "lambda" and not self.instance_type:
            problems.append("instance_type is required when provider is lambda (a type, or auto)")
        if self.instance_type == AUTO_INSTANCE_TYPE and self.fallback_instance_types:
            problems.append("instance_type auto chooses among every type; leave fallback_instance_types out")
        if self.provider == "local" and self.nodes != 1:
            problems.append("the local provider runs exactly 1 node")
        _refuse_all(type(self).__name__, problems, self)
        return self


def _refuse_all(model: str, problems: list[str], value: Any) -> None:
    """Raise every inconsistency a model validator found, each as its own error at the model's
    path (pydantic merges a ValidationError raised here into the spec's), where a ValueError would
    carry only the first one found."""
    if problems:
        raise ValidationError.from_exception_data(
            model,
            [
                InitErrorDetails(
                    type=PydanticCustomError("value_error", "{problem}", {"problem": problem}), loc=(), input=value
                )
                for problem in problems
            ],
        )


class IftSpec(_Strict):
    """Instruction fine-tuning on node 0 after the test loss (`trainer.ift`, the book's chapter 7),
    then greedy answers to the test items; the service judges them (`trainyard compare`)."""

    enabled: bool = False
    #: Alpaca-format JSON ([{instruction, input, output}]): an absolute path on the node under the
    #: data roots (orchestrator.door) or an http(s) URL
    data: Annotated[str, Field(min_length=1)] = BOOK_INSTRUCTION_DATA
    epochs_max: PositiveInt = 10
    #: epochs without a lower validation loss before stopping (the best epoch is restored)
    patience: PositiveInt = 1
    batch_size: PositiveInt = 8
    lr: Annotated[float, Field(gt=0)] = 5e-5
    max_new_tokens: Annotated[int, Field(ge=1, le=256)] = 256
    #: answer only the first N test items (None: all of them)
    limit_test: PositiveInt | None = None
    seed: int = 123


class EvaluationSpec(_Strict):
    test_loss: bool = True
    #: evaluate on at most this many test tokens (None: the whole test split)
    test_max_tokens: PositiveInt | None = None
    ift: IftSpec = Field(default_factory=IftSpec)

    @model_validator(mode="after")
    def _ift_follows_the_test_loss(self) -> "EvaluationSpec":
        if self.ift.enabled and not self.test_loss:
            raise ValueError(
                "ift.enabled needs test_loss: true (the fine-tuning follows the test loss "
                "on the node, and a comparison shows both)"
            )
        return self


class BudgetSpec(_Strict):
    max_usd: NonNegativeFloat | None = None
    max_hours: Annotated[float, Field(gt=0)] | None = None


class RunSpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    #: the train config's own schema (trainer.schema): one model, one set of defaults
    training: TrainingSettings = Field(default_factory=TrainingSettings)
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

    # A pretrained run (model.pretrained) is not trained: it prepares the data, evaluates OpenAI's
    # weights on the test split (and IFT) on one node. Settings that would say otherwise are
    # refused rather than ignored (model comes before these fields, so it is in `info.data`).
    @field_validator("training")
    @classmethod
    def _pretrained_is_not_trained(cls, v: TrainingSettings, info: ValidationInfo) -> TrainingSettings:
        if _pretrained(info) and v != TrainingSettings():
            raise ValueError(
                f"a pretrained run (model.pretrained: {_pretrained(info)}) is not trained; leave training out"
            )
        return v

    @field_validator("compute")
    @classmethod
    def _pretrained_on_one_node(cls, v: ComputeSpec, info: ValidationInfo) -> ComputeSpec:
        if _pretrained(info) and v.nodes != 1:
            raise ValueError("a pretrained run evaluates on one node: nodes must be 1")
        return v

    @field_validator("evaluation")
    @classmethod
    def _pretrained_is_evaluated(cls, v: EvaluationSpec, info: ValidationInfo) -> EvaluationSpec:
        if _pretrained(info) and not v.test_loss:
            raise ValueError("a pretrained run only evaluates: test_loss must be true")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _at_the_door(cls, data: Any, handler: ModelWrapValidatorHandler[RunSpec], info: ValidationInfo) -> RunSpec:
        door = (info.context or {}).get(_DOOR)
        if door is None and issubclass(cls, SubmittedSpec):
            door = _Door(current_limits.get())
        if door is None:  # a stored spec, read back
            return handler(data)
        return _through_the_door(cls.__name__, data, handler, door.limits)

    def trainer_config(self, *, data_dir: str, artifact_uri: str | None = None) -> dict[str, Any]:
        """The trainer's config file contents for this spec (docs/trainer-contract.md), checked
        against the trainer's own schema; `artifact_uri`: where rank 0 uploads checkpoints."""
        values = {
            "model": self.model.preset,
            "model_overrides": dict(self.model.overrides),
            "data_dir": data_dir,
            **self.training.model_dump(),
        }
        if artifact_uri is not None:
            values["artifact_uri"] = artifact_uri
        return TrainConfigFile.model_validate(values).model_dump(exclude_unset=True)


def _pretrained(info: ValidationInfo) -> str | None:
    model = info.data.get("model")
    return model.pretrained if isinstance(model, ModelSpec) else None


class SubmittedSpec(RunSpec):
    """A spec as a request body (the API's RunCreate): checked at the door against the limits of
    the service handling the request (orchestrator.door.current_limits)."""


# -- the door -------------------------------------------------------------------------------------
_DOOR = "trainyard_door"


@dataclass(frozen=True)
class _Door:
    """Validation context: check the spec at the door, with these limits (None: the service's are
    not known here, so only the checks that need none)."""

    limits: Limits | None


def _through_the_door(
    title: str, data: Any, handler: ModelWrapValidatorHandler[RunSpec], limits: Limits | None
) -> RunSpec:
    """The schema's mistakes and the door's problems (orchestrator.door), all in one
    ValidationError. The schema validates a safe copy, so no error echoes a value that JSON or a
    database cannot hold; where the door named a field, its problem replaces the schema's."""
    problems, safe = unsafe_values(data)
    if safe is None and data is not None:  # too deep or too large to look at any further
        raise _refusal(title, problems, [], None)
    if isinstance(safe, dict):
        problems += field_problems(safe, limits)
    try:
        spec = handler(safe)
    except ValidationError as exc:
        if not problems:
            raise
        raise _refusal(title, problems, exc.errors(), safe) from None
    if problems:
        raise _refusal(title, problems, [], safe)
    return spec


def _refusal(title: str, problems: list[Problem], errors: list[ErrorDetails], safe: Any) -> ValidationError:
    # one mistake per field: the door's first where it named one, else the schema's
    told: set[str] = set()
    firsts = []
    for p in problems:
        path = field_path(p.loc)
        if not path or path not in told:
            told.add(path)
            firsts.append(p)
    details = [
        InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]), loc=e["loc"], input=e["input"])
        for e in errors
        if not field_path(e["loc"]) or field_path(e["loc"]) not in told
    ]
    details += [
        InitErrorDetails(type=PydanticCustomError(p.kind, p.message), loc=p.loc, input=_value_at(safe, p.loc))
        for p in firsts
    ]
    return ValidationError.from_exception_data(title, details)


def _value_at(data: Any, loc: tuple[str | int, ...]) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


class SpecMistakes(InvalidSpecError):
    """A spec with one or more mistakes, every one that pydantic found (it checks every field
    before it gives up). `problems`: one line each, `field.path: message`, in the spec's order;
    the message is the one line of them all (the API's 422 and logs show it), `field` the first's."""

    def __init__(self, problems: list[tuple[str | None, str]]):
        self.problems = [f"{field}: {msg}" if field else msg for field, msg in problems]
        self.field_errors = list(problems)  # (field, message) each: the API's error body lists them
        message = (
            self.problems[0]
            if len(self.problems) == 1
            else f"{len(self.problems)} mistakes in the spec: " + "; ".join(self.problems)
        )
        super().__init__(message, field=problems[0][0] if problems else None)


def spec_problems(exc: ValidationError) -> list[tuple[str | None, str]]:
    """Every error of a failed validation as (field path or None, message)."""
    return [(field_path(e["loc"]) or None, str(e["msg"])) for e in exc.errors()]


def parse_spec_yaml(text: str, limits: Limits | None = None) -> RunSpec:
    """Parse a new YAML run spec and check it at the door (`validate_spec`), raising
    InvalidSpecError that names the field; a key given twice is one of the mistakes."""
    try:
        data, duplicates = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidSpecError(f"the spec is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    except RecursionError:
        raise InvalidSpecError("the spec nests too deeply to be read") from None
    if not isinstance(data, dict):
        raise InvalidSpecError("the spec must be a YAML mapping (name: ..., model: ..., ...)")
    return _validate(data, limits, duplicates)


def validate_spec(data: dict[str, Any], limits: Limits | None = None) -> RunSpec:
    """Validate a new spec and check it at the door against `limits` (default: those of the
    service handling this request, if any), raising SpecMistakes with every mistake."""
    return _validate(data, limits, [])


def _validate(data: dict[str, Any], limits: Limits | None, earlier: list[tuple[str | None, str]]) -> RunSpec:
    door = _Door(limits if limits is not None else current_limits.get())
    try:
        spec = RunSpec.model_validate(data, context={_DOOR: door})
    except ValidationError as exc:
        raise SpecMistakes(earlier + spec_problems(exc)) from exc
    if earlier:
        raise SpecMistakes(earlier)
    return spec


def _load_yaml(text: str) -> tuple[Any, list[tuple[str | None, str]]]:
    """The document, and a mistake for every key a mapping holds twice (PyYAML keeps the last
    one silently: a spec whose author meant the first would run with the other)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        duplicates = _duplicate_keys(node, (), set()) if node is not None else []
        return (loader.construct_document(node) if node is not None else None), duplicates
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, loc: tuple[str | int, ...], seen: set[int]) -> list[tuple[str | None, str]]:
    if id(node) in seen:  # an alias: its mapping was looked at where it is defined
        return []
    seen.add(id(node))
    found: list[tuple[str | None, str]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge" else None
            if name is not None and name in first:
                lines = f"lines {first[name]} and {key.start_mark.line + 1}"
                if first[name] == key.start_mark.line + 1:
                    lines = f"line {first[name]}"
                found.append((field_path((*loc, name)) or None, f"the key {name!r} is given twice ({lines})"))
            elif name is not None:
                first[name] = key.start_mark.line + 1
            found += _duplicate_keys(value, (*loc, name) if name is not None else loc, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, (*loc, i), seen)
    return found
