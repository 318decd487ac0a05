"""What a stage of the lifecycle reports back to `steps.py`, which alone changes a run's status.

A stage (placement, bootstrapping, training, evaluation) looks at the provider and the nodes,
starts what is not started yet, and answers with one of these. It never ends a run itself:
`steps.py` maps the answer to the next status (its `TRANSITIONS` table says which are allowed)
and ends runs through `end_run`, so the nodes are always terminated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from orchestrator.db.models import Run

#: a write that goes into the transaction that changes the status (rows that belong with it)
Record = Callable[[Session, Run], None]


@dataclass(frozen=True)
class Waiting:
    """Not done yet (a process runs, a task works, capacity is awaited): look again next pass."""


@dataclass(frozen=True)
class Done:
    """The stage is complete: the run moves to its next status; `record` is written with it."""

    message: str
    record: Record | None = None


@dataclass(frozen=True)
class Failed:
    """The stage cannot complete: the run fails for `reason` (one line naming what failed)."""

    reason: str


@dataclass(frozen=True)
class Lost:
    """A node the run needs is gone: a training run recovers on a new one, others fail."""

    reason: str


@dataclass(frozen=True)
class Killed:
    """A trainer ended without an exit code: restart the trainers from the last checkpoint."""

    reason: str


Outcome = Waiting | Done | Failed | Lost | Killed
WAITING = Waiting()
