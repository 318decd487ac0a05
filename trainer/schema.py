"""The train config's schema: one pydantic model, shared by the trainer and the service.

`TrainingSettings` is the training hyperparameters: the run spec's `training:` section
(orchestrator.spec) and the train config keys of the same names (trainer.config) are this one
model, so their defaults and rules cannot drift apart. `TrainConfigFile` adds what only the train
config file holds (model, data_dir, device, ...): every key it may hold, and nothing else.

Torch-free on purpose (pydantic only): the service imports this module, and the service never
imports torch. The checks that need the model (the preset exists, `model_overrides` fit
`GPTConfig`, `seq_len` fits the context) live in trainer.config.

Numbers: a count also accepts a whole number written as a string (YAML 1.1 reads `2e6` as the
string "2e6"), a real number accepts an int or a numeric string (`4e-4`); true/false, NaN and
infinity are refused wherever a number is expected. An error names the field by its path, as
`field_path` writes it (`training.max_tokens`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError(
            "number_not_bool", "Input should be a number, not {value}", {"value": str(value).lower()}
        )
    return value


def _whole_number(value: Any) -> Any:
    value = _number(value)
    if isinstance(value, str):
        try:
            number = float(value.replace("_", ""))
        except ValueError:
            return value  # not a number: the int validator says so
        if number.is_integer():
            return int(number)
    return value


def _count_or(word: str) -> Callable[[Any], Any]:
    """A positive count, or `word` ("auto", "chinchilla")."""

    def check(value: Any) -> Any:
        if value == word:
            return value
        value = _whole_number(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or value <= 0:
            raise PydanticCustomError("count_or_word", 'Input should be a positive integer or "{word}"', {"word": word})
        return value

    return check


#: the largest micro-batch `micro_batch: auto` tries on a GPU (trainer.runtime's search)
AUTO_MICRO_BATCH_LIMIT = 512
#: ... and on CPU: RAM rarely runs out before a batch is absurdly slow, and when it does the
#: kernel's OOM killer (or swap) strikes rather than a catchable error; past a few sequences a CPU
#: is compute-bound, so a larger micro-batch buys no tokens/s. The service sizes probes with it.
AUTO_MICRO_BATCH_LIMIT_CPU = 16

Int = Annotated[int, BeforeValidator(_whole_number)]
PositiveInt = Annotated[int, Field(gt=0), BeforeValidator(_whole_number)]
NonNegativeInt = Annotated[int, Field(ge=0), BeforeValidator(_whole_number)]
PositiveFloat = Annotated[float, Field(gt=0), BeforeValidator(_number)]
NonNegativeFloat = Annotated[float, Field(ge=0), BeforeValidator(_number)]


#: `training.recipe: book`: the seed user's setup (the book's chapter 5 loop at scale): AdamW at a
#: constant 4e-4 with weight decay 0.1 on every parameter (biases and LayerNorm gains too), the
#: book's betas (0.9, 0.999), no warm-up, no clipping; fp16 autocast with a GradScaler on a GPU,
#: fp32 on a CPU (`dtype: auto`, resolved_dtype). The trainer's side: trainer.recipe.
BOOK_RECIPE: dict[str, Any] = {
    "lr": 4e-4,
    "schedule": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.1,
    "grad_clip": 0.0,
    "dtype": "auto",
}


def resolved_dtype(dtype: str, recipe: str, on_gpu: bool) -> str:
    """What a run's `dtype` means on its device: auto is bf16 on a GPU (fp16 with a GradScaler
    under recipe book) and fp32 on a CPU. The trainer and the service's planner both ask here."""
    if dtype != "auto":
        return dtype
    if not on_gpu:
        return "fp32"
    return "fp16" if recipe == "book" else "bf16"


class TrainingSettings(BaseModel):
    """How to train: the run spec's `training:` and the train config's keys of the same names."""

    # protected_namespaces: `model` and `model_overrides` are train config keys (pydantic < 2.10
    # would warn about the `model_` prefix)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    #: "ours" (the defaults below) or "book": the seed user's exact setup (BOOK_RECIPE). First, so
    #: the fields after it are validated knowing it.
    recipe: Literal["ours", "book"] = "ours"
    seq_len: PositiveInt = 128
    #: per process; "auto" = the largest that fits (found by catching out-of-memory errors, up to
    #: AUTO_MICRO_BATCH_LIMIT on CUDA and AUTO_MICRO_BATCH_LIMIT_CPU on CPU)
    micro_batch: Annotated[PositiveInt | Literal["auto"], BeforeValidator(_count_or("auto"))] = 8
    grad_accum: PositiveInt = 1
    lr: PositiveFloat = 1e-3
    #: the cosine schedule's floor; at most lr (validated even when left at its default)
    min_lr: Annotated[NonNegativeFloat, Field(validate_default=True)] = 1e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: NonNegativeInt = 10
    weight_decay: NonNegativeFloat = 0.1
    #: 0 = no clipping
    grad_clip: NonNegativeFloat = 1.0
    #: a token count, or "chinchilla" (20 x the model's parameters)
    max_tokens: Annotated[PositiveInt | Literal["chinchilla"], BeforeValidator(_count_or("chinchilla"))] = 500_000
    log_every: PositiveInt = 10
    #: steps between validation losses over eval_tokens; 0 = no validation during training
    eval_every: NonNegativeInt = 50
    #: at least seq_len when eval_every > 0 (validated even when left at its default)
    eval_tokens: Annotated[PositiveInt, Field(validate_default=True)] = 32_768
    checkpoint_every: PositiveInt = 100
    keep_last: PositiveInt = 3
    seed: Int = 1337
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False

    @model_validator(mode="before")
    @classmethod
    def _book_recipe_fills_its_settings(cls, data: Any) -> Any:
        """`recipe: book` sets the keys of BOOK_RECIPE that are left out, before the fields are
        validated, so they are checked (min_lr <= lr) and dumped like any others."""
        if isinstance(data, dict) and data.get("recipe") == "book":
            return {**BOOK_RECIPE, **data}
        return data

    @field_validator(*BOOK_RECIPE)
    @classmethod
    def _book_recipe_settings_are_the_books(cls, v: Any, info: ValidationInfo) -> Any:
        """Under recipe book a key of BOOK_RECIPE given with another value is refused, never
        silently replaced (recipe is the first field, so it is in info.data)."""
        want = BOOK_RECIPE[str(info.field_name)]
        if info.data.get("recipe") == "book" and v != want:
            raise PydanticCustomError(
                "book_recipe_setting",
                "recipe book trains with {want}, not {value}: leave it out, or use recipe: ours",
                {"want": want, "value": v},
            )
        return v

    # Fields are validated in order, so `info.data` holds the earlier ones that were valid.
    @field_validator("min_lr")
    @classmethod
    def _min_lr_at_most_lr(cls, v: float, info: ValidationInfo) -> float:
        lr = info.data.get("lr")
        if lr is not None and v > lr:
            raise PydanticCustomError(
                "min_lr_above_lr",
                "{min_lr} is above lr ({lr}): the schedule decays from lr down to min_lr",
                {"min_lr": v, "lr": lr},
            )
        return v

    @field_validator("eval_tokens")
    @classmethod
    def _eval_tokens_hold_a_window(cls, v: int, info: ValidationInfo) -> int:
        seq_len, eval_every = info.data.get("seq_len"), info.data.get("eval_every")
        if seq_len is not None and eval_every and v < seq_len:
            raise PydanticCustomError(
                "eval_tokens_below_seq_len",
                "{eval_tokens} is below seq_len "
                "({seq_len}): validation needs at least one window (or set "
                "eval_every: 0)",
                {"eval_tokens": v, "seq_len": seq_len},
            )
        return v


def _no_empty_uri(value: Any) -> Any:
    return None if value == "" else value


class TrainConfigFile(TrainingSettings):
    """Every key a train config file (`python -m trainer.train CONFIG`) may hold."""

    #: a preset of trainer.model.PRESETS (checked by trainer.config, which has the model)
    model: str = "gpt2-tiny"
    #: GPTConfig fields over the preset, e.g. {n_layer: 2, tie_weights: true}
    model_overrides: dict[str, Any] = Field(default_factory=dict)
    #: the output folder of python -m trainer.prepare (required: trainer.config says so)
    data_dir: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: FLOP/s per device for MFU; None = look the GPU up (CPU: no MFU)
    peak_flops: PositiveFloat | None = None
    #: a file:// or s3:// store folder: rank 0 uploads every committed checkpoint there
    artifact_uri: Annotated[str | None, BeforeValidator(_no_empty_uri)] = None


_FIELD_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """`budget.max_usd` from a pydantic error location, leaving out the union-member tags
    pydantic adds (`training.max_tokens.constrained-int` names the field `training.max_tokens`)."""
    return ".".join(str(p) for p in loc if isinstance(p, int) or _FIELD_PART.fullmatch(str(p)))


def first_error(exc: ValidationError) -> tuple[str | None, str]:
    """The first error as (field path or None, one line `path: message`), the same line the
    service's API and CLI and the trainer's ConfigError show."""
    first = exc.errors()[0]
    field = field_path(first["loc"]) or None
    return field, f"{field}: {first['msg']}" if field else first["msg"]
