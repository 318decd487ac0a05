"""Takeover without waiting out a lease (issue 14, item 5; controller/identity.py): a worker
restarted under its name takes its runs back at once, each under a new token that fences out the
old process; a worker whose heartbeat stops loses its runs once the heartbeat expires, long before
the lease would; and no two live workers share a name or hold one run.

The runs here are on the Lambda simulator with no capacity anywhere: a worker holds such a run
(it waits for capacity) without starting anything, as long as the test likes.
"""

from __future__ import annotations

import socket
import threading
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from fleet_helpers import KEY_NAME, lambda_settings
from orchestrator.controller import Worker, lease
from orchestrator.db.models import Run, RunEvent, WorkerRecord, aware, utcnow
from orchestrator.db.session import transaction
from orchestrator.errors import ConflictError, LeaseLostError
from orchestrator.settings import Settings
from orchestrator_helpers import LAMBDA_MINUTE_S, Service, lambda_spec, run_of, submit_run

#: far longer than any takeover here may take: a takeover that waited for it fails the test
LEASE_S = 120


@pytest.fixture(scope="module")
def no_capacity(lsim):
    """The simulator with no capacity for any type in any region, for this module."""
    faults = lsim.url + "/sim/v1/faults"
    r = httpx.post(faults, json={"kind": "no_capacity", "instance_type": "*", "region": "*"}, timeout=10)
    assert r.status_code == 200, r.text
    yield lsim
    httpx.delete(faults, timeout=10)


def _held_run(factory) -> str:
    spec = lambda_spec("held", nodes=1, placement_timeout_s=3600)
    return submit_run(factory, **{k: v for k, v in spec.items() if k != "name"})


def _wait_for(factory, run_id: str, until, timeout_s: float, what: str) -> Run:
    deadline = utcnow() + timedelta(seconds=timeout_s)
    while utcnow() < deadline:
        run = run_of(factory, run_id)
        if until(run):
            return run
        threading.Event().wait(0.1)
    raise AssertionError(f"run {run_id}: {what} did not happen within {timeout_s} s")


def _took_the_run(factory, run_id: str) -> list[tuple[str, object]]:
    """(worker name, time) of every "worker X took the run" event, oldest first."""
    with factory() as s:
        rows = s.execute(
            select(RunEvent.message, RunEvent.time).where(RunEvent.run_id == run_id, RunEvent.kind == "worker")
        )
        return [(message.split()[1], aware(time)) for message, time in rows]


def test_a_restarted_worker_takes_its_run_back_at_once_and_fences_the_old_token(
    db_url, factory, no_capacity, key_file, tmp_path
):
    run_id = _held_run(factory)
    worker = Service(
        tmp_path / "data",
        db_url,
        command=("worker",),
        TRAINYARD_LEASE_S=str(LEASE_S),
        TRAINYARD_WORKER_HEARTBEAT_S=str(LEASE_S),  # its heartbeat outlives the test as well
        TRAINYARD_LAMBDA_API_KEY=no_capacity.cloud.config.api_key.get_secret_value(),
        TRAINYARD_LAMBDA_API_URL=no_capacity.url,
        TRAINYARD_LAMBDA_SSH_KEY_NAME=KEY_NAME,
        TRAINYARD_SSH_PRIVATE_KEY_FILE=str(key_file),
        TRAINYARD_LAMBDA_LAUNCH_INTERVAL_S="0",
        TRAINYARD_BILLING_MINUTE_S=str(LAMBDA_MINUTE_S),
        TRAINYARD_PLACEMENT_POLL_S="0.5",
        TRAINYARD_ORPHAN_SWEEP_INTERVAL_S="0",
    )
    try:
        worker.start(wait=False)
        before = _wait_for(
            factory, run_id, lambda r: r.lease_token is not None and _took_the_run(factory, run_id), 60, "the claim"
        )
        assert before.lease_owner == f"{socket.gethostname()}-0"  # the default name on this data dir

        worker.kill9()  # its lease has ~LEASE_S to go, its heartbeat ~3 LEASE_S
        expires = aware(run_of(factory, run_id).lease_expires_at)
        worker.start(wait=False)
        after = _wait_for(
            factory,
            run_id,
            # its claim, and then its "took the run" event (written just after)
            lambda r: r.lease_token not in (None, before.lease_token) and len(_took_the_run(factory, run_id)) == 2,
            (expires - utcnow()).total_seconds(),
            "the restarted worker's claim, before the old lease ran out,",
        )
    finally:
        worker.close()
    assert after.lease_owner == before.lease_owner
    assert [name for name, _t in _took_the_run(factory, run_id)] == [before.lease_owner] * 2

    # whatever the killed process left running is fenced out: its token writes nothing
    assert not lease.renew(factory, run_id, before.lease_token, LEASE_S)
    with pytest.raises(LeaseLostError), lease.fenced(factory, run_id, before.lease_token, LEASE_S) as (s, _run):
        s.execute(update(Run).where(Run.id == run_id).values(status_reason="written by the old process"))
    assert run_of(factory, run_id).status_reason is None


def test_a_worker_whose_heartbeat_stops_loses_its_run_when_the_heartbeat_expires(
    db_url, factory, no_capacity, key_file, tmp_path
):
    run_id = _held_run(factory)

    def worker(name: str) -> Worker:
        settings = lambda_settings(
            no_capacity, db_url, tmp_path / name, key_file, worker_id=name, lease_s=LEASE_S, worker_heartbeat_s=0.3
        )
        return Worker(settings, factory)

    a, b = worker("worker-a"), worker("worker-b")
    try:
        _wait_for(factory, run_id, lambda r: a.reconcile_once() or r.lease_owner == "worker-a", 30, "a's claim")
        # a stops beating (its passes, the only beats here, stop: a dead or paused process)
        with factory() as s:
            a_dead_at = aware(s.get(WorkerRecord, "worker-a").expires_at)
        lease_until = aware(run_of(factory, run_id).lease_expires_at)
        _wait_for(factory, run_id, lambda r: b.reconcile_once() or r.lease_owner == "worker-b", 30, "b's takeover")
        taken_at = _took_the_run(factory, run_id)[-1]
        assert taken_at[0] == "worker-b"
        assert a_dead_at <= taken_at[1] < lease_until - timedelta(seconds=LEASE_S / 2)

        # a comes back (a paused process resumed): its lease is gone, it drops the run
        a.reconcile_once()
        assert a.held_runs == [] and b.held_runs == [run_id]
        assert run_of(factory, run_id).lease_owner == "worker-b"
    finally:
        a.close()
        b.close()


def test_two_live_workers_never_share_a_name(db_url, factory, tmp_path):
    def settings(data_dir: str, name: str | None) -> Settings:
        return Settings(data_dir=tmp_path / data_dir, database_url=db_url, worker_id=name)

    first = Worker(settings("here", "worker-x"), factory)
    defaults = [Worker(settings("here", None), factory) for _ in range(2)]
    try:
        with pytest.raises(ConflictError, match="already running on this data dir"):
            Worker(settings("here", "worker-x"), factory)
        with pytest.raises(ConflictError, match=r"already running \(pid \d+ on .*, last heartbeat"):
            Worker(settings("elsewhere", "worker-x"), factory)  # another host or data dir
        host = socket.gethostname()
        assert [w.owner for w in defaults] == [f"{host}-0", f"{host}-1"]
    finally:
        for w in (first, *defaults):
            w.close()
    # a clean stop gives the name up: the next process takes it at once
    Worker(settings("elsewhere", "worker-x"), factory).close()


def test_racing_workers_split_a_dead_workers_runs_and_never_share_one(factory):
    runs = [_held_run(factory) for _ in range(6)]
    now = utcnow()
    with transaction(factory) as s:
        s.add(WorkerRecord(id="ghost", token="t", home="gone:/", pid=1, expires_at=now + timedelta(seconds=30)))
        for run_id in runs:
            s.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(lease_owner="ghost", lease_token="ghost-" + run_id, lease_expires_at=now + timedelta(hours=1))
            )
    assert lease.claimable_run_ids(factory, 10) == []  # its heartbeat is fresh: its runs are its own
    assert lease.acquire(factory, runs[0], "a", LEASE_S) is None

    with transaction(factory) as s:  # its heartbeat expires
        s.execute(update(WorkerRecord).values(expires_at=now - timedelta(seconds=1)))
    assert sorted(lease.claimable_run_ids(factory, 10)) == sorted(runs)
    won: dict[str, list[str]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def take(owner: str) -> None:
        start.wait()
        won[owner] = [run_id for run_id in runs if lease.acquire(factory, run_id, owner, LEASE_S)]

    threads = [threading.Thread(target=take, args=(owner,)) for owner in won]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(won["a"] + won["b"]) == sorted(runs)  # each run exactly once
    for owner, taken in won.items():
        assert all(run_of(factory, run_id).lease_owner == owner for run_id in taken)
