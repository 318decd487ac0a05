"""The train config: a YAML or JSON file, strictly checked, plus `--set key=value` overrides.

Every key is a field of TrainConfig below; an unknown key is an error that names it (with the
closest known key), so a typo never silently falls back to a default. `max_tokens` is a token
count or "chinchilla" (20 x the model's parameters); `micro_batch` is a count or "auto" (the
largest that fits, found on CUDA by catching out-of-memory errors). `artifact_uri` (null, or a
`file:///abs/path` / `s3://bucket/prefix` store folder) makes rank 0 upload every committed
checkpoint to `<artifact_uri>/<checkpoint folder name>` in the background (trainer.upload).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from trainer.artifacts import ArtifactError, split_uri
from trainer.errors import ConfigError
from trainer.model import PRESETS, GPTConfig, count_params, make_config

CHINCHILLA_TOKENS_PER_PARAM = 20


@dataclass
class TrainConfig:
    model: str = "gpt2-tiny"
    model_overrides: dict = field(default_factory=dict)
    data_dir: str = ""
    seq_len: int = 256
    micro_batch: Any = 8  # int, or "auto"
    grad_accum: int = 1
    lr: float = 4.0e-4
    min_lr: float = 4.0e-5
    schedule: str = "cosine"
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_tokens: Any = 2_000_000  # int, or "chinchilla"
    log_every: int = 10
    eval_every: int = 50
    eval_tokens: int = 65536
    checkpoint_every: int = 100
    keep_last: int = 3
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    peak_flops: Any = None  # FLOP/s per device for MFU; None = look the GPU up (CPU: no MFU)
    artifact_uri: Any = None  # str (file:// or s3:// store folder) or None: upload checkpoints there

    def model_config(self) -> GPTConfig:
        return make_config(self.model, self.model_overrides)

    def target_tokens(self) -> int:
        if self.max_tokens == "chinchilla":
            return CHINCHILLA_TOKENS_PER_PARAM * count_params(self.model_config())
        return int(self.max_tokens)

    def to_dict(self) -> dict:
        return asdict(self)


_CHOICES = {
    "schedule": ("cosine", "constant"),
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("auto", "bf16", "fp32"),
}
_POSITIVE = ("seq_len", "grad_accum", "log_every", "keep_last", "checkpoint_every")
_NON_NEGATIVE = ("warmup_steps", "weight_decay", "grad_clip", "eval_every", "eval_tokens",
                 "lr", "min_lr")


def _coerce(name: str, kind: str, value: Any) -> Any:
    bad = ConfigError(f"{name} must be {kind}, got {value!r}")
    if kind == "int":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 2e6 in YAML/JSON arrives as a float
        if isinstance(value, str):
            try:
                return int(float(value.replace("_", "")))
            except ValueError:
                raise bad from None
        if not isinstance(value, int):
            raise bad
        return value
    if kind == "float":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):  # YAML 1.1 reads 4e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad
        return value
    if kind == "dict":
        if not isinstance(value, dict):
            raise bad
        return value
    return value


def _unknown(key: str, known: list[str], where: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {where}{key!r}{hint}")


def from_dict(raw: dict) -> TrainConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of keys to values, got {type(raw).__name__}")
    kinds = {f.name: f.type for f in fields(TrainConfig)}
    values = {}
    for key, value in raw.items():
        if key not in kinds:
            raise _unknown(key, list(kinds))
        kind = kinds[key]
        if key == "micro_batch" and value == "auto":
            values[key] = value
        elif key == "max_tokens" and value == "chinchilla":
            values[key] = value
        elif key in ("micro_batch", "max_tokens"):
            values[key] = _coerce_int_named(key, value)
        elif key == "peak_flops":
            values[key] = None if value is None else _coerce(key, "float", value)
        elif key == "artifact_uri":
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"artifact_uri must be a file:// or s3:// URI or null, got {value!r}")
            values[key] = value or None
        else:
            values[key] = _coerce(key, kind, value)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def _coerce_int_named(key: str, value: Any) -> int:
    special = "auto" if key == "micro_batch" else "chinchilla"
    try:
        return _coerce(key, "int", value)
    except ConfigError:
        raise ConfigError(f'{key} must be a positive int or "{special}", got {value!r}') from None


def validate(cfg: TrainConfig) -> None:
    if cfg.model not in PRESETS:
        raise ConfigError(f"model: unknown preset {cfg.model!r}; choose one of {', '.join(PRESETS)}")
    if not cfg.data_dir:
        raise ConfigError("data_dir is required (the output folder of python -m trainer.prepare)")
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {getattr(cfg, key)!r}")
    for key in _POSITIVE:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    for key in _NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must not be negative, got {getattr(cfg, key)}")
    if cfg.micro_batch != "auto" and cfg.micro_batch <= 0:
        raise ConfigError(f"micro_batch must be positive, got {cfg.micro_batch}")
    if cfg.max_tokens != "chinchilla" and cfg.max_tokens <= 0:
        raise ConfigError(f"max_tokens must be positive, got {cfg.max_tokens}")
    if cfg.eval_every > 0 and cfg.eval_tokens < cfg.seq_len:
        raise ConfigError(f"eval_tokens ({cfg.eval_tokens}) must be at least seq_len ({cfg.seq_len}) "
                          f"when eval_every > 0")
    if cfg.min_lr > cfg.lr:
        raise ConfigError(f"min_lr ({cfg.min_lr}) must not exceed lr ({cfg.lr})")
    if cfg.artifact_uri is not None:
        try:
            split_uri(cfg.artifact_uri)
        except ArtifactError as e:
            raise ConfigError(f"artifact_uri: {e}") from None
    mcfg = cfg.model_config()  # checks model_overrides keys and types
    if cfg.seq_len > mcfg.block_size:
        raise ConfigError(f"seq_len {cfg.seq_len} exceeds the model's context of {mcfg.block_size} "
                          f"(set model_overrides.block_size)")


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    return key.strip().split("."), value


def load(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML/JSON config file, apply `key=value` overrides (dotted keys reach into dicts)."""
    raw: dict = {}
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
    known = [f.name for f in fields(TrainConfig)]
    for item in overrides:
        keys, value = _parse_override(item)
        if keys[0] not in known:
            raise _unknown(keys[0], known, "in --set ")
        target = raw
        for k in keys[:-1]:
            target = target.setdefault(k, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item}: {k} is not a mapping")
        target[keys[-1]] = value
    return from_dict(raw)
