"""The train config: a YAML or JSON file, strictly checked, plus `--set key=value` overrides.

Every key is a field of trainer.schema.TrainConfigFile, the pydantic model whose training fields
the run spec's `training:` section shares (one set of defaults and rules for both). An unknown
key is an error that names it (with the closest known key), so a typo never silently falls back
to a default; a bad value is a ConfigError `field: message`, the line the service shows for the
same value in a run spec. `max_tokens` is a token count or "chinchilla" (20 x the model's
parameters); `micro_batch` is a count or "auto" (the largest that fits, found by catching
out-of-memory errors, on CUDA or CPU). `artifact_uri` (null, or a `file:///abs/path` /
`s3://bucket/prefix` store folder) makes rank 0 upload every committed checkpoint to `<artifact_uri>/<checkpoint
folder name>` in the background (trainer.upload).

This module adds what needs the model's architecture (trainer.architecture): the preset exists,
`model_overrides` fit GPTConfig, `seq_len` fits the model's context, and the chinchilla budget.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trainer.architecture import CHINCHILLA_TOKENS_PER_PARAM, PRESETS, GPTConfig, count_params, make_config
from trainer.artifacts import ArtifactError, split_uri
from trainer.errors import ConfigError
from trainer.schema import TrainConfigFile, first_error

#: every key a train config may hold
KEYS = tuple(TrainConfigFile.model_fields)


class TrainConfig:
    """A checked train config: the TrainConfigFile fields as read-only attributes (cfg.lr), plus
    the model it describes. A wrapper rather than a subclass: pydantic reserves `model_config`."""

    values: TrainConfigFile

    def __init__(self, values: TrainConfigFile | None = None, **fields: Any):
        """TrainConfig(TrainConfigFile(...)) or TrainConfig(key=value, ...) (validated; a bad value
        raises pydantic's ValidationError: use from_dict for a ConfigError)."""
        self.__dict__["values"] = values if values is not None else TrainConfigFile(**fields)

    def __getattr__(self, name: str) -> Any:  # only for names the instance lacks: the keys
        if name == "values" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.values, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a TrainConfig is read-only (set {name} in the file or with --set)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainConfig) and self.values == other.values

    def __repr__(self) -> str:
        return f"TrainConfig({self.values!r})"

    def model_config(self) -> GPTConfig:
        return make_config(self.values.model, self.values.model_overrides)

    def target_tokens(self) -> int:
        if self.values.max_tokens == "chinchilla":
            return CHINCHILLA_TOKENS_PER_PARAM * count_params(self.model_config())
        return int(self.values.max_tokens)

    def to_dict(self) -> dict[str, Any]:
        return self.values.model_dump()


def _unknown(key: str, known: list[str] | tuple[str, ...], where: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {where}{key!r}{hint}")


def from_dict(raw: Any) -> TrainConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of keys to values, got {type(raw).__name__}")
    for key in raw:
        if key not in KEYS:
            raise _unknown(str(key), KEYS)
    try:
        cfg = TrainConfig(TrainConfigFile.model_validate(raw))
    except ValidationError as exc:
        raise ConfigError(first_error(exc)[1]) from None
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """The checks the schema cannot make without the model (and torch)."""
    if cfg.model not in PRESETS:
        raise ConfigError(f"model: unknown preset {cfg.model!r}; choose one of {', '.join(PRESETS)}")
    if not cfg.data_dir:
        raise ConfigError("data_dir is required (the output folder of python -m trainer.prepare)")
    if cfg.artifact_uri is not None:
        try:
            split_uri(cfg.artifact_uri)
        except ArtifactError as e:
            raise ConfigError(f"artifact_uri: {e}") from None
    mcfg = cfg.model_config()  # checks model_overrides keys and types
    if cfg.seq_len > mcfg.block_size:
        raise ConfigError(
            f"seq_len {cfg.seq_len} exceeds the model's context of {mcfg.block_size} (set model_overrides.block_size)"
        )


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    return key.strip().split("."), value


def load(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML/JSON config file, apply `key=value` overrides (dotted keys reach into dicts)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = p.read_text()
        try:
            raw = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"config file {path} does not parse: {e}".splitlines()[0]) from None
        raw = raw if raw is not None else {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    for item in overrides:
        keys, value = _parse_override(item)
        if keys[0] not in KEYS:
            raise _unknown(keys[0], KEYS, "in --set ")
        target = raw
        for k in keys[:-1]:
            target = target.setdefault(k, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item}: {k} is not a mapping")
        target[keys[-1]] = value
    return from_dict(raw)
