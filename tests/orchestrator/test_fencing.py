"""Exactly once and billed to the cent on the Lambda simulator (issue 14), with workers in this
process, so a test decides when each one acts:

- a worker whose placement task outlived its hold on the run (its main thread stopped, as in a
  SIGSTOP, while another worker took over) launches nothing when capacity comes back: every
  launch is fenced by a lease check and a look for the name just before the request;
- the end of a run terminates and books every instance named for it, recorded or not;
- an instance that turned active while no worker watched is billed from its last sighting
  booting, never below the bill: a run cancelled just after its node turned active pays the
  minute the provider bills (it was booked 0 minutes).

Cost is compared with the simulator's ledger to the cent.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from sqlalchemy import select

from fleet_helpers import lambda_settings, launch, wait_status
from orchestrator.controller import Worker
from orchestrator.db.models import CostEntry, Instance, aware
from orchestrator.db.session import transaction
from orchestrator.runs import instance_name, request_cancel
from orchestrator_helpers import drive, ended, lambda_spec, submit_run

ANY = ("*", "*")
#: how long worker A's placement thread sleeps between looks at capacity: B takes over meanwhile
PAUSE_S = 6.0


def _worker(lsim, factory, folder, key_file, name: str, **over) -> Worker:
    url = str(factory.kw["bind"].url)
    return Worker(lambda_settings(lsim, url, folder / name, key_file, worker_id=name, **over), factory)


def _named_for(lsim, run_id: str) -> list:
    with lsim.cloud.lock:
        return [i for i in lsim.cloud.instances.values() if (i.name or "").startswith(f"ty-{run_id}-")]


def _cancel_and_end(worker: Worker, factory, run_id: str) -> None:
    with transaction(factory) as s:
        request_cancel(s, run_id)
    drive(worker, factory, run_id, ended, timeout=60)


def _assert_all_terminated_and_billed_to_the_cent(lsim, factory, run_id: str) -> None:
    """Every instance named for the run is terminated, recorded, booked once, and the run's booked
    cost equals the simulator's ledger for them."""
    named = _named_for(lsim, run_id)
    assert named and all(i.status == "terminated" for i in named), [(i.name, i.status) for i in named]
    with factory() as s:
        rows = {r.provider_instance_id: r for r in s.scalars(select(Instance).where(Instance.run_id == run_id))}
        entries = {e.instance_id: e for e in s.scalars(select(CostEntry).where(CostEntry.run_id == run_id))}
    assert {i.id for i in named} == set(rows), "an instance named for the run is not recorded"
    assert all(r.id in entries and entries[r.id].kind == "instance" for r in rows.values())
    ledger = {e["instance_id"]: e for e in lsim.cloud.ledger.snapshot(time.time())["entries"]}
    for pid, row in rows.items():
        booked, billed = entries[row.id], ledger.get(pid)
        billed_minutes = billed["billed_minutes"] if billed else 0
        assert (booked.quantity, round(Decimal(str(booked.cents)), 2)) == (
            billed_minutes,
            round(Decimal(billed["cost_cents"]), 2) if billed else Decimal("0.00"),
        ), f"{row.name}: booked {booked.quantity} minutes, the provider bills {billed_minutes}"


def test_a_worker_that_lost_the_run_while_waiting_for_capacity_launches_nothing(
    lsim, sim_factory, tmp_path, key_file, sim_reset
):
    """Worker A waits for capacity; its passes stop (SIGSTOP) while its placement thread sleeps
    between two looks at capacity; B takes the run over; capacity comes back. A's thread wakes,
    not knowing, and must not launch a second ty-<run>-0 (it did, unrecorded, and it billed for
    50 minutes: nothing checked the lease between its look at capacity and its launch)."""
    with sim_reset.lock:
        sim_reset.faults.no_capacity.add(ANY)
    fast = dict(lease_s=2, worker_heartbeat_s=0.5)
    a = _worker(lsim, sim_factory, tmp_path, key_file, "worker-a", placement_poll_s=PAUSE_S, **fast)
    b = _worker(lsim, sim_factory, tmp_path, key_file, "worker-b", placement_poll_s=0.1, **fast)
    run_id = submit_run(sim_factory, **lambda_spec("fenced", nodes=1, placement_timeout_s=300))
    try:
        drive(a, sim_factory, run_id, lambda r: r.status == "provisioning", timeout=30)
        a_wakes = time.monotonic() + PAUSE_S  # A's thread looked at capacity, found none, sleeps
        taken = drive(b, sim_factory, run_id, lambda r: r.lease_owner == "worker-b", timeout=30)
        assert taken.status == "provisioning" and time.monotonic() < a_wakes - 1, "B took over too late"
        with sim_reset.lock:
            sim_reset.faults.no_capacity.clear()
        drive(b, sim_factory, run_id, lambda r: r.status != "provisioning", timeout=60)
        time.sleep(max(0.0, a_wakes - time.monotonic()) + 1.0)  # A's thread has woken and looked
        assert [i.name for i in _named_for(lsim, run_id)] == [instance_name(run_id, 0)]
        _cancel_and_end(b, sim_factory, run_id)
    finally:
        a.close()
        b.close()
    _assert_all_terminated_and_billed_to_the_cent(lsim, sim_factory, run_id)


@pytest.mark.usefixtures("sim_reset")
def test_the_end_of_a_run_terminates_and_books_every_instance_named_for_it(lsim, sim_factory, tmp_path, key_file):
    """A second ty-<run>-0 the database does not know (launched by a worker paused past its last
    lease check): the run's end terminates and books it with the recorded one. It was left
    billing: adoption only looked at ranks with no recorded instance."""
    worker = _worker(lsim, sim_factory, tmp_path, key_file, "worker-a")
    run_id = submit_run(sim_factory, **lambda_spec("named", nodes=1, placement_timeout_s=60))
    try:
        drive(worker, sim_factory, run_id, lambda r: r.status != "provisioning", timeout=60)
        extra = launch(lsim, instance_name(run_id, 0))
        wait_status(lsim, extra, {"active"})
        _cancel_and_end(worker, sim_factory, run_id)
    finally:
        worker.close()
    assert len(_named_for(lsim, run_id)) == 2
    _assert_all_terminated_and_billed_to_the_cent(lsim, sim_factory, run_id)


@pytest.mark.usefixtures("sim_reset")
def test_a_node_that_turned_active_unwatched_is_billed_from_its_last_sighting_booting(
    lsim, sim_factory, tmp_path, key_file
):
    """The run is cancelled after its node turned active but before any worker recorded that:
    it was booked 0 minutes against the provider's 1. Now it is billed from the last time it
    was seen booting (kept on its row), which is never after it turned active."""
    boot_s = lsim.cloud.config.boot_s
    lsim.cloud.config.boot_s = 3.0
    worker = _worker(lsim, sim_factory, tmp_path, key_file, "worker-a")
    run_id = submit_run(sim_factory, **lambda_spec("unwatched", nodes=1, placement_timeout_s=60))
    try:
        drive(worker, sim_factory, run_id, lambda r: r.status == "provisioning", timeout=30)
        (node,) = _named_for(lsim, run_id)
        # no pass of the worker from here: its placement thread sees the node turn active, but
        # nothing records that before the cancel
        wait_status(lsim, node.id, {"active"}, timeout_s=30)
        time.sleep(0.5)
        with sim_factory() as s:
            row = s.scalars(select(Instance).where(Instance.run_id == run_id)).one()
        assert row.active_at is None and row.booting_seen_at is not None
        _cancel_and_end(worker, sim_factory, run_id)
    finally:
        worker.close()
        lsim.cloud.config.boot_s = boot_s
    with sim_factory() as s:
        row = s.scalars(select(Instance).where(Instance.run_id == run_id)).one()
    (billed,) = [e for e in lsim.cloud.ledger.snapshot(time.time())["entries"] if e["instance_id"] == node.id]
    assert billed["billed_minutes"] >= 1
    assert aware(row.active_at).timestamp() <= billed["started_at"]  # never below the bill
    _assert_all_terminated_and_billed_to_the_cent(lsim, sim_factory, run_id)
