"""The GPU table (gpus.json): dense bf16 peak, memory and the source of each figure, per GPU.

One table for the trainer's MFU (trainer.metrics.peak_flops, by torch's device name) and for the
service's plans (orchestrator.planning, by a provider's GPU description). Torch-free, so the
service can import it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("gpus.json")


@dataclass(frozen=True)
class GPU:
    name: str
    #: dense bf16 tensor peak, FLOP/s (the fp16 figure for GPUs without bf16; see `bf16`)
    peak_bf16_flops: float
    memory_gb: float
    bf16: bool
    source: str
    patterns: tuple[str, ...]


@cache
def gpus() -> tuple[GPU, ...]:
    """Every GPU of the table, in match order."""
    rows = json.loads(TABLE.read_text())["gpus"]
    return tuple(
        GPU(
            name=r["name"],
            peak_bf16_flops=float(r["peak_bf16_flops"]),
            memory_gb=float(r["memory_gb"]),
            bf16=bool(r["bf16"]),
            source=r["source"],
            patterns=tuple(r["patterns"]),
        )
        for r in rows
    )


def gpu_for(description: str) -> GPU | None:
    """The table's GPU for a provider's description ("H100 (80 GB SXM5)") or a torch device name
    ("NVIDIA A100-SXM4-40GB"); None when none matches (a CPU, an unknown GPU)."""
    for gpu in gpus():
        if any(re.search(p, description, re.IGNORECASE) for p in gpu.patterns):
            return gpu
    return None
