"""Blocking node and provider work (placing an instance, bootstrapping a node) on threads.

Placement may wait minutes for capacity and a bootstrap minutes for pip and data preparation. Done
inside a reconcile pass, either would hold up the worker's other runs and its lease renewals, and
a cancel would wait for it. So a step asks for such work by key ("place-0", "bootstrap-1"): the
first ask starts it on a thread, later asks see it running, and one ask gets its outcome (and
forgets it). The work itself is idempotent (placement finds an instance by name before
launching; bootstrap skips what its markers show done), so work lost with its worker is simply
started again by whoever holds the run next.

Ending a run cancels its tasks first: their sleeps raise `Cancelled`, and the worker waits for the
tasks that may still launch an instance (`may_launch`), so nothing is launched after the run has
ended and terminated what it had.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from orchestrator.controller.policy import Cancelled

log = logging.getLogger("trainyard.controller")

#: seconds a poll waits for a task to finish before answering "not done"
SETTLE_S = 0.25
#: seconds `cancel` waits for a task that may launch (one provider call, with its retries)
CANCEL_WAIT_S = 120.0


def sleeper(cancel: threading.Event) -> Callable[[float], None]:
    """A `time.sleep` for tasks that returns early, raising `Cancelled`, when the run ends."""

    def sleep(seconds: float) -> None:
        if cancel.wait(max(0.0, seconds)):
            raise Cancelled("the run ended")

    return sleep


@dataclass(frozen=True)
class TaskOutcome:
    """How a task ended: not yet (done False), with a value, or with an error."""

    done: bool
    value: Any = None
    error: BaseException | None = None


@dataclass
class _Task:
    future: Future
    may_launch: bool


class TaskPool:
    """Threads for every run a worker holds. Thread-safe."""

    def __init__(self, max_workers: int = 32):
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="trainyard-task")
        self._tasks: dict[tuple[str, str], _Task] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def poll(
        self, run_id: str, key: str, work: Callable[[threading.Event], Any], *, may_launch: bool = False
    ) -> TaskOutcome:
        """Start `work(cancel_event)` unless it runs; its outcome once it has ended (then forgotten).

        A task just started gets SETTLE_S to finish: work that is quick (placing and installing on
        the local provider are a few file operations) is then done in the same pass, not a
        reconcile interval later."""
        with self._lock:
            task = self._tasks.get((run_id, key))
            started = task is None
            if task is None:
                cancel = self._cancel.setdefault(run_id, threading.Event())
                task = self._tasks[(run_id, key)] = _Task(self._pool.submit(work, cancel), may_launch)
        if started:
            wait([task.future], timeout=SETTLE_S)
        with self._lock:
            if not task.future.done() or self._tasks.get((run_id, key)) is not task:
                return TaskOutcome(done=False)
            del self._tasks[(run_id, key)]
        error = task.future.exception()
        return TaskOutcome(done=True, value=None if error else task.future.result(), error=error)

    def cancel(self, run_id: str, *, wait_s: float = CANCEL_WAIT_S) -> None:
        """Tell the run's tasks to stop, and wait (up to `wait_s`) for those that may launch."""
        with self._lock:
            event = self._cancel.pop(run_id, None)
            tasks = {key: t for (rid, key), t in self._tasks.items() if rid == run_id}
            for key in tasks:
                del self._tasks[(run_id, key)]
        if event is not None:
            event.set()
        launching = [t.future for t in tasks.values() if t.may_launch]
        if launching and wait_s > 0:
            _done, late = wait(launching, timeout=wait_s)
            if late:
                # rare (each provider call has a timeout); what they launch now carries the
                # run's name and is recorded on the ended run, whose cleanup terminates it
                log.warning("run %s: %d placement task(s) did not stop within %.0f s", run_id, len(late), wait_s)

    def close(self) -> None:
        for run_id in list(self._cancel):
            self.cancel(run_id, wait_s=0)
        self._pool.shutdown(wait=False, cancel_futures=True)
