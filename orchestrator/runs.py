"""Run operations shared by the API and the controller: create, find, cancel, record events.

The API only ever records what the user wants (a new run, a cancel request); the controller is
the only writer of a run's status and progress, under its lease.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.db.models import Instance, Run, RunEvent, RunStatus, utcnow
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.spec import RunSpec


def new_run_id() -> str:
    # 12 hex chars: short enough for instance names (ty-<run>-<rank>), 48 bits of randomness.
    return uuid.uuid4().hex[:12]


#: every instance trainyard launches has a name that starts so (`instance_name`); the orphan
#: sweep (controller/orphans.py) never touches an instance whose name does not
INSTANCE_PREFIX = "ty-"
_INSTANCE_NAME = re.compile(r"^ty-([A-Za-z0-9]+)-([0-9]+)(?:r[0-9]+)?$")


def instance_name(run_id: str, rank: int, replacement: int = 0) -> str:
    """Every cloud resource is named from the run, so any step can find what already exists.
    A node that replaces a lost one gets its own name (`ty-<run>-<rank>r<n>`): looking up the
    rank's first name would find the lost machine, not launch a new one."""
    return f"{INSTANCE_PREFIX}{run_id}-{rank}" + (f"r{replacement}" if replacement else "")


def run_id_of_instance(name: str) -> str | None:
    """The run an instance name (`instance_name`'s form) points to; None for any other name."""
    match = _INSTANCE_NAME.match(name)
    return match.group(1) if match else None


def rank_of_instance(name: str) -> int | None:
    """The node rank an instance name (`instance_name`'s form) is for; None for any other name."""
    match = _INSTANCE_NAME.match(name)
    return int(match.group(2)) if match else None


def next_instance_name(run_id: str, rank: int, rows: Iterable[Instance]) -> str:
    """The name of the next machine for `rank`, given every instance row the run has had."""
    return instance_name(run_id, rank, sum(1 for r in rows if r.rank == rank))


def add_event(
    session: Session,
    run_id: str,
    kind: str,
    message: str = "",
    *,
    from_status: str | None = None,
    to_status: str | None = None,
) -> RunEvent:
    event = RunEvent(
        run_id=run_id,
        kind=kind,
        message=message,
        from_status=from_status,
        to_status=to_status,
        time=utcnow(),
    )
    session.add(event)
    return event


def create_run(session: Session, spec: RunSpec, submitted_by: str | None = None) -> Run:
    """`submitted_by`: the caller's name (orchestrator.auth.Caller), recorded with the run."""
    run = Run(
        id=new_run_id(),
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        provider=spec.compute.provider,
        status=RunStatus.pending.value,
        created_at=utcnow(),
        updated_at=utcnow(),
        tokens_done=0,
        step=0,
        recoveries=0,
        metrics_offset=0,
        log_offset=0,
        cancel_requested=False,
        submitted_by=submitted_by,
    )
    session.add(run)
    session.flush()
    add_event(session, run.id, "status", "submitted", to_status=RunStatus.pending.value)
    return run


def get_run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"no run with id {run_id!r}")
    return run


def request_cancel(session: Session, run_id: str) -> Run:
    """Record that the user wants the run cancelled; the controller stops it and its nodes."""
    run = session.execute(select(Run).where(Run.id == run_id).with_for_update()).scalar_one_or_none()
    if run is None:
        raise NotFoundError(f"no run with id {run_id!r}")
    if RunStatus(run.status).is_terminal:
        raise ConflictError(f"run {run_id} already ended ({run.status}); nothing to cancel")
    if not run.cancel_requested:
        run.cancel_requested = True
        add_event(session, run.id, "cancel", "cancel requested by the user")
    return run
