"""One event: submit a fresh small run, wait for the moment, inject the fault, let it recover,
wait for convergence, measure (verdict.py), and leave the deployment as it was found.

How each state is reached (plan.py names them):

- a status (pending .. evaluating): the run's row is polled every 20 ms; the fault lands a random
  fraction of a second after the status is first seen, and `state_hit` says where the run really
  was at the signal (a run that went past the state is hit where it is, and says so);
- `launch window`: simulator fault `slow` on launch (4 s): the fault lands as soon as the
  simulator holds an instance named after the run, before its launch call has been answered;
- `no capacity`: simulator fault `no_capacity` from the submit; the fault lands once the owner
  has waited 1.5 s; capacity comes back only after another worker took the run over;
- `booting`: the simulator boots in 6 s (or the event's `boot_s`); the fault lands 0-2 s after
  the instance is recorded;
- `terminate window`: simulator fault `slow` on terminate (5 s): the fault lands as soon as one
  of the run's instances is terminating (the ledger has ended its billing), its answer still held;
- `ending` (local): as soon as the evaluation's eval.json is on disk.

Recovery: a killed process is started again (same data dir, same name) after a random 0.5-8 s
(so sometimes its restart reclaims the run, sometimes another worker took it first); a paused
one gets SIGCONT once another worker holds the run (plus 1-4 s), or after 3-10 s where there is no
other (local); a black-holed sshd gets SIGCONT once the lease moved (plus 2-5 s), at most
LEASE_S + 3 heartbeats + 15 s after.

An event's fixed timings (plan.Event `hit_after_s`, `recover_after_s`: the CI subset's) replace
the random draws above.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

from benchmarks.chaos.deployment import HEARTBEAT_S, LEASE_S, Deployment, LambdaFleet, LocalServe, reset_simulator
from benchmarks.chaos.plan import BLACKHOLE, KILL, PAUSE, Event
from benchmarks.chaos.verdict import Outcome, clean_up, converge, db_ended, measure, sim_instances
from orchestrator.db.models import Instance, Run, RunStatus
from orchestrator_helpers import lambda_spec, tiny_spec
from provision.simulator.sshd import descendants

T = TypeVar("T")
#: statuses in the order a run goes through them (recovering: back to training)
ORDER = {"pending": 0, "provisioning": 1, "bootstrapping": 2, "training": 3, "recovering": 3, "evaluating": 4}
#: how the simulator is set up for the states that need it
SLOW_LAUNCH_S = 4.0
SLOW_TERMINATE_S = 5.0
SLOW_BOOT_S = 6.0
#: how long a worker takes to count as dead, and a blocked pass to lose its lease
DEAD_AFTER_S = 3 * HEARTBEAT_S
CONVERGE_TIMEOUT_S = 240.0


class Missed(Exception):
    """The run never reached the state (it failed, or was never going to)."""


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.02) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Missed(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(poll_s)


class EventRunner:
    """Runs events on one deployment; `rng` draws every random moment (seeded by --seed)."""

    def __init__(self, deployment: Deployment, rng: random.Random, *, converge_timeout_s: float = CONVERGE_TIMEOUT_S):
        self.deployment = deployment
        self.rng = rng
        self.converge_timeout_s = converge_timeout_s
        self._stopped_pids: list[int] = []

    @property
    def fleet(self) -> LambdaFleet:
        assert isinstance(self.deployment, LambdaFleet)
        return self.deployment

    @property
    def is_lambda(self) -> bool:
        return isinstance(self.deployment, LambdaFleet)

    # -- one event -------------------------------------------------------------------------------
    def run(self, event: Event, index: int = 0) -> Outcome:
        out = Outcome(event)
        started = time.time()
        try:
            self.deployment.heal()
            if self.is_lambda:
                reset_simulator(self.fleet.sim)
                self._arm(event)
            out.run_id = self.deployment.submit(self._spec(event, index))
            self._reach(event, out.run_id)
            out.fault_at = fault_at = self._inject(event, out)
            out.converged, out.converge_s = converge(self.deployment, out.run_id, fault_at, self.converge_timeout_s)
            measure(self.deployment, out)
        except Missed as exc:
            out.error = f"state not reached: {exc}"
            self._measure_anyway(out)
        except Exception as exc:  # noqa: BLE001 - one event's harness failure is reported, the next runs
            out.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            out.evidence.append(traceback.format_exc(limit=6))
            self._measure_anyway(out)
        finally:
            out.notes.extend(self._leave_clean(out.run_id))
        out.notes.append(f"event took {time.time() - started:.0f} s")
        return out

    def _measure_anyway(self, out: Outcome) -> None:
        if out.run_id is not None:
            with contextlib.suppress(Exception):
                measure(self.deployment, out)

    def _spec(self, event: Event, index: int) -> dict:
        name = f"chaos-{index}-{event.state.replace(' ', '-')}"
        if event.scenario == "local":
            return tiny_spec(name)
        return lambda_spec(name, nodes=event.nodes, placement_timeout_s=180)

    def _draw(self, fixed: float | None, low: float, high: float) -> float:
        """The event's fixed timing, or else a random one in [low, high]."""
        return fixed if fixed is not None else self.rng.uniform(low, high)

    def _faults(self, method: str, body: dict | None = None) -> None:
        """The simulator's admin API for faults (/sim/v1/faults)."""
        r = httpx.request(method, self.fleet.sim.url + "/sim/v1/faults", json=body, timeout=10, trust_env=False)
        r.raise_for_status()

    def _arm(self, event: Event) -> None:
        """Set the simulator up for the state, before the run is submitted."""
        if event.state == "launch window":
            self._faults("POST", {"kind": "slow", "operation": "launch", "delay_s": SLOW_LAUNCH_S})
        elif event.state == "terminate window":
            self._faults("POST", {"kind": "slow", "operation": "terminate", "delay_s": SLOW_TERMINATE_S})
        elif event.state == "no capacity":
            self._faults("POST", {"kind": "no_capacity", "instance_type": "*", "region": "*"})
        elif event.state == "booting":
            cloud = self.fleet.sim.cloud
            with cloud.lock:  # no admin call sets it: a setting of the simulator's
                cloud.config.boot_s = event.boot_s or SLOW_BOOT_S

    # -- reaching the moment ---------------------------------------------------------------------
    def _reach(self, event: Event, run_id: str) -> None:
        state = event.state
        if state == "launch window":
            wait_for(lambda: sim_instances(self.fleet, run_id), 90, "an instance launched")
        elif state == "terminate window":
            wait_for(
                lambda: any(i.status in ("terminating", "terminated") for i in sim_instances(self.fleet, run_id)),
                300,
                "a terminate request",
            )
        elif state == "no capacity":
            wait_for(
                lambda: self._status_at_least(run_id, "provisioning") and self._run(run_id).lease_owner, 60, "a claim"
            )
            time.sleep(1.5)
        elif state == "booting":
            wait_for(lambda: self._recorded_booting(run_id), 90, "an instance recorded while booting")
            time.sleep(self._draw(event.hit_after_s, 0, 2))
        elif state == "ending":
            wait_for(lambda: self._evaluated(run_id), 300, "eval.json on disk", poll_s=0.05)
        else:
            wait_for(lambda: self._status_at_least(run_id, state), 300, f"status {state}")
            pause = {"pending": 0.0, "provisioning": 0.0, "bootstrapping": 1.0, "training": 1.5, "evaluating": 0.3}
            time.sleep(self._draw(event.hit_after_s, 0, pause.get(state, 0.0)))

    def _run(self, run_id: str) -> Run:
        return self.deployment.run(run_id)

    def _status_at_least(self, run_id: str, state: str) -> bool:
        run = self._run(run_id)
        if RunStatus(run.status).is_terminal:
            raise Missed(f"the run ended {run.status} ({run.status_reason}) before {state}")
        reached = ORDER[run.status] >= ORDER[state]
        return reached and not (state == "training" and run.status == "training" and run.step == 0)

    def _recorded_booting(self, run_id: str) -> bool:
        with self.deployment.db() as s:
            rows = s.query(Instance).filter(Instance.run_id == run_id, Instance.active_at.is_(None)).all()
        booting = {i.id for i in sim_instances(self.fleet, run_id) if i.status == "booting"}
        return any(r.provider_instance_id in booting for r in rows)

    def _evaluated(self, run_id: str) -> bool:
        assert isinstance(self.deployment, LocalServe)
        if RunStatus(self._run(run_id).status).is_terminal:
            raise Missed("the run ended before its evaluation was seen on disk")
        return any((self.deployment.runs_dir / f"ty-{run_id}-0").rglob("eval.json"))

    def _where(self, run_id: str) -> str:
        """Where the run is now, as the database and the provider show it."""
        run = self._run(run_id)
        where = run.status + (f", step {run.step}" if run.status == "training" else "")
        if self.is_lambda:
            insts = sorted(sim_instances(self.fleet, run_id), key=lambda i: i.name or "")
            where += "".join(f"; {(i.name or '').rsplit('-', 1)[-1]}:{i.status}" for i in insts)
        return where

    # -- the fault and the recovery --------------------------------------------------------------
    def _inject(self, event: Event, out: Outcome) -> float:
        run_id = out.run_id
        assert run_id is not None
        if event.fault == BLACKHOLE:
            return self._blackhole(event, out)
        owner = self._run(run_id).lease_owner
        if owner is None and self.is_lambda:
            owner = wait_for(lambda: self._run(run_id).lease_owner, 10, "a lease owner", poll_s=0.05)
        member = self.deployment.member_of(owner)
        if member is None:
            raise RuntimeError(f"the lease owner {owner!r} is no process of this deployment")
        out.state_hit = self._where(run_id)
        out.target = member.name
        if event.fault == KILL:
            member.kill9()
        elif event.fault == PAUSE:
            member.pause()
        fault_at = time.time()
        capacity_back = event.state == "no capacity"
        if event.fault == KILL:
            if capacity_back:
                self._lease_moved(run_id, member.name, DEAD_AFTER_S + LEASE_S + 10, out)
                self._capacity_back(out, fault_at)
                delay = self._draw(event.recover_after_s, 0, 2)
            else:
                delay = self._draw(event.recover_after_s, 0.5, 4.0 if event.scenario == "local" else 8.0)
            time.sleep(delay)
            self.deployment.restart(member)
            out.notes.append(f"{member.name} restarted {time.time() - fault_at:.1f} s after the kill")
        else:
            if event.scenario == "local":
                time.sleep(self._draw(event.recover_after_s, 3, 10))
            else:
                self._lease_moved(run_id, member.name, DEAD_AFTER_S + LEASE_S + 10, out)
                if capacity_back:
                    self._capacity_back(out, fault_at)
                    with contextlib.suppress(Missed):
                        wait_for(lambda: sim_instances(self.fleet, run_id), 15, "a launch by the new owner")
                    time.sleep(self._draw(event.recover_after_s, 0, 1))
                else:
                    time.sleep(self._draw(event.recover_after_s, 1, 4))
            member.resume()
            out.notes.append(f"{member.name} resumed {time.time() - fault_at:.1f} s after SIGSTOP")
        return fault_at

    def _lease_moved(self, run_id: str, owner: str, timeout_s: float, out: Outcome) -> None:
        started = time.time()

        def moved() -> str | None:
            now = self._run(run_id).lease_owner
            if now not in (None, owner):
                return now
            return "nobody (it ended)" if db_ended(self.deployment, run_id) else None

        try:
            to = wait_for(moved, timeout_s, "the lease moving", poll_s=0.1)
            out.takeover = to if to in self.deployment.members else None
            out.notes.append(f"lease to {to} after {time.time() - started:.1f} s")
        except Missed:
            out.notes.append(f"lease still {owner}'s after {timeout_s:.0f} s")

    def _capacity_back(self, out: Outcome, fault_at: float) -> None:
        self._faults("DELETE")
        out.notes.append(f"capacity back {time.time() - fault_at:.1f} s after the fault")

    def _blackhole(self, event: Event, out: Outcome) -> float:
        """Stop (SIGSTOP) the sshd of one of the run's nodes, and its sessions' sshd processes:
        to the controller, the node stops answering without the connection breaking."""
        run_id = out.run_id
        assert run_id is not None
        rank = self.rng.randrange(event.nodes)
        with self.deployment.db() as s:
            row = (
                s.query(Instance)
                .filter(Instance.run_id == run_id, Instance.rank == rank, Instance.terminated_at.is_(None))
                .first()
            )
            instance_id = row.provider_instance_id if row is not None else None
        machines = httpx.get(self.fleet.sim.url + "/sim/v1/machines", timeout=10, trust_env=False).json()
        sshd = next((m["sshd_pid"] for m in machines if m["id"] == instance_id), None)
        if sshd is None:
            raise Missed(f"node {rank} has no sshd to stop")
        pids = [sshd, *(p for p in descendants(sshd) if _comm(p).startswith("sshd"))]
        owner = self._run(run_id).lease_owner
        out.state_hit = self._where(run_id)
        out.target = f"node {rank} sshd ({len(pids)} processes; owner {owner})"
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
                self._stopped_pids.append(pid)
        fault_at = time.time()
        self._lease_moved(run_id, owner or "", LEASE_S + DEAD_AFTER_S + 15, out)
        time.sleep(self._draw(event.recover_after_s, 2, 5))
        self._continue_stopped()
        out.notes.append(f"node {rank} sshd resumed {time.time() - fault_at:.1f} s after SIGSTOP")
        return fault_at

    def _continue_stopped(self) -> None:
        for pid in self._stopped_pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        self._stopped_pids.clear()

    # -- afterwards ------------------------------------------------------------------------------
    def _leave_clean(self, run_id: str | None) -> list[str]:
        """Every process back and running, the simulator reset, the run ended and nothing of it
        left running (what the harness had to do is noted: a converged event needs nothing)."""
        notes = []
        self._continue_stopped()
        try:
            self.deployment.heal()
        except Exception as exc:  # noqa: BLE001 - noted; the next event's heal tries again
            notes.append(f"harness could not restart a process: {exc}")
        if self.is_lambda:
            reset_simulator(self.fleet.sim)
        if run_id is None:
            return notes
        if not db_ended(self.deployment, run_id):
            with contextlib.suppress(Exception):
                self.deployment.api.service.client.post(f"/runs/{run_id}/cancel")
                notes.append("harness cancelled the run (it had not ended)")
            with contextlib.suppress(Missed):
                wait_for(lambda: db_ended(self.deployment, run_id), 90, "the cancelled run's end", poll_s=0.5)
        notes.extend(clean_up(self.deployment, run_id))
        return notes


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
