"""The controller's one error policy: what an exception means for the run it happened to.

Every place that catches an error while driving a run (a reconcile step in the worker, a
placement or bootstrap task on its thread) asks `classify` and acts on the answer, so the same
error is treated the same way wherever it surfaces:

    RETRY       the state is unknown or the condition passes by itself (a node or the provider
                not answering, capacity gone, the task cancelled): do nothing destructive and look
                again next pass; never counted, the budget bounds the cost
    COUNT       something failed that may or may not fail again (a command on a node, a bug):
                counted, and the run fails once the count reaches its limit
    RECOVER     a node the run needs is gone: a training run recovers on a new node; in any
                other state the run fails
    FAIL        retrying cannot help (no capacity until the deadline, a changed host key, a
                request the provider calls invalid, a quota, an API key the provider refuses):
                fail the run now
    LEASE_LOST  another worker owns the run now: stop acting on it, end nothing

`one_line` turns any exception into the one line a run's reason or an event shows.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.controller.outcomes import WAITING, Failed, Lost, Outcome
from orchestrator.errors import LeaseLostError, TrainyardError
from provision.errors import (
    HostKeyMismatch,
    InvalidCredentials,
    InvalidRequest,
    PlacementFailed,
    ProvisionError,
    QuotaExceeded,
)

if TYPE_CHECKING:  # pragma: no cover - the context imports this module
    from orchestrator.controller.context import RunContext

log = logging.getLogger("trainyard.controller")
#: longest reason stored on a run or shown in an event
MAX_REASON_CHARS = 1000


class Action(enum.Enum):
    RETRY = "retry"
    COUNT = "count"
    RECOVER = "recover"
    FAIL = "fail"
    LEASE_LOST = "lease_lost"


class NodeLost(Exception):
    """An instance the run needs is gone or broken at the provider."""


class Cancelled(Exception):
    """The run a task works for has ended; the task stops at its next wait."""


#: errors that say so themselves: retrying the same thing cannot succeed (a refused API key is
#: refused again, every call, until an operator changes it)
_HOPELESS = (PlacementFailed, HostKeyMismatch, InvalidRequest, QuotaExceeded, InvalidCredentials)


def classify(error: BaseException) -> Action:
    if isinstance(error, LeaseLostError):
        return Action.LEASE_LOST
    if isinstance(error, NodeLost):
        return Action.RECOVER
    if isinstance(error, _HOPELESS):
        return Action.FAIL
    if isinstance(error, Cancelled) or (isinstance(error, ProvisionError) and error.retryable):
        return Action.RETRY
    return Action.COUNT


def one_line(error: BaseException | str, limit: int = MAX_REASON_CHARS) -> str:
    """The first non-blank line of the error's message (its type's name when it has none),
    cut to `limit` characters. Errors of our own trees carry their meaning in the message;
    anything else (a bug) is named by its type too."""
    text = error if isinstance(error, str) else str(error)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not isinstance(error, str):
        ours = isinstance(error, (ProvisionError, TrainyardError, NodeLost, Cancelled))
        if not line:
            line = type(error).__name__
        elif not ours:
            line = f"{type(error).__name__}: {line}"
    return line[:limit]


#: failed attempts of one task (a node's placement or bootstrap) with COUNT errors before the run fails
MAX_TASK_ATTEMPTS = 3
#: errors whose message already names the node or what was tried
_SELF_EXPLAINING = (PlacementFailed, HostKeyMismatch, NodeLost)


def task_failure(ctx: RunContext, what: str, error: BaseException) -> Outcome:
    """The outcome of a task (placing or bootstrapping one node, `what`) that raised `error`."""
    action = classify(error)
    if action is Action.LEASE_LOST:
        raise error  # another worker has the run now: end nothing
    if action is Action.RETRY:
        log.warning("run %s: %s: %s; trying again", ctx.run_id, what, one_line(error))
        return WAITING
    line = one_line(error) if isinstance(error, _SELF_EXPLAINING) else f"{what} failed: {one_line(error)}"
    if action is Action.RECOVER:
        return Lost(line)
    if action is Action.FAIL:
        return Failed(line)
    if not isinstance(error, ProvisionError):
        log.error("run %s: %s failed", ctx.run_id, what, exc_info=error)
    tries = ctx.attempts[what] = ctx.attempts.get(what, 0) + 1
    if tries >= MAX_TASK_ATTEMPTS:
        return Failed(f"{line} (attempt {tries} of {MAX_TASK_ATTEMPTS})")
    ctx.event("info", f"{line} (attempt {tries} of {MAX_TASK_ATTEMPTS}); trying again")
    return WAITING


def run_task(
    ctx: RunContext, key: str, what: str, work: Callable[[threading.Event], Any], *, may_launch: bool = False
) -> tuple[Any, Outcome | None]:
    """Start or look at the run's task `key` (doing `what`): (its value, None) once it succeeded,
    else (None, the outcome so far: Waiting while it works or will be retried, Failed or Lost)."""
    out = ctx.task(key, work, may_launch=may_launch)
    if not out.done:
        return None, WAITING
    if out.error is not None:
        return None, task_failure(ctx, what, out.error)
    return out.value, None
