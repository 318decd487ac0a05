"""In-memory stand-ins for a provider, its nodes and the worker's task threads, so each decision
of the controller's stages (orchestrator/controller/) has a unit test that takes milliseconds.

- `FakeNode`: a `provision.node.Node` whose files are a dict and whose detached processes are
  records with a settable running flag and exit code. Starting a process writes its pid file, as
  `Node.start_detached` does, so `commands.proc_state` sees it started. `run` answers the `tail -c`
  the controller reads logs with; any other command is recorded and prints nothing.
- `FakeProvider`: a `provision.base.Provider` with in-memory instances that are active at once
  (or after `boot_reads` reads), one instance type, and `needs_bootstrap` / `keeps_machines` settable. `fail(method, error)` makes
  a method raise; `lose(id)` makes an instance vanish or turn preempted.
- `SyncTasks`: a `TaskPool` stand-in whose work runs at once, on the caller's thread, so a
  stage's first poll already has the task's outcome.

Imported as `fakes` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.controller.tasks import TaskOutcome
from provision.base import Instance, InstanceStatus, InstanceType, Provider
from provision.node import Node, ProcessStatus


@dataclass
class FakeProc:
    """A detached process on a FakeNode: running, or ended with a code (None: killed)."""

    command: str
    pid: int
    running: bool = True
    exit_code: int | None = None


class FakeNode(Node):
    """A node held in memory. Paths are plain strings, exactly as the controller builds them."""

    def __init__(self, label: str = "fake-node"):
        super().__init__(runner=None, label=label)
        self.files: dict[str, str] = {}
        self.dirs: set[str] = set()
        #: detached processes by "<workdir>/<name>"
        self.procs: dict[str, FakeProc] = {}
        #: (name, command) of every start_detached, in order
        self.started: list[tuple[str, str]] = []
        #: names of the processes `stop` was called for, in order
        self.stopped: list[str] = []
        #: commands `run` did not know (recorded, printing nothing)
        self.commands: list[str] = []
        #: files written with owner-only permissions
        self.private: set[str] = set()
        #: when set, every operation raises it (an unreachable node)
        self.broken: Exception | None = None
        self.closed = 0
        self._next_pid = 4242

    # -- test helpers -----------------------------------------------------------------------------
    def write(self, path: str, text: str) -> None:
        self.files[path] = text

    def append(self, path: str, text: str) -> None:
        self.files[path] = self.files.get(path, "") + text

    def set_proc(
        self, workdir: str, name: str, *, running: bool = False, exit_code: int | None = None, command: str = ""
    ) -> FakeProc:
        """A process as if started earlier (its pid file written), running or ended."""
        proc = FakeProc(command, self._pid(), running=running, exit_code=None if running else exit_code)
        self.procs[_key(workdir, name)] = proc
        self.files[_key(workdir, f"{name}.pid")] = str(proc.pid)
        return proc

    def proc(self, name: str) -> FakeProc:
        """The one process called `name` (whatever its workdir)."""
        found = [p for key, p in self.procs.items() if key.rsplit("/", 1)[-1] == name]
        assert len(found) == 1, f"{self.label}: {len(found)} processes called {name!r}: {sorted(self.procs)}"
        return found[0]

    def finish(self, name: str, exit_code: int | None) -> None:
        """The process `name` ends with `exit_code` (None: killed, no exit code written)."""
        proc = self.proc(name)
        proc.running, proc.exit_code = False, exit_code

    def started_names(self) -> list[str]:
        return [name for name, _cmd in self.started]

    # -- Node -------------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.broken is not None:
            raise self.broken

    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def run(self, command: str, *, timeout: float | None = None, check: bool = True) -> str:
        self._check()
        words = shlex.split(command)
        # commands.log_tail and commands.failure_reason: tail -c N FILE 2>/dev/null
        if len(words) >= 4 and words[:2] == ["tail", "-c"] and words[2].isdigit():
            data = self.files.get(words[3], "").encode()
            return data[-int(words[2]) :].decode(errors="replace")
        self.commands.append(command)
        return ""

    def close(self) -> None:
        self.closed += 1

    def put(self, local_path: str | Path, remote_path: str) -> None:
        self._check()
        self.files[remote_path] = Path(local_path).read_text()

    def get(self, remote_path: str, local_path: str | Path) -> None:
        self._check()
        Path(local_path).write_text(self.files[remote_path])

    def mkdir(self, path: str) -> None:
        self._check()
        self.dirs.add(path.rstrip("/"))

    def exists(self, path: str) -> bool:
        self._check()
        p = path.rstrip("/")
        return p in self.files or p in self.dirs or any(f.startswith(p + "/") for f in self.files)

    def read_text(self, path: str) -> str | None:
        self._check()
        return self.files.get(path)

    def write_json(self, path: str, value: dict | list) -> None:
        self._check()
        self.files[path] = json.dumps(value, indent=2)

    def write_private(self, path: str, text: str) -> None:
        self._check()
        self.files[path] = text
        self.private.add(path)

    def start_detached(self, command: str, *, workdir: str, name: str = "train") -> int:
        self._check()
        proc = FakeProc(command, self._pid())
        self.procs[_key(workdir, name)] = proc
        self.files[_key(workdir, f"{name}.pid")] = str(proc.pid)
        self.started.append((name, command))
        return proc.pid

    def status(self, *, workdir: str, name: str = "train") -> ProcessStatus:
        self._check()
        proc = self.procs.get(_key(workdir, name))
        if proc is None or not proc.running:
            return ProcessStatus(running=False, exit_code=proc.exit_code if proc else None)
        return ProcessStatus(running=True, exit_code=None)

    def stop(self, *, workdir: str, name: str = "train", grace_s: int = 10) -> None:
        self._check()
        self.stopped.append(name)
        proc = self.procs.get(_key(workdir, name))
        if proc is not None and proc.running:
            proc.running, proc.exit_code = False, None  # its process group killed: no exit code

    def read_from(self, path: str, offset: int, max_bytes: int = 1 << 20) -> tuple[str, int]:
        self._check()
        data = self.files.get(path, "").encode()[offset : offset + max_bytes]
        cut = data.rfind(b"\n")
        if cut < 0:
            return "", offset
        return data[: cut + 1].decode(), offset + cut + 1


def _key(workdir: str, name: str) -> str:
    return "/".join([workdir.rstrip("/"), name])


class FakeProvider(Provider):
    """Instances in memory, active as soon as launched, on one instance type in one region."""

    name = "fake"
    INSTANCE_TYPE = "gpu_1x_fake"
    REGION = "here"

    def __init__(
        self,
        *,
        needs_bootstrap: bool = True,
        keeps_machines: bool = False,
        price_cents_per_hour: int = 120,
        capacity: bool = True,
        boot_reads: int = 0,
    ):
        self.needs_bootstrap = needs_bootstrap
        self.keeps_machines = keeps_machines
        self.price_cents_per_hour = price_cents_per_hour
        self.capacity = capacity
        #: how many `get`s show a new instance booting before it is active (0: active at launch)
        self.boot_reads = boot_reads
        self._booting: dict[str, int] = {}
        self.instances: dict[str, Instance] = {}
        self.nodes: dict[str, FakeNode] = {}
        #: names launched, in order
        self.launched: list[str] = []
        #: ids in every terminate call, in order
        self.terminate_calls: list[list[str]] = []
        #: method name -> the error it raises
        self.errors: dict[str, Exception] = {}

    # -- test helpers -----------------------------------------------------------------------------
    def fail(self, method: str, error: Exception | None) -> None:
        """Make `method` raise `error` from now on (None: work again)."""
        if error is None:
            self.errors.pop(method, None)
        else:
            self.errors[method] = error

    def lose(self, instance_id: str, status: InstanceStatus | None = None) -> None:
        """The instance is gone (status None: the provider no longer knows it) or in `status`."""
        if status is None:
            del self.instances[instance_id]
        else:
            self.instances[instance_id] = dataclasses.replace(self.instances[instance_id], status=status)

    def node_of(self, name: str) -> FakeNode:
        """The node of the instance called `name` (created on first use, kept after)."""
        inst = next(i for i in self.instances.values() if i.name == name)
        return self.node(inst)

    def _raise(self, method: str) -> None:
        if method in self.errors:
            raise self.errors[method]

    # -- Provider ---------------------------------------------------------------------------------
    def instance_types(self) -> list[InstanceType]:
        self._raise("instance_types")
        return [
            InstanceType(
                self.INSTANCE_TYPE,
                "a fake GPU machine",
                1,
                "1x fake",
                self.price_cents_per_hour,
                (self.REGION,) if self.capacity else (),
            )
        ]

    def launch(self, *, name: str, instance_type: str, region: str) -> Instance:
        self._raise("launch")
        n = len(self.launched) + 1
        # a provider without bootstrap says where a run lives and which Python runs it (as `local`)
        extra = {} if self.needs_bootstrap else {"workdir": f"/srv/runs/{name}", "python": "/usr/bin/python3"}
        inst = Instance(
            id=f"i-{n:04d}",
            name=name,
            instance_type=instance_type,
            region=region,
            status=InstanceStatus.booting if self.boot_reads else InstanceStatus.active,
            price_cents_per_hour=self.price_cents_per_hour,
            public_ip=f"203.0.113.{n}",
            private_ip=f"10.0.0.{n}",
            extra=extra,
        )
        self.instances[inst.id] = inst
        self._booting[inst.id] = self.boot_reads
        self.launched.append(name)
        return inst

    def get(self, instance_id: str) -> Instance | None:
        self._raise("get")
        inst = self.instances.get(instance_id)
        if inst is not None and inst.status == InstanceStatus.booting:
            if self._booting.get(instance_id, 0) <= 0:
                inst = self.instances[instance_id] = dataclasses.replace(inst, status=InstanceStatus.active)
            self._booting[instance_id] = self._booting.get(instance_id, 0) - 1
        return inst

    def list(self) -> list[Instance]:
        self._raise("list")
        return list(self.instances.values())

    def terminate(self, instance_ids: list[str]) -> None:
        self._raise("terminate")
        self.terminate_calls.append(list(instance_ids))
        for i in instance_ids:
            if i in self.instances:
                self.instances[i] = dataclasses.replace(self.instances[i], status=InstanceStatus.terminated)

    def node(self, instance: Instance) -> FakeNode:
        self._raise("node")
        return self.nodes.setdefault(instance.id, FakeNode(label=instance.name))


class SyncTasks:
    """A TaskPool whose work runs on the first poll, on the caller's thread (no threads, no waits).
    `cancelled` lists the runs whose tasks were cancelled (ending a run does that first)."""

    def __init__(self) -> None:
        self.polls: list[str] = []
        self.cancelled: list[str] = []
        self._cancel: dict[str, threading.Event] = {}

    def poll(
        self, run_id: str, key: str, work: Callable[[threading.Event], Any], *, may_launch: bool = False
    ) -> TaskOutcome:
        self.polls.append(key)
        try:
            value = work(self._cancel.setdefault(run_id, threading.Event()))
        except Exception as exc:  # noqa: BLE001 - the real pool hands any error back the same way
            return TaskOutcome(done=True, error=exc)
        return TaskOutcome(done=True, value=value)

    def cancel(self, run_id: str, *, wait_s: float = 0) -> None:
        self.cancelled.append(run_id)
        event = self._cancel.pop(run_id, None)
        if event is not None:
            event.set()

    def close(self) -> None:
        pass
