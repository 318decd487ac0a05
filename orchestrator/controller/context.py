"""What one reconcile of one run works with: its lease, its provider, its nodes, and how it writes.

A step reads the run in a short transaction (`load_run`), talks to the provider and the nodes with
no transaction open, then writes through `RunContext.write()`, which is fenced by the lease token.
The run and instance objects a step reads are detached snapshots: changing them changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy.orm import Session, selectinload, sessionmaker

from orchestrator.controller import lease
from orchestrator.db.models import Instance, Run, RunStatus, utcnow
from orchestrator.runs import add_event
from orchestrator.settings import Settings
from orchestrator.spec import RunSpec
from provision.base import Instance as ProviderInstance
from provision.base import Provider
from provision.node import Node

log = logging.getLogger("trainyard.controller")
#: seconds a provider's view of an instance is trusted before asking again
HANDLE_TTL_S = 30.0


def aware(t: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes for timezone-aware columns; they were stored as UTC.
    if t is None or t.tzinfo is not None:
        return t
    return t.replace(tzinfo=timezone.utc)


def load_run(factory: sessionmaker[Session], run_id: str) -> Run | None:
    """A detached snapshot of the run with its instances (one short read transaction)."""
    with factory() as session:
        return session.get(Run, run_id, options=[selectinload(Run.instances)])


@dataclass
class NodeHandle:
    """An instance as the provider describes it, and a session on it."""

    instance: ProviderInstance
    node: Node

    @property
    def workdir(self) -> str:
        # Providers say where a run lives on their nodes; a relative path is under the login's home.
        return str(self.instance.extra.get("workdir") or f"trainyard/{self.instance.name}")

    @property
    def python(self) -> str:
        return str(self.instance.extra.get("python") or "python3")

    @property
    def env(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.instance.extra.get("env") or {}).items()}


@dataclass
class RunContext:
    run_id: str
    token: str
    settings: Settings
    factory: sessionmaker[Session]
    provider: Provider
    #: node sessions by provider instance id, kept by the worker across passes: (time, handle)
    handles: dict[str, tuple[float, NodeHandle]] = field(default_factory=dict)

    @contextmanager
    def write(self) -> Iterator[tuple[Session, Run]]:
        """A transaction fenced by our lease (raises LeaseLostError, writing nothing, if lost)."""
        with lease.fenced(self.factory, self.run_id, self.token, self.settings.lease_s) as pair:
            yield pair

    def handle(self, row: Instance) -> NodeHandle | None:
        """A node session on an instance row, or None when the provider no longer has it."""
        pid = row.provider_instance_id
        if pid is None:
            return None
        cached = self.handles.get(pid)
        # Re-asking the provider now and then notices an instance that went away (and keeps a
        # cloud API from being asked every second); the session itself is reused meanwhile.
        if cached is not None and time.monotonic() - cached[0] < HANDLE_TTL_S:
            return cached[1]
        inst = self.provider.get(pid)
        if inst is None or inst.status.is_gone:
            self.handles.pop(pid, None)
            return None
        node = cached[1].node if cached is not None else self.provider.node(inst)
        handle = NodeHandle(inst, node)
        self.handles[pid] = (time.monotonic(), handle)
        return handle

    def forget(self, provider_instance_id: str | None) -> None:
        if provider_instance_id is not None:
            self.handles.pop(provider_instance_id, None)


def spec_of(run: Run) -> RunSpec:
    return RunSpec.model_validate(run.spec)


def live_instances(run: Run) -> list[Instance]:
    return [i for i in run.instances if i.terminated_at is None]


def set_status(session: Session, run: Run, to: RunStatus, message: str = "",
               *, reason: str | None = None) -> None:
    """Move the run to `to` and record the change (from, to, why) as an event."""
    frm = run.status
    now = utcnow()
    run.status = to.value
    run.updated_at = now
    if reason is not None:
        run.status_reason = reason
    if to == RunStatus.provisioning and run.started_at is None:
        run.started_at = now
    if to.is_terminal and run.finished_at is None:
        run.finished_at = now
    add_event(session, run.id, "status", reason or message, from_status=frm, to_status=to.value)
    log.info("run %s: %s -> %s%s", run.id, frm, to.value, f" ({reason or message})" if reason or message else "")
