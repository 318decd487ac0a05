"""What one reconcile of one run works with: its lease, its provider, its nodes, and how it writes.

A step reads the run in a short transaction (`load_run`), talks to the provider and the nodes with
no transaction open, then writes through `RunContext.write()`, which is fenced by the lease token.
The run and instance objects a step reads are detached snapshots: changing them changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, selectinload, sessionmaker

from orchestrator.controller import lease
from orchestrator.controller.policy import NodeLost
from orchestrator.controller.tasks import TaskOutcome, TaskPool
from orchestrator.db.models import Instance, Run
from orchestrator.runs import add_event
from orchestrator.settings import Settings
from orchestrator.spec import RunSpec
from provision.base import Instance as ProviderInstance
from provision.base import InstanceStatus, Provider
from provision.node import Node
from provision.wheels import WheelCache

log = logging.getLogger("trainyard.controller")
#: seconds a provider's view of an instance is trusted before asking again
HANDLE_TTL_S = 30.0


def load_run(factory: sessionmaker[Session], run_id: str) -> Run | None:
    """A detached snapshot of the run with its instances (one short read transaction)."""
    with factory() as session:
        return session.get(Run, run_id, options=[selectinload(Run.instances)])


@dataclass
class NodeHandle:
    """An instance as the provider describes it, a session on it, and what bootstrap recorded."""

    instance: ProviderInstance
    node: Node
    #: the run directory and interpreter recorded on the instance row (set by bootstrap)
    row_workdir: str | None = None
    row_python: str | None = None
    #: the service's extra trainer environment (settings.node_env)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def workdir(self) -> str:
        # Bootstrap records where a run lives on a rented node; the local provider says it itself.
        return str(self.row_workdir or self.instance.extra.get("workdir") or f"trainyard/{self.instance.name}")

    @property
    def python(self) -> str:
        return str(self.row_python or self.instance.extra.get("python") or "python3")

    @property
    def env(self) -> dict[str, str]:
        env = {str(k): str(v) for k, v in (self.instance.extra.get("env") or {}).items()}
        return {**env, **self.extra_env}


@dataclass
class RunContext:
    run_id: str
    token: str
    settings: Settings
    factory: sessionmaker[Session]
    provider: Provider
    #: node sessions by provider instance id, kept by the worker across passes:
    #: (when the provider was last asked, its view of the instance, the session)
    handles: dict[str, tuple[float, ProviderInstance, Node]] = field(default_factory=dict)
    #: the worker's threads for blocking work (placement, bootstrap)
    tasks: TaskPool | None = None
    #: the trainer wheel, built once per source version for every node
    wheels: WheelCache | None = None
    #: failed attempts per node of a step that is retried a few times (kept across passes)
    attempts: dict[str, int] = field(default_factory=dict)
    #: the nodes' access to the artifact store: the current grant and where it was written
    #: (kept across passes; see storage.py)
    store_access: dict = field(default_factory=dict)
    #: an ended run's cleanup steps: tries and when each is due (kept across passes; cleanup.py)
    cleanup: dict = field(default_factory=dict)

    @contextmanager
    def write(self) -> Iterator[tuple[Session, Run]]:
        """A transaction fenced by our lease (raises LeaseLostError, writing nothing, if lost)."""
        with lease.fenced(self.factory, self.run_id, self.token, self.settings.lease_s) as pair:
            yield pair

    def fence(self) -> None:
        """Raise LeaseLostError unless we still hold the run's lease (and extend it). Called just
        before every side effect outside the database (a launch, a terminate request, a process
        started on a node): a worker that was paused or blocked past its lease, or a task that
        outlived its worker's hold on the run, stops there instead of acting for a run another
        worker now owns."""
        with self.write():
            pass

    def handle(self, row: Instance) -> NodeHandle:
        """A node session on an instance row. Raises NodeLost, naming the node and what the
        provider shows, when the instance is gone or unhealthy there."""
        pid = row.provider_instance_id
        if pid is None:
            raise NodeLost(f"node {row.rank} ({row.name}) was never launched")
        cached = self.handles.get(pid)
        # Re-asking the provider now and then notices an instance that went away (and keeps a
        # cloud API from being asked every second); the session itself is reused meanwhile.
        # The worker drops the cache after any node error, so a dead node is noticed at once.
        if cached is not None and time.monotonic() - cached[0] < HANDLE_TTL_S:
            inst, node = cached[1], cached[2]
        else:
            found = self.provider.get(pid)
            lost = lost_reason(row, found, self.provider.name)
            if lost or found is None:  # lost_reason names a missing instance too
                self.forget(pid)
                raise NodeLost(lost or f"node {row.rank} ({row.name}) is not at provider {self.provider.name}")
            inst = found
            node = cached[2] if cached is not None else self.provider.node(inst)
            self.handles[pid] = (time.monotonic(), inst, node)
        return NodeHandle(inst, node, row.workdir, row.python, dict(self.settings.node_env))

    def forget(self, provider_instance_id: str | None) -> None:
        """Drop (and disconnect) the session on an instance."""
        cached = self.handles.pop(provider_instance_id, None) if provider_instance_id else None
        if cached is not None:
            cached[2].close()

    def task(self, key: str, work: Callable[[threading.Event], Any], *, may_launch: bool = False) -> TaskOutcome:
        """Start or look at this run's background task `key` (see tasks.TaskPool.poll)."""
        if self.tasks is None:
            raise RuntimeError("this RunContext has no task pool (the worker gives one)")
        return self.tasks.poll(self.run_id, key, work, may_launch=may_launch)

    def event(self, kind: str, message: str) -> None:
        """Record a run event now (fenced; callable from a task's thread)."""
        with self.write() as (session, _run):
            add_event(session, self.run_id, kind, message)


def lost_reason(row: Instance, inst: ProviderInstance | None, provider: str) -> str | None:
    """Why the run cannot use this instance any more, or None while it is usable."""
    if inst is None:
        return f"node {row.rank} ({row.name}) no longer exists at provider {provider}"
    if inst.status.is_gone or inst.status in (InstanceStatus.unhealthy, InstanceStatus.terminating):
        return f"node {row.rank} ({row.name}) is {inst.status.value} at provider {provider}"
    return None


def spec_of(run: Run) -> RunSpec:
    return RunSpec.model_validate(run.spec)


def live_instances(run: Run) -> list[Instance]:
    return [i for i in run.instances if i.terminated_at is None]


def usable_instances(run: Run) -> list[Instance]:
    """The live instances the run still works on (not those asked to terminate: lost nodes,
    released workers)."""
    return [i for i in live_instances(run) if i.terminate_requested_at is None]


def node_handles(ctx: RunContext, run: Run) -> list[tuple[Instance, NodeHandle]]:
    """Every node the run still uses, in rank order (raises NodeLost naming one that is gone)."""
    pairs = [(row, ctx.handle(row)) for row in sorted(usable_instances(run), key=lambda r: r.rank)]
    if not pairs:
        raise NodeLost("the run has no live instance")
    return pairs
