"""The deployments the faults hit: real processes, started as users start them, by worker name.

- `start_simulator`: the Lambda simulator in this process, configured as the tests' `lsim`
  fixture (real sshd machines on 127.0.0.x, a 20 s billing minute), so the harness reads its
  ledger and instances directly and can change its boot time between events.
- databases: orchestrator_helpers' `create_pg_database` / `drop_pg_database`, as the tests make theirs.
- `LambdaFleet`: `trainyard serve` (API + controller) and N `trainyard worker` processes on one
  database, each named by TRAINYARD_WORKER_ID: a run's lease owner (`runs.lease_owner`) is then
  the name of the process to kill or pause. They run as on one machine, sharing the serve's data
  dir and so its file of pinned SSH host keys. (With a data dir each, a key one process pinned
  goes stale when another terminates that machine: only the terminating process forgets the pin,
  and the simulator gives the address to the next machine at once, which the stale process then
  refuses as a man-in-the-middle.)
- `LocalServe`: `trainyard serve` alone, on SQLite, with the local provider; restarted on the same
  data dir, so under the same (default) worker name.

Every process is a `Service` (tests/orchestrator/orchestrator_helpers.py) wrapped in a `Member`
that knows whether it is running, paused or dead. Leases and heartbeats are short
(`LEASE_S`, `HEARTBEAT_S`) so that an event takes a minute, not ten.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.migrations import upgrade
from orchestrator.db.models import Run, WorkerRecord
from orchestrator_helpers import (
    KEY_NAME,
    LAMBDA_MINUTE_S,
    Service,
    sessions,
    start_lambda_service,
)
from provision.lambda_cloud.client import LambdaClient
from provision.simulator import SimulatorServer
from simhelpers import API_KEY, FAST_RETRY, free_ssh_port, sim_config

#: the controller's settings in every process: a pass blocked 20 s loses its runs (the lease
#: start_lambda_service gives); a process silent for 3 heartbeats (6 s) counts as dead and its
#: runs are taken at once
LEASE_S = 20.0
HEARTBEAT_S = 2.0
HEARTBEAT = {"TRAINYARD_WORKER_HEARTBEAT_S": f"{HEARTBEAT_S:g}"}
#: what the simulator boots in (the `lsim` fixture's), and its billing minute
BOOT_S = 0.5


# -- the simulator and the database ----------------------------------------------------------------
def start_simulator(state_dir: Path) -> SimulatorServer:
    """The Lambda simulator in a thread of this process, as the tests' `lsim` fixture makes it."""
    from provision.simulator.sshd import find_sshd

    sshd = find_sshd()
    if sshd is None:
        raise SystemExit("OpenSSH's sshd is needed for the simulated machines (scripts/install-sshd.sh)")
    port = free_ssh_port()
    if port is None:
        raise SystemExit("no free port for the simulated machines' sshd")
    config = sim_config(
        state_dir, sshd, port, boot_s=BOOT_S, terminate_s=0.3, linger_s=600, minute_s=LAMBDA_MINUTE_S, quota=8
    )
    return SimulatorServer(config).start()


def reset_simulator(sim: SimulatorServer) -> None:
    """No fault waiting, the boot time back, and the catalog's capacity less what is running."""
    cloud = sim.cloud
    with cloud.lock:
        cloud.faults.rate_limited = 0
        cloud.faults.server_errors.clear()
        cloud.faults.no_capacity.clear()
        cloud.slow.clear()
        cloud.config.boot_s = BOOT_S
        base = {(t, r): n for t, item in cloud.catalog.instance_types.items() for r, n in item.capacity.items()}
        used: dict[tuple[str, str], int] = {}
        for inst in cloud.instances.values():
            if inst.status in ("booting", "active", "unhealthy", "terminating"):
                used[(inst.instance_type, inst.region)] = used.get((inst.instance_type, inst.region), 0) + 1
        cloud.capacity = {k: n - used.get(k, 0) for k, n in base.items()}


def forget_key(sim: SimulatorServer) -> None:
    """Remove the fleet's SSH key name from the simulator, so a new fleet can register its own."""
    with LambdaClient(API_KEY, base_url=sim.url, retry=FAST_RETRY, launch_interval_s=0) as client:
        for key in client.list_ssh_keys():
            if key.name == KEY_NAME:
                client.delete_ssh_key(key.id)


# -- the processes ---------------------------------------------------------------------------------
@dataclass
class Member:
    """One process of a deployment (`serve` or `worker`) and what the harness did to it."""

    name: str
    service: Service
    is_api: bool
    paused: bool = False
    #: what happened to it, in order ("kill -9", "SIGSTOP", ...), for the report
    history: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        proc = self.service.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def kill9(self) -> None:
        self.history.append("kill -9")
        if self.alive:
            self.service.kill9()  # SIGKILL ends a stopped process too
        self.paused = False

    def pause(self) -> None:
        self.history.append("SIGSTOP")
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        pid = self.pid
        if self.paused and pid is not None:
            self.history.append("SIGCONT")
            os.kill(pid, signal.SIGCONT)
        self.paused = False


class Deployment:
    """Processes on one database, named as the runs' leases name them. `heal()` before an event:
    every process running and none paused."""

    def __init__(self, db_url: str, members: list[Member]):
        self.db_url = db_url
        self.members = {m.name: m for m in members}
        self.db: sessionmaker[Session] = sessions(db_url)

    @property
    def api(self) -> Member:
        return next(m for m in self.members.values() if m.is_api)

    def start(self, member: Member, timeout_s: float = 60) -> None:
        """Start (or restart) a process and wait until its worker has registered its name."""
        member.service.start(wait=member.is_api)
        proc = member.service.proc
        assert proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{member.name} exited at start:\n{member.service.log_tail(30)}")
            with self.db() as s:
                if s.scalar(select(WorkerRecord.id).where(WorkerRecord.pid == proc.pid)) is not None:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{member.name} did not register within {timeout_s} s")
            time.sleep(0.1)

    def restart(self, member: Member) -> None:
        member.history.append("restarted")
        self.start(member)

    def heal(self) -> None:
        for member in self.members.values():
            member.resume()
            if not member.alive:
                self.restart(member)

    def member_of(self, owner: str | None) -> Member | None:
        """The process a lease owner's name is; a deployment of one process: that one, whatever
        its (default) name, and also while no lease is taken yet."""
        if owner in self.members:
            return self.members[owner]
        return next(iter(self.members.values())) if len(self.members) == 1 else None

    def submit(self, spec: dict) -> str:
        return self.api.service.submit(spec)

    def run(self, run_id: str) -> Run:
        with self.db() as s:
            run = s.get(Run, run_id)
            assert run is not None, run_id
            s.expunge(run)
            return run

    def close(self) -> None:
        for member in self.members.values():
            with contextlib.suppress(OSError):
                member.resume()
            member.service.close()
        self.db.kw["bind"].dispose()


class LambdaFleet(Deployment):
    """`trainyard serve` named "serve" and `trainyard worker`s named "worker-1".. on one database,
    renting from the simulator `sim`."""

    def __init__(self, sim: SimulatorServer, root: Path, db_url: str, *, workers: int = 2):
        forget_key(sim)  # a fleet before this one on the same simulator registered the name
        serve = start_lambda_service(sim, root / "serve", db_url, TRAINYARD_WORKER_ID="serve", **HEARTBEAT)
        assert serve.env["TRAINYARD_LEASE_S"] == f"{LEASE_S:g}"
        self.sim = sim
        # the workers' settings are the serve's, but for what makes each process itself
        own = {"TRAINYARD_DATA_DIR", "TRAINYARD_HOST", "TRAINYARD_PORT", "TRAINYARD_API_URL", "TRAINYARD_WORKER_ID"}
        shared = {k: v for k, v in serve.env.items() if k.startswith("TRAINYARD_") and k not in own}
        members = [Member("serve", serve, is_api=True)]
        for n in range(1, workers + 1):
            name = f"worker-{n}"
            # one machine: the serve's data dir, so one file of pinned host keys (see the module doc)
            env = {**shared, "TRAINYARD_WORKER_ID": name}
            service = Service(serve.data_dir, db_url, command=("worker",), **env)
            members.append(Member(name, service, is_api=False))
        super().__init__(db_url, members)
        try:
            for member in members[1:]:
                self.start(member)
        except BaseException:
            self.close()
            raise

    @property
    def serve(self) -> Service:
        return self.api.service


class LocalServe(Deployment):
    """`trainyard serve` alone on the SQLite file in its data dir, with the local provider."""

    def __init__(self, root: Path):
        data_dir = root / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        db_url = f"sqlite:///{data_dir / 'trainyard.db'}"
        upgrade(db_url)
        serve = Service(data_dir, db_url, command=("serve",), TRAINYARD_LEASE_S=f"{LEASE_S:g}", **HEARTBEAT)
        super().__init__(db_url, [Member("serve", serve, is_api=True)])
        try:
            self.start(self.api)
        except BaseException:
            self.close()
            raise

    @property
    def runs_dir(self) -> Path:
        return self.api.service.runs_dir
