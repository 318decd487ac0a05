"""The door: what a NEW spec is checked against beyond its schema, before any row or node exists.

orchestrator.spec calls it for every spec that becomes a run (`validate_spec`, `parse_spec_yaml`,
the API's request body); a spec read back from the database is not checked again, so tightening a
limit never breaks the runs already made. Every check looks at the raw values (what JSON or YAML
gave), so a spec with a schema mistake AND a refused value is told about both at once.

Two kinds of check:
- the values themselves (`unsafe_values`): NaN and infinity anywhere (`lr: 1e999`), lone
  surrogates and NUL characters (no JSON encoder or PostgreSQL can hold them), integers beyond a
  database's 64 bits, strings past PATH_MAX, nesting and sizes no spec needs;
- the fields (`field_problems`): artifact_uri and evaluation.ift.data schemes, model.overrides
  against the trainer's GPTConfig (today's trainer would refuse them only after data preparation,
  on a rented node), seeds, timeouts, and, when the service's `Limits` are known, local paths
  confined to its roots and the sizes its settings allow.

The CLI checks the first kind and the settings-free fields; the service, which knows its settings,
checks everything (its request handler sets `current_limits`: orchestrator/api/limits.py).
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from orchestrator.settings import Settings
from trainer.architecture import GPTConfig, make_config
from trainer.artifacts import ArtifactError, split_uri
from trainer.errors import ConfigError

#: the largest integer a spec may hold anywhere: PostgreSQL's and SQLite's 64-bit INTEGER
INT64_MAX = 2**63 - 1
#: seeds: what every RNG the trainer seeds takes (numpy's is 32 bits)
SEED_MAX = 2**32 - 1
#: placement_timeout_s and budget.max_hours: a year, well inside what a timedelta holds
MAX_SECONDS = 366 * 24 * 3600
#: a spec's own schema nests 4 deep; overrides and lists add a little
MAX_DEPTH = 16
#: values in one spec, YAML aliases counted each time they are used
MAX_VALUES = 10_000
#: characters in any one string (PATH_MAX)
MAX_STRING = 4096
#: never readable by a run, whatever roots an operator configures
NEVER = ("/proc", "/sys", "/dev")
#: data.source values that are not paths (trainer.prepare)
BUILTIN_CORPUS = "builtin:corpus"

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    loc: Loc
    kind: str  # the error type in a 422 (`not_finite`, `path_not_allowed`, ...)
    message: str


@dataclass(frozen=True)
class Limits:
    """The service's limits for new specs, from its settings (TRAINYARD_DATA_ROOTS, _MAX_*)."""

    #: resolved folders a local path in a spec (data.source, evaluation.ift.data) may be under
    data_roots: tuple[str, ...]
    #: ... and a file:// artifact_uri (the data dir, and the data roots)
    artifact_roots: tuple[str, ...]
    #: resolved paths inside those roots that are never allowed: the runs' working directories
    #: (they hold each run's credentials file), the database, the SSH key and known hosts
    private: tuple[str, ...]
    max_nodes: int
    max_procs_per_node: int
    max_tokens: int
    max_size: int

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        data_dir = _resolve(str(s.data_dir))
        roots = tuple(_resolve(str(p)) for p in s.data_roots) or (data_dir,)
        private: list[Path | str | None] = [
            s.runs_dir,
            s.resolved_known_hosts_file,
            s.ssh_private_key_file,
            s.ssh_hosts_file,
        ]
        if s.resolved_database_url.startswith("sqlite:///"):
            private.append(s.resolved_database_url.removeprefix("sqlite:///"))
        return cls(
            data_roots=roots,
            artifact_roots=tuple(dict.fromkeys((data_dir, *roots))),
            private=tuple(_resolve(str(p)) for p in private if p),
            max_nodes=s.max_nodes,
            max_procs_per_node=s.max_procs_per_node,
            max_tokens=s.max_tokens,
            max_size=s.max_size,
        )


#: the limits of the service that is handling this request (orchestrator/api/limits.py sets them
#: per request); None where they are not known (the CLI: the service checks them when it submits)
current_limits: ContextVar[Limits | None] = ContextVar("trainyard_spec_limits", default=None)


# -- the values themselves ------------------------------------------------------------------------
def unsafe_values(data: Any) -> tuple[list[Problem], Any]:
    """Problems of the raw values anywhere in `data`, and a copy safe to validate and to echo in
    an error (a lone surrogate or NUL becomes U+FFFD, NaN and infinity their names). When the spec
    is too deep or too large the copy is None: it is not validated any further."""
    problems: list[Problem] = []
    count = 0

    def clean(value: Any, loc: Loc) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise _TooLarge(f"the spec holds more than {MAX_VALUES:,} values (YAML aliases counted each time used)")
        if len(loc) > MAX_DEPTH:
            raise _TooLarge(f"the spec nests more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                key = _safe_text(k) if isinstance(k, str) else k
                if key != k:
                    problems.append(Problem(loc, "bad_character", f"the key {key!r} {_BAD_TEXT}"))
                out[key] = clean(v, (*loc, key))
            return out
        if isinstance(value, (list, tuple)):
            return [clean(v, (*loc, i)) for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(Problem(loc, "not_finite", f"{value} is not a number a spec may hold (NaN and infinity)"))
            return str(value)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            problems.append(Problem(loc, "out_of_range", f"must be within ±{INT64_MAX} (64 bits)"))
            return value
        if isinstance(value, str):
            safe = _safe_text(value)
            if safe != value:
                problems.append(Problem(loc, "bad_character", _BAD_TEXT))
            if len(value) > MAX_STRING:
                problems.append(Problem(loc, "too_long", f"is longer than {MAX_STRING} characters"))
                return safe[:MAX_STRING]
            return safe
        return value

    try:
        return problems, clean(data, ())
    except _TooLarge as exc:
        return [Problem((), "too_large", str(exc))], None
    except RecursionError:
        return [Problem((), "too_large", f"the spec nests more than {MAX_DEPTH} levels deep")], None


class _TooLarge(Exception):
    pass


#: a lone surrogate (a paired one is one code point in a str) or NUL
_BAD_CHARACTERS = re.compile("[\ud800-\udfff\x00]")
_BAD_TEXT = "holds a lone surrogate or a NUL character (not valid text)"


def _safe_text(text: str) -> str:
    return _BAD_CHARACTERS.sub("\ufffd", text)


# -- the fields -----------------------------------------------------------------------------------
#: fields bounded by a Limits setting: (path, Limits attribute, the setting's name)
_SIZE_LIMITS: tuple[tuple[Loc, str], ...] = (
    (("compute", "nodes"), "max_nodes"),
    (("compute", "procs_per_node"), "max_procs_per_node"),
    (("training", "max_tokens"), "max_tokens"),
    (("training", "eval_tokens"), "max_tokens"),
    (("data", "max_tokens"), "max_tokens"),
    (("evaluation", "test_max_tokens"), "max_tokens"),
    (("training", "seq_len"), "max_size"),
    (("training", "micro_batch"), "max_size"),
    (("training", "grad_accum"), "max_size"),
    (("evaluation", "ift", "batch_size"), "max_size"),
    *((("model", "overrides", f.name), "max_size") for f in fields(GPTConfig) if f.type == "int"),
)
#: fields with a fixed range, whatever the settings: (path, least, most)
_FIXED_RANGES: tuple[tuple[Loc, float, float], ...] = (
    (("training", "seed"), 0, SEED_MAX),
    (("evaluation", "ift", "seed"), 0, SEED_MAX),
    (("compute", "placement_timeout_s"), 0, MAX_SECONDS),
    (("budget", "max_hours"), 0, MAX_SECONDS / 3600),
)


def field_problems(data: dict, limits: Limits | None) -> list[Problem]:
    """Problems of the spec's fields (`data`: the raw spec, made safe by `unsafe_values`); those
    that need the service's settings only when `limits` are given."""
    return [*_uri_problems(data, limits), *_override_problems(data), *_range_problems(data, limits)]


def _uri_problems(data: dict, limits: Limits | None) -> Iterator[Problem]:
    uri = _at(data, ("artifact_uri",))
    if isinstance(uri, str) and uri:
        try:
            scheme, _bucket, path = split_uri(uri)
        except ArtifactError as exc:
            yield Problem(("artifact_uri",), "uri_scheme", str(exc))
        else:
            if scheme == "file" and limits is not None:
                yield from _confined(("artifact_uri",), path, limits.artifact_roots, limits)
    source, fmt = _at(data, ("data", "source")), _at(data, ("data", "format"))
    if isinstance(source, str) and source != BUILTIN_CORPUS and not source.startswith("hf:") and fmt != "hf":
        loc: Loc = ("data", "source")
        if "://" in source or source.startswith("builtin:"):
            yield Problem(loc, "uri_scheme", f"{BUILTIN_CORPUS}, hf:NAME[:CONFIG] or an absolute path, not {source!r}")
        elif limits is not None:
            yield from _confined(loc, source, limits.data_roots, limits)
    ift = _at(data, ("evaluation", "ift", "data"))
    if isinstance(ift, str) and ift and not ift.startswith(("https://", "http://")):
        loc = ("evaluation", "ift", "data")
        if "://" in ift or ":" in ift.split("/", 1)[0]:
            yield Problem(loc, "uri_scheme", f"an http(s) URL or an absolute path, not {ift!r}")
        elif limits is not None:
            yield from _confined(loc, ift, limits.data_roots, limits)


def _confined(loc: Loc, path: str, roots: tuple[str, ...], limits: Limits) -> Iterator[Problem]:
    """A local path must be absolute and, symlinks and `..` resolved, under one of `roots`, never
    under /proc, /sys or /dev nor in one of the service's own private places."""
    if not posixpath.isabs(path):
        yield Problem(loc, "path_not_allowed", f"{path!r} is not an absolute path")
        return
    real = _resolve(path)
    # a folder is read (or written) whole: one that holds a private place is refused too
    private = any(_under(real, p) or _under(p, real) for p in (*NEVER, *limits.private))
    if private or not any(_under(real, r) for r in roots):
        where = ", ".join(roots)
        yield Problem(
            loc,
            "path_not_allowed",
            f"{path} is outside the folders runs may read and write ({where}; TRAINYARD_DATA_ROOTS)",
        )


def _override_problems(data: dict) -> Iterator[Problem]:
    """model.overrides checked by the trainer's own rule (trainer.architecture.make_config, torch-
    free): each key known and of its type, then the whole, then seq_len within the context."""
    overrides, preset = _at(data, ("model", "overrides")), _at(data, ("model", "preset"))
    if not isinstance(overrides, dict):
        return
    preset = preset if isinstance(preset, str) else "gpt2-tiny"
    good = {}
    for key, value in overrides.items():
        try:
            make_config(preset, {key: value})
        except ConfigError as exc:
            if "unknown model preset" in str(exc):
                return  # the schema names the preset
            if f"model_overrides.{key}" in str(exc):  # this key's own mistake, not the whole's
                yield Problem(("model", "overrides", key), "override", str(exc))
                continue
        good[key] = value
    try:
        cfg = make_config(preset, good)
    except ConfigError as exc:
        yield Problem(("model", "overrides"), "override", str(exc))
        return
    seq_len = _number(_at(data, ("training", "seq_len")))
    if seq_len is not None and seq_len > cfg.block_size:
        yield Problem(
            ("training", "seq_len"),
            "override",
            f"{_show(seq_len)} exceeds the model's context of {cfg.block_size} (set model.overrides.block_size)",
        )


def _range_problems(data: dict, limits: Limits | None) -> Iterator[Problem]:
    for loc, least, most in _FIXED_RANGES:
        value = _number(_at(data, loc))
        if value is not None and not least <= value <= most:
            yield Problem(loc, "out_of_range", f"must be between {_show(least)} and {_show(most)}")
    if limits is None:
        return
    for loc, attr in _SIZE_LIMITS:
        value, most = _number(_at(data, loc)), getattr(limits, attr)
        if value is not None and value > most:
            yield Problem(
                loc, "over_limit", f"{_show(value)} is over this service's limit of {most:,} (TRAINYARD_{attr.upper()})"
            )


# -- helpers --------------------------------------------------------------------------------------
def _at(data: Any, loc: Loc) -> Any:
    for part in loc:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _number(value: Any) -> float | None:
    """A raw value as the schema would read it as a number (YAML leaves `2e6` a string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return None
    return None


def _show(number: float) -> str:
    if math.isfinite(number) and float(number).is_integer() and abs(number) < 1e18:
        return f"{int(number):,}"
    return f"{number:g}"


def _resolve(path: str) -> str:
    return os.path.realpath(path)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
