"""A rejected key or a broken provider fails the run clearly, and cancel always works (issue 11).

On the Lambda simulator, with a worker in this process (so every HTTP request it makes is counted):
a rejected API key fails a run within a minute with a one-line reason, after a handful of calls
(it used to sit in `provisioning`, calling the API once a second); a provider that keeps failing
(5xx) fails the run at the placement deadline naming the last error, asking once a poll; a cancel
ends a pending run with the provider down, and a provisioning one while the provider answers 500:
the ending is recorded at once, and the instance it could not terminate is terminated and booked
once the provider answers again. With the fake provider: a cancel in training while every provider
call fails, and a run failed by the worker (its error limit reached) while ending it raises.
"""

from __future__ import annotations

import time

from sqlalchemy import select

from fakes import FakeProvider
from fleet_helpers import lambda_settings
from orchestrator.controller import Worker
from orchestrator.controller.worker import MAX_CONSECUTIVE_ERRORS
from orchestrator.db.models import CostEntry, Instance, RunEvent
from orchestrator.db.session import transaction
from orchestrator.runs import instance_name, request_cancel
from orchestrator_helpers import drive, ended, free_port, lambda_spec, run_of, submit_run, training_run_on
from provision.errors import NodeError, ProviderServerError
from provision.registry import get_provider


def counted(provider) -> list[str]:
    """Every HTTP request the (Lambda) provider sends from now on, as "METHOD path"."""
    calls: list[str] = []
    provider.client._api._http.event_hooks["request"].append(lambda req: calls.append(f"{req.method} {req.url.path}"))
    return calls


def cancel(factory, run_id: str) -> None:
    with transaction(factory) as s:
        request_cancel(s, run_id)


def rows(factory, run_id: str) -> list[Instance]:
    with factory() as s:
        return list(s.scalars(select(Instance).where(Instance.run_id == run_id).order_by(Instance.id)))


def events(factory, run_id: str) -> list[str]:
    with factory() as s:
        return [e.message for e in s.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id))]


# -- on the simulator ------------------------------------------------------------------------------
def test_a_rejected_key_fails_the_run_within_a_minute_with_one_line_and_few_calls(
    lsim, sim_factory, tmp_path, key_file
):
    settings = lambda_settings(lsim, str(sim_factory.kw["bind"].url), tmp_path / "data", key_file)
    refused = settings.model_copy(update={"lambda_api_key": "revoked-key-0000"})
    provider = get_provider("lambda", refused)
    calls = counted(provider)
    worker = Worker(refused, sim_factory, providers={"lambda": provider})
    run_id = submit_run(sim_factory, **lambda_spec("refused"))
    started = time.monotonic()
    try:
        run = drive(worker, sim_factory, run_id, ended, timeout=60)
        took = time.monotonic() - started
        after = len(calls)
        for _ in range(10):  # an ended run asks nothing more
            worker.reconcile_once()
            time.sleep(0.05)
    finally:
        worker.close()
    assert run.status == "failed" and took < 60
    reason = run.status_reason
    assert reason.startswith(f"placing ty-{run_id}-") and "\n" not in reason
    assert "HTTP 401 global/invalid-api-key: API key was invalid, expired, or deleted." in reason
    assert "revoked-key-0000" not in reason
    # the first placement's GET, and one when ending (looking for unrecorded instances): no loop
    assert len(calls) <= 3 and all(c == "GET /api/v1/instances" for c in calls), calls
    assert len(calls) == after
    assert any(
        m.startswith("could not look for instances launched but not recorded") for m in events(sim_factory, run_id)
    )


def test_a_provider_that_keeps_failing_fails_the_run_at_the_placement_deadline(
    lsim, sim_factory, tmp_path, key_file, sim_reset
):
    settings = lambda_settings(lsim, str(sim_factory.kw["bind"].url), tmp_path / "data", key_file)
    provider = get_provider("lambda", settings)
    calls = counted(provider)
    with sim_reset.lock:
        sim_reset.faults.server_errors.extend([500] * 1000)
    worker = Worker(settings, sim_factory, providers={"lambda": provider})
    run_id = submit_run(sim_factory, **lambda_spec("down", nodes=1, placement_timeout_s=2))
    started = time.monotonic()
    try:
        run = drive(worker, sim_factory, run_id, ended, timeout=60)
    finally:
        worker.close()
    took = time.monotonic() - started
    assert run.status == "failed" and 2 <= took < 15, took
    assert run.status_reason.startswith(
        f"could not place ty-{run_id}-0 within compute.placement_timeout_s (2 s): provider lambda kept failing: "
        "Lambda API GET /api/v1/instances: HTTP 500 global/internal-error"
    )
    # a try (2 calls: the client retries once) per placement_poll_s (0.5 s), not one per pass
    assert len(calls) <= 2 * (2 / 0.5 + 3) + 2, calls


def test_cancel_ends_a_pending_run_while_the_provider_is_down(lsim, sim_factory, tmp_path, key_file):
    down = lambda_settings(lsim, str(sim_factory.kw["bind"].url), tmp_path / "data", key_file).model_copy(
        update={"lambda_api_url": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    )
    worker = Worker(down, sim_factory)
    run_id = submit_run(sim_factory, **lambda_spec("pending"))
    cancel(sim_factory, run_id)
    try:
        run = drive(worker, sim_factory, run_id, ended, timeout=30)
    finally:
        worker.close()
    assert (run.status, run.status_reason) == ("cancelled", "cancelled by the user")


def test_cancel_ends_a_provisioning_run_while_the_provider_answers_500(
    lsim, sim_factory, tmp_path, key_file, sim_reset
):
    with sim_reset.lock:  # one node can be had, the second waits for capacity
        sim_reset.capacity[("cpu_4x_general", "us-east-1")] = 1
        sim_reset.capacity[("cpu_4x_general", "us-west-1")] = 0
    settings = lambda_settings(lsim, str(sim_factory.kw["bind"].url), tmp_path / "data", key_file)
    worker = Worker(settings, sim_factory)
    run_id = submit_run(sim_factory, **lambda_spec("cancel-500"))
    try:
        drive(
            worker,
            sim_factory,
            run_id,
            lambda r: r.status == "provisioning" and any(i.active_at for i in rows(sim_factory, run_id)),
            timeout=30,
        )
        with sim_reset.lock:
            sim_reset.faults.server_errors.extend([500] * 1000)
        cancel(sim_factory, run_id)
        started = time.monotonic()
        run = drive(worker, sim_factory, run_id, lambda r: r.status == "cancelled", timeout=30)
        assert time.monotonic() - started < 10
        assert run.status_reason == "cancelled by the user"
        (row,) = rows(sim_factory, run_id)
        assert row.terminated_at is None  # not confirmed: left for cleanup, the run stays claimable
        assert any(
            m.startswith("terminating the instances failed, retrying: Lambda API") for m in events(sim_factory, run_id)
        )

        with sim_reset.lock:  # the provider answers again: cleanup terminates and books it
            sim_reset.faults.server_errors.clear()
        run = drive(worker, sim_factory, run_id, ended, timeout=30)
    finally:
        worker.close()
    (row,) = rows(sim_factory, run_id)
    assert row.terminated_at is not None and lsim.cloud.instances[row.provider_instance_id].status == "terminated"
    with sim_factory() as s:
        (entry,) = s.scalars(select(CostEntry).where(CostEntry.run_id == run_id)).all()
    assert (entry.kind, entry.instance_id) == ("instance", row.id)
    names = [i.name for i in lsim.cloud.instances.values() if (i.name or "").startswith(f"ty-{run_id}-")]
    assert names == [instance_name(run_id, 0)]  # nothing launched after the cancel


# -- with the fake provider ------------------------------------------------------------------------


def test_cancel_ends_a_training_run_while_every_provider_call_fails(factory, settings):
    provider = FakeProvider()
    run_id, instance_id = training_run_on(factory, provider)
    for method in ("get", "list", "terminate", "instance_types"):
        provider.fail(method, ProviderServerError("Lambda API: HTTP 503 after 5 tries"))
    cancel(factory, run_id)
    worker = Worker(settings, factory, providers={"lambda": provider})
    try:
        worker.reconcile_once()
        run = run_of(factory, run_id)
        assert (run.status, run.status_reason) == ("cancelled", "cancelled by the user")
        assert worker.held_runs == [run_id]  # an instance is not confirmed terminated: still held
        for method in ("get", "list", "terminate", "instance_types"):
            provider.fail(method, None)
        run = drive(worker, factory, run_id, ended, timeout=10)
    finally:
        worker.close()
    assert provider.instances[instance_id].status.is_gone and rows(factory, run_id)[0].terminated_at is not None


def test_the_worker_records_a_failure_even_when_ending_the_run_raises(factory, settings):
    """A step keeps failing (the node's commands fail) until the worker gives up, and the
    provider's terminate raises something unexpected: the failure is recorded anyway."""
    provider = FakeProvider()
    run_id, instance_id = training_run_on(factory, provider)
    provider.node(provider.instances[instance_id]).broken = NodeError("ty-x-0: command failed (255): reset")
    provider.fail("terminate", RuntimeError("a bug in the provider"))
    worker = Worker(settings, factory, providers={"lambda": provider})
    try:
        for _ in range(MAX_CONSECUTIVE_ERRORS):
            worker.reconcile_once()
        run = run_of(factory, run_id)
        assert run.status == "failed", run.status
        assert run.status_reason == (
            f"controller error after {MAX_CONSECUTIVE_ERRORS} attempts: ty-x-0: command failed (255): reset"
        )
        assert rows(factory, run_id)[0].terminated_at is None  # left for cleanup, which keeps trying
        provider.fail("terminate", None)
        run = drive(worker, factory, run_id, ended, timeout=10)
    finally:
        worker.close()
    assert provider.instances[instance_id].status.is_gone
