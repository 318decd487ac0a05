"""A run's model shape: what makes two runs' throughput comparable on one instance type.

Throughput records (orchestrator.planning.records) and plans (orchestrator.planning.plan) match by
`Shape.key`. The precision is the one the spec asks for (`training.dtype`: auto, bf16, fp32), not
the one the trainer resolved it to, so a spec finds the records of specs written like it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from orchestrator.spec import RunSpec


@dataclass(frozen=True)
class Shape:
    preset: str
    seq_len: int
    precision: str
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        """A stable hash of the four parts (overrides in key order)."""
        raw = json.dumps([self.preset, self.overrides, self.seq_len, self.precision], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def describe(self) -> str:
        extra = f" {json.dumps(self.overrides, sort_keys=True)}" if self.overrides else ""
        return f"{self.preset}{extra} seq {self.seq_len} {self.precision}"


def shape_of(spec: RunSpec) -> Shape:
    return Shape(
        preset=spec.model.preset,
        seq_len=spec.training.seq_len,
        precision=spec.training.dtype,
        overrides=dict(spec.model.overrides),
    )
