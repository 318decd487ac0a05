"""One bad run never wedges the worker (issue 13, finding 4).

Runs are poisoned the way a submit can no longer do (the API refuses bad specs at the door) but a
database can still hold: a store URI the controller froze that no store understands (ending such a
run used to raise in its cleanup, before any best-effort `try`, so the worker retried it every
pass and kept its slot forever), and a spec row that no longer reads as a spec. With the real
controller on the local provider, ten of them and a good run: the good run succeeds, and every
poisoned run fails with its reason, says what its cleanup gave up, and lets its slot go.

With the fake provider (Lambda's side): an instance that cannot be terminated is given up after
the bound with an event, left as it is, and taken over by the orphan sweep, which terminates it
and books it on its run.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from fakes import FakeProvider
from orchestrator.controller import Worker, lease
from orchestrator.controller.orphans import OrphanSweep
from orchestrator.db.models import CostEntry, Instance, RunEvent
from orchestrator.db.session import transaction
from orchestrator.runs import instance_name, request_cancel
from orchestrator.settings import Settings
from orchestrator_helpers import drive, ended, run_of, sessions, set_run, submit_run, tiny_spec, training_run_on
from provision.errors import ProviderServerError

#: the cleanup's bound, short so the test is quick: 3 tries, 0.05 s apart and doubling
FAST_CLEANUP = {"cleanup_attempts": 3, "cleanup_retry_base_s": 0.05, "cleanup_retry_max_s": 0.2}


def events(factory, run_id: str) -> list[str]:
    with factory() as s:
        return list(s.scalars(select(RunEvent.message).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))


@pytest.fixture
def local_factory(sqlite_url):
    f = sessions(sqlite_url)
    yield f
    f.kw["bind"].dispose()


def test_ten_poisoned_runs_fail_and_let_go_while_a_good_run_succeeds(local_factory, sqlite_url, tmp_path):
    factory = local_factory
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=sqlite_url,
        worker_id="worker-p",
        max_concurrent_runs=2,  # two wedged runs used to be enough to starve every later run
        **FAST_CLEANUP,
    )
    bad_store = [submit_run(factory, **tiny_spec(f"bad-store-{i}")) for i in range(5)]
    for run_id in bad_store:  # the store the controller froze for the run: no such scheme
        set_run(factory, run_id, artifact_uri=f"ftp://nowhere/runs/{run_id}")
    bad_spec = [submit_run(factory, **tiny_spec(f"bad-spec-{i}")) for i in range(5)]
    for run_id in bad_spec:  # a row edited by hand: the spec no longer reads
        set_run(factory, run_id, spec={"name": "t", "compute": {"provider": "local", "nodes": "many"}})
    good = submit_run(factory, **tiny_spec("good", train_tokens=2048, test_loss=False))

    worker = Worker(settings, factory)
    everyone = [*bad_store, *bad_spec, good]
    started = time.monotonic()
    try:
        # generous: the good run trains a (tiny) model on 2 shared cores
        while time.monotonic() - started < 300:
            worker.reconcile_once()
            if all(ended(run_of(factory, run_id)) for run_id in everyone):
                break
            time.sleep(0.05)
        took = time.monotonic() - started
        held = worker.held_runs
    finally:
        worker.close()

    runs = {run_id: run_of(factory, run_id) for run_id in everyone}
    assert runs[good].status == "succeeded", (runs[good].status, runs[good].status_reason)
    assert held == [] and lease.claimable_run_ids(factory, 20) == []
    for run_id in bad_store:
        run = runs[run_id]
        assert (run.status, run.lease_token) == ("failed", None)
        assert f"artifact URI 'ftp://nowhere/runs/{run_id}': the scheme must be file:// or s3://" in run.status_reason
        assert any(
            m.startswith("cleanup gave up revoking the nodes' store access: revoking the nodes' store access failed")
            and m.endswith("(after 3 tries); their credentials expire by themselves within 3600 s")
            for m in events(factory, run_id)
        ), events(factory, run_id)
        with factory() as s:  # its local instance was terminated all the same
            rows = s.scalars(select(Instance).where(Instance.run_id == run_id)).all()
        assert rows and all(r.terminated_at is not None for r in rows)
    for run_id in bad_spec:
        run = runs[run_id]
        assert (run.status, run.lease_token) == ("failed", None)
        assert run.status_reason.startswith("controller error after 10 attempts: ValidationError")
    print(f"10 poisoned runs and 1 good run ended in {took:.1f} s")


def test_an_instance_that_will_not_terminate_is_given_up_to_the_orphan_sweep(factory, settings):
    provider = FakeProvider()
    provider.name = "lambda"  # a renting provider: the orphan sweep's
    run_id, instance_id = training_run_on(factory, provider)
    provider.fail("terminate", ProviderServerError("Lambda API: HTTP 503 after 5 tries"))
    with transaction(factory) as s:
        request_cancel(s, run_id)
    worker = Worker(settings.model_copy(update=FAST_CLEANUP), factory, providers={"lambda": provider})
    try:
        run = drive(worker, factory, run_id, ended, timeout=10)
        held = worker.held_runs
    finally:
        worker.close()

    assert run.status == "cancelled" and held == []
    with factory() as s:
        row = s.scalars(select(Instance).where(Instance.run_id == run_id)).one()
    assert row.cleanup_gave_up_at is not None and row.terminated_at is None
    assert provider.instances[instance_id].status.value == "active"  # left as it is: nothing guessed
    assert (
        f"cleanup gave up terminating {instance_name(run_id, 0)}: Lambda API: HTTP 503 after 5 tries (after 3 tries); "
        "left as it is (the orphan sweep terminates and books it)"
    ) in events(factory, run_id)
    assert lease.claimable_run_ids(factory, 10) == []  # no worker takes it again

    provider.fail("terminate", None)
    sweep = OrphanSweep(settings, factory, {})
    sweep.sweep_provider(provider)  # asks for the terminate (no grace: its run wanted it gone)
    assert provider.instances[instance_id].status.is_gone
    sweep.sweep_provider(provider)  # sees it gone: marks it terminated and books it on its run
    with factory() as s:
        row = s.scalars(select(Instance).where(Instance.run_id == run_id)).one()
        entries = s.scalars(select(CostEntry).where(CostEntry.run_id == run_id)).all()
    assert row.terminated_at is not None and row.status == "terminated"
    assert [(e.kind, e.instance_id) for e in entries] == [("instance", row.id)]
    assert any(m.startswith(f"instance {row.name} terminated by the orphan sweep") for m in events(factory, run_id))
