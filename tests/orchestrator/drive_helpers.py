"""Driving a Worker in a test: one reconcile pass at a time until the run reaches a state."""

from __future__ import annotations

import time

from orchestrator.controller import Worker
from orchestrator.db.models import Run, RunStatus


def run_of(factory, run_id: str) -> Run:
    with factory() as s:
        return s.get(Run, run_id)


def drive(worker: Worker, factory, run_id: str, until, timeout: float = 60.0) -> Run:
    """Reconcile until `until(run)` holds; AssertionError naming the run's state after `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        worker.reconcile_once()
        run = run_of(factory, run_id)
        if until(run):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} is still {run.status} ({run.status_reason}) after {timeout}s")


def ended(run: Run) -> bool:
    """The run is over and no worker holds it (its instances are confirmed terminated)."""
    return RunStatus(run.status).is_terminal and run.lease_token is None
