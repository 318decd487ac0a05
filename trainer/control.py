"""The service's request to stop early: a control file `STOP` in the run directory.

The service writes `RUN_DIR/STOP` (a JSON object `{"reason": "...", "time": unix_s}`; any other
content is read as the reason) when finishing later would cross the run's budget. Rank 0 looks
for it after every step and every rank learns the answer through one all-reduce, so all ranks
stop after the same step; the trainer then checkpoints that step, waits for its upload, logs a
`stopped` line and writes DONE with `"stopped": true` (docs/trainer-contract.md). The trainer
never removes STOP: a trainer restarted while it is there stops again after one step.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from trainer.runtime import all_sum

STOP = "STOP"
#: the reason when STOP gives none
DEFAULT_REASON = "asked to stop (RUN_DIR/STOP)"


def stop_asked(run_dir: Path, master: bool, device: torch.device) -> bool:
    """Whether rank 0 sees RUN_DIR/STOP, the same answer on every rank. Collective under
    torchrun: every rank must call it at the same step."""
    seen = master and (run_dir / STOP).exists()
    if not dist.is_initialized():
        return seen
    return all_sum([1.0 if seen else 0.0], device)[0] > 0


def stop_reason(run_dir: Path) -> str:
    """Why the service asked (the STOP file's reason), in one line."""
    try:
        text = (run_dir / STOP).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return DEFAULT_REASON
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    reason = value.get("reason") if isinstance(value, dict) else value
    line = " ".join(str(reason or "").split())[:500]
    return line or DEFAULT_REASON
