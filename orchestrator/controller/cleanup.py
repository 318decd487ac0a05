"""Ending a run never wedges a worker: every cleanup step is contained, retried, and given up.

Ending a run (steps.end_run) takes its steps once each: looking for instances launched but not
recorded, terminating, measuring the throughput. A step that fails is an event on the run
(`attempt`); it never keeps the terminal status from being written, and what it left is done
here, by the ended run's cleanup.

An ended run is cleaned up step by step, on each pass of the worker that holds it (`clean_up`):

    terminate   what the run still has running (lifecycle.cleanup), until the provider confirms
    revoke      the nodes' access to the artifact store (storage.revoke_node_access)

A step that raises, or is not done yet, is tried again on a later pass after a backoff that
doubles from `cleanup_retry_base_s` up to `cleanup_retry_max_s` (a pass never sleeps: the
worker's other runs go on meanwhile). After `cleanup_attempts` tries the step is given up, with
an event on the run that says what was not cleaned up:

- an instance not confirmed terminated is marked `cleanup_gave_up_at` and left as it is: its
  state is unknown, so nothing destructive is done on a guess. The orphan sweep (orphans.py)
  takes it over: it asks the provider to terminate it each sweep and books it once it is gone.
  Only renting providers are swept; on `local` and `ssh` the event says to look at it by hand;
- store credentials not revoked expire by themselves (`artifact_grant_s`).

Then the run needs no worker (lease.claimable_run_ids skips given-up instances): the worker
releases its lease. An ended run being cleaned up takes no slot of `max_concurrent_runs`
(worker.py), so ended runs, however many, never hold up new ones.

The state of the steps (tries, when each is due) is the worker's, per run (RunContext.cleanup),
kept across passes; a worker that takes the run over begins again from the first try.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import select

from orchestrator.controller import lifecycle, storage
from orchestrator.controller.context import RunContext, log, spec_of
from orchestrator.controller.policy import one_line
from orchestrator.db.models import Instance, Run, utcnow
from orchestrator.errors import LeaseLostError, TrainyardError
from orchestrator.instances import RENTING
from orchestrator.runs import add_event
from orchestrator.settings import Settings
from provision.errors import ProvisionError
from trainer.artifacts import ArtifactError

T = TypeVar("T")
#: errors whose message says it all: logged without a traceback
_EXPECTED = (ProvisionError, ArtifactError, TrainyardError)


def attempt(run_id: str, what: str, fn: Callable[..., T], *args: object) -> tuple[T | None, str | None]:
    """(fn(*args), None), or (None, "`what` failed: why") when it raised anything but a lost
    lease (another worker owns the run: nothing more is done, so that propagates)."""
    try:
        return fn(*args), None
    except LeaseLostError:
        raise
    except Exception as exc:  # noqa: BLE001 - a cleanup step's failure is reported, never fatal
        log.warning("run %s: %s failed: %s", run_id, what, one_line(exc), exc_info=not isinstance(exc, _EXPECTED))
        return None, f"{what} failed: {one_line(exc)}"


@dataclass
class StepState:
    """One cleanup step of one run: tries so far, when it may be tried again, and whether it is
    over (done or given up)."""

    tries: int = 0
    due: float = 0.0  # time.monotonic()
    finished: bool = False


def backoff_s(settings: Settings, tries: int) -> float:
    """Seconds before try `tries + 1`: doubling from the base, capped."""
    return min(settings.cleanup_retry_max_s, settings.cleanup_retry_base_s * 2 ** max(0, tries - 1))


# -- the steps: each answers None when done, else why not (or raises) ------------------------------
def _terminate(ctx: RunContext, run: Run) -> str | None:
    return lifecycle.cleanup(ctx, run)


def _revoke(ctx: RunContext, run: Run) -> str | None:
    if run.artifact_uri is not None:  # null: it ended before its store was chosen, nothing granted
        storage.revoke_node_access(ctx, run, spec_of(run))
    return None


# -- giving up: say what is left, and leave it as it is ----------------------------------------------
def _leave_to_sweep(ctx: RunContext, run: Run, why: str) -> None:
    now = utcnow()
    with ctx.write() as (session, _fresh):
        rows = session.scalars(
            select(Instance).where(
                Instance.run_id == run.id, Instance.terminated_at.is_(None), Instance.cleanup_gave_up_at.is_(None)
            )
        ).all()
        if not rows:
            return
        for row in rows:
            row.cleanup_gave_up_at = now
        after = (
            "the orphan sweep terminates and books it"
            if ctx.provider.name in RENTING
            else f"provider {ctx.provider.name} is not swept: check it and stop it by hand"
        )
        add_event(
            session,
            run.id,
            "cleanup",
            f"cleanup gave up terminating {', '.join(r.name for r in rows)}: {why}; left as it is ({after})",
        )


def _revoke_given_up(ctx: RunContext, _run: Run, why: str) -> None:
    ctx.event(
        "cleanup",
        f"cleanup gave up revoking the nodes' store access: {why}; "
        f"their credentials expire by themselves within {ctx.settings.artifact_grant_s} s",
    )


Step = Callable[[RunContext, Run], "str | None"]
GiveUp = Callable[[RunContext, Run, str], None]
#: in order: the nodes' credentials are revoked once the nodes are gone (or given up)
STEPS: tuple[tuple[str, Step, GiveUp], ...] = (
    ("terminating the instances", _terminate, _leave_to_sweep),
    ("revoking the nodes' store access", _revoke, _revoke_given_up),
)


def clean_up(ctx: RunContext, run: Run) -> bool:
    """One pass of an ended run's cleanup. True when nothing is left for a worker to do."""
    for name, step, give_up in STEPS:
        state = ctx.cleanup.setdefault(name, StepState())
        if state.finished:
            continue
        if time.monotonic() < state.due:
            return False
        left, failed = attempt(run.id, name, step, ctx, run)
        why = failed or left
        if why is None:
            state.finished = True
            continue
        state.tries += 1
        if state.tries >= ctx.settings.cleanup_attempts:
            give_up(ctx, run, f"{why} (after {state.tries} tries)")
            state.finished = True
            continue
        state.due = time.monotonic() + backoff_s(ctx.settings, state.tries)
        return False
    return True


def give_up_all(ctx: RunContext, run: Run, why: str) -> None:
    """Give up every step not over yet (the worker's last resort for a run whose cleanup keeps
    failing outside its steps). Writes only: asks no provider."""
    for name, _step, give_up in STEPS:
        state = ctx.cleanup.setdefault(name, StepState())
        if not state.finished:
            give_up(ctx, run, why)
            state.finished = True
