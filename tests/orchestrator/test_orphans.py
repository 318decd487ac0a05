"""The orphan sweep on the Lambda simulator (issue 11): every machine named like trainyard's is
owned by a live run, or is terminated and booked.

What is shown: instances launched out of band with trainyard-style names (one of no run the
database knows, one of a run that ended) are terminated within the grace period plus one sweep
of their first sighting, by a worker's own sweep, and booked as kind "orphan" (on their run when
it is known, with events there); one with a foreign name is never touched. Instances a live run
or a recorded row owns are left alone, however long the grace has passed. Two workers sweeping the
same orphan at once book it once.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from fleet_helpers import lambda_settings as _settings
from fleet_helpers import launch, sim_client, status, terminate_all, wait_status
from orchestrator.controller import Worker
from orchestrator.controller.orphans import OrphanSweep
from orchestrator.db.models import CostEntry, Instance, OrphanInstance, RunEvent, RunStatus, aware, utcnow
from orchestrator.db.session import transaction
from orchestrator.runs import instance_name, new_run_id
from orchestrator_helpers import lambda_spec, set_run, submit_run
from provision.registry import get_provider

GRACE_S = 1.5
SWEEP_S = 0.5


@pytest.fixture
def factory(sim_factory):
    return sim_factory


@pytest.fixture
def settings(lsim, sqlite_url, tmp_path, key_file):
    return _settings(
        lsim, sqlite_url, tmp_path / "data", key_file, orphan_sweep_interval_s=SWEEP_S, orphan_grace_s=GRACE_S
    )


@pytest.fixture(autouse=True)
def _give_back(lsim):
    yield
    terminate_all(lsim)


def _ended_run(factory) -> str:
    run_id = submit_run(factory, **lambda_spec("t"))
    set_run(factory, run_id, status=RunStatus.failed.value, status_reason="failed long ago", finished_at=utcnow())
    return run_id


def _orphan(factory, instance_id: str) -> OrphanInstance | None:
    with factory() as s:
        return s.scalars(select(OrphanInstance).where(OrphanInstance.provider_instance_id == instance_id)).first()


def test_orphans_are_terminated_within_the_grace_plus_one_sweep_and_booked_foreign_ones_never(lsim, factory, settings):
    ended = _ended_run(factory)
    unknown = launch(lsim, instance_name(new_run_id(), 0))  # a run this database never had
    of_ended = launch(lsim, instance_name(ended, 1) + "r2")  # a replacement's name, of an ended run
    foreign = launch(lsim, "my-notebook")  # not trainyard's
    launched = time.monotonic()

    worker = Worker(settings, factory)  # its sweep builds the lambda provider from the settings
    try:
        while {status(lsim, unknown), status(lsim, of_ended)} & {"booting", "active"}:
            assert time.monotonic() - launched < GRACE_S + 2 * SWEEP_S + 5, "orphans still running"
            worker.reconcile_once()
            time.sleep(0.1)
        # booked on the sweep after the provider shows them gone
        while not all((row := _orphan(factory, i)) is not None and row.cost_entry_id for i in (unknown, of_ended)):
            assert time.monotonic() - launched < GRACE_S + 4 * SWEEP_S + 10, "orphans not booked"
            worker.reconcile_once()
            time.sleep(0.1)
    finally:
        worker.orphans.join(10)
        worker.close()

    assert status(lsim, foreign) == "active" and _orphan(factory, foreign) is None
    with factory() as s:
        entries = {e.id: e for e in s.scalars(select(CostEntry).where(CostEntry.kind == "orphan"))}
        events = [
            e.message for e in s.scalars(select(RunEvent).where(RunEvent.run_id == ended, RunEvent.kind == "orphan"))
        ]
    for instance_id, run_id in ((unknown, None), (of_ended, ended)):
        row = _orphan(factory, instance_id)
        assert row is not None and row.run_id == run_id
        waited = (aware(row.terminate_requested_at) - aware(row.first_seen_at)).total_seconds()
        assert GRACE_S <= waited <= GRACE_S + SWEEP_S + 1.0, waited  # the grace, then one sweep at most
        entry = entries[row.cost_entry_id]
        assert (entry.run_id, entry.unit, entry.instance_id) == (run_id, "minute", None)
        assert entry.quantity >= 1 and entry.cents == pytest.approx(entry.quantity * 20 / 60)
        assert entry.description.startswith(f"orphan {row.name} (cpu_4x_general, ")
        # from first sight, a lower bound of what the provider bills
        ledger = lsim.cloud.ledger.snapshot(time.time())
        billed = next(e for e in ledger["entries"] if e["instance_id"] == instance_id)
        assert entry.quantity <= billed["billed_minutes"]
    assert len(entries) == 2
    assert [m.split(" (")[0] for m in events] == [
        f"instance {instance_name(ended, 1)}r2",
        f"orphan instance {instance_name(ended, 1)}r2 is being terminated",
        f"orphan instance {instance_name(ended, 1)}r2 terminated",
    ]


def test_what_a_live_run_or_a_recorded_row_owns_is_never_swept(lsim, factory, settings):
    live = submit_run(factory, **lambda_spec("t"))
    set_run(factory, live, status=RunStatus.provisioning.value, started_at=utcnow())
    unrecorded = launch(lsim, instance_name(live, 0))  # launched, not recorded yet: placement adopts it
    ended = _ended_run(factory)
    recorded = launch(lsim, instance_name(ended, 0))  # its run's cleanup terminates it, retrying
    with transaction(factory) as s:
        s.add(
            Instance(
                run_id=ended,
                rank=0,
                name=instance_name(ended, 0),
                provider="lambda",
                provider_instance_id=recorded,
                instance_type="cpu_4x_general",
                status="terminating",
                terminate_requested_at=utcnow(),
            )
        )
    for instance_id in (unrecorded, recorded):
        wait_status(lsim, instance_id, {"active"})
    provider = get_provider("lambda", settings)
    sweep = OrphanSweep(settings.model_copy(update={"orphan_grace_s": 0.0}), factory, {})
    try:
        for _ in range(3):
            sweep.sweep([provider])
    finally:
        provider.close()
    assert status(lsim, unrecorded) == "active" and status(lsim, recorded) == "active"
    assert _orphan(factory, unrecorded) is None and _orphan(factory, recorded) is None


def test_two_workers_sweeping_at_once_terminate_and_book_an_orphan_once(lsim, factory, settings):
    orphan = launch(lsim, instance_name(new_run_id(), 0))
    wait_status(lsim, orphan, {"active"})  # billing: seen from now on
    now = settings.model_copy(update={"orphan_grace_s": 0.0})
    providers = [get_provider("lambda", now), get_provider("lambda", now)]
    sweeps = [OrphanSweep(now, factory, {}), OrphanSweep(now, factory, {})]

    def both() -> None:
        threads = [threading.Thread(target=s.sweep, args=([p],)) for s, p in zip(sweeps, providers, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    try:
        both()  # both see it; one records it, and it is terminated at once (no grace)
        wait_status(lsim, orphan, {"terminated"})
        both()  # both see it gone; one books it
        both()
    finally:
        for p in providers:
            p.close()
    row = _orphan(factory, orphan)
    assert row is not None and row.terminated_at is not None and row.cost_entry_id is not None
    with factory() as s:
        assert len(s.scalars(select(OrphanInstance)).all()) == 1
        (entry,) = s.scalars(select(CostEntry).where(CostEntry.kind == "orphan")).all()
    assert entry.id == row.cost_entry_id and entry.run_id is None


def test_an_orphan_the_provider_forgot_is_booked(lsim, factory, settings):
    """One the provider no longer lists (terminated long ago, out of our sight) is booked too."""
    orphan = launch(lsim, instance_name(new_run_id(), 0))
    provider = get_provider("lambda", settings)
    sweep = OrphanSweep(settings, factory, {})
    try:
        wait_status(lsim, orphan, {"active"})
        sweep.sweep([provider])  # first sight: within the grace, nothing done
        assert _orphan(factory, orphan) is not None and status(lsim, orphan) == "active"
        with sim_client(lsim) as c:  # someone else ends it, and the provider forgets it
            c.terminate([orphan])
        wait_status(lsim, orphan, {"terminated"})
        with lsim.cloud.lock:
            del lsim.cloud.instances[orphan]
        sweep.sweep([provider])
    finally:
        provider.close()
    row = _orphan(factory, orphan)
    assert row is not None and row.cost_entry_id is not None and row.terminate_requested_at is None
