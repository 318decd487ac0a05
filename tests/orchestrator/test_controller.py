"""The controller without a full training: leases, fencing, claiming, ingest, and the lifecycle's
edges (bad input, cancel before start, budget, crash between "ended" and "terminated").

Every test runs on SQLite and PostgreSQL. The local provider and `python -m trainer.prepare` are
real; none of these tests trains a model (test_e2e_local.py does).
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update

from orchestrator.controller import Worker, lease
from orchestrator.controller.context import NodeHandle, RunContext
from orchestrator.controller.ingest import NewOutput, apply_lines, record_output
from orchestrator.db.models import (
    Checkpoint,
    CostEntry,
    Instance,
    LogChunk,
    MetricPoint,
    Run,
    RunEvent,
    RunStatus,
    utcnow,
)
from orchestrator.db.session import transaction
from orchestrator.errors import LeaseLostError
from orchestrator.runs import instance_name, request_cancel
from orchestrator.settings import Settings
from orchestrator_helpers import drive as _drive
from orchestrator_helpers import ended as _ended
from orchestrator_helpers import run_of as _run
from orchestrator_helpers import submit_run as _submit
from provision.errors import InvalidRequest
from provision.local import LocalProvider
from provision.node import LocalNode
from provision.registry import get_provider


# -- leases ---------------------------------------------------------------------------------------
def test_one_of_two_workers_wins_the_lease_and_an_expired_one_is_taken_over(factory):
    run_id = _submit(factory)
    token_a = lease.acquire(factory, run_id, "a", lease_s=30)
    assert token_a is not None
    assert lease.acquire(factory, run_id, "b", lease_s=30) is None
    assert lease.renew(factory, run_id, token_a, lease_s=30)

    # a's lease runs out (a crashed): b takes over, and a can no longer renew or write
    with transaction(factory) as s:
        s.execute(update(Run).where(Run.id == run_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    token_b = lease.acquire(factory, run_id, "b", lease_s=30)
    assert token_b is not None and token_b != token_a
    assert not lease.renew(factory, run_id, token_a, lease_s=30)
    assert _run(factory, run_id).lease_owner == "b"

    lease.release(factory, run_id, token_a)  # not a's any more: no effect
    assert _run(factory, run_id).lease_owner == "b"
    lease.release(factory, run_id, token_b)
    run = _run(factory, run_id)
    assert (run.lease_owner, run.lease_token, run.lease_expires_at) == (None, None, None)


def test_a_fenced_write_with_a_stale_token_raises_and_writes_nothing(factory):
    run_id = _submit(factory)
    token_a = lease.acquire(factory, run_id, "a", lease_s=30)
    with lease.fenced(factory, run_id, token_a, 30) as (_session, run_row):
        run_row.step = 5
    assert _run(factory, run_id).step == 5

    with transaction(factory) as s:
        s.execute(update(Run).where(Run.id == run_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert lease.acquire(factory, run_id, "b", lease_s=30)

    with pytest.raises(LeaseLostError), lease.fenced(factory, run_id, token_a, 30) as (session, run_row):
        run_row.step = 99
        session.add(MetricPoint(run_id=run_id, kind="train", step=1, tokens=1, time=0.0))
    run = _run(factory, run_id)
    assert (run.step, run.status) == (5, "pending")
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(MetricPoint)) == 0


def test_racing_workers_get_exactly_one_lease(factory):
    run_id = _submit(factory)
    barrier = threading.Barrier(6)
    tokens: list[str | None] = []

    def contend(owner: str) -> None:
        barrier.wait()
        tokens.append(lease.acquire(factory, run_id, owner, lease_s=30))

    threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [t for t in tokens if t is not None]
    assert len(winners) == 1
    assert _run(factory, run_id).lease_token == winners[0]


def test_claimable_runs_are_unleased_and_unfinished_or_still_holding_instances(factory):
    first, second, leased, done, done_with_node = (_submit(factory) for _ in range(5))
    lease.acquire(factory, leased, "other", lease_s=30)
    with transaction(factory) as s:
        for rid in (done, done_with_node):
            s.get(Run, rid).status = RunStatus.failed.value
        s.add(
            Instance(
                run_id=done_with_node,
                rank=0,
                name=instance_name(done_with_node, 0),
                provider="local",
                provider_instance_id="x",
                instance_type="local",
            )
        )
    assert lease.claimable_run_ids(factory, 10) == [first, second, done_with_node]
    assert lease.claimable_run_ids(factory, 1) == [first]


# -- ingest ---------------------------------------------------------------------------------------
METRIC_LINES = [
    {"kind": "start", "time": 1.0, "world_size": 2, "params": 1000, "target_tokens": 4096, "resumed_from_step": None},
    {
        "kind": "train",
        "time": 2.0,
        "step": 1,
        "tokens": 1024,
        "train_loss": 10.5,
        "lr": 1e-3,
        "tokens_per_s": 500.0,
        "mfu": None,
        "peak_mem_bytes": 123,
        "wall_s": 2.0,
    },
    {"kind": "val", "time": 3.0, "step": 2, "tokens": 2048, "val_loss": 9.5},
    {"kind": "train", "time": 4.0, "step": 2, "tokens": 2048, "train_loss": 9.0, "lr": 1e-3, "tokens_per_s": 600.0},
    {
        "kind": "checkpoint",
        "time": 5.0,
        "step": 2,
        "tokens": 2048,
        "path": "checkpoints/step_000002",
        "bytes": 77,
        "val_loss": 9.5,
    },
    {"kind": "something-new", "time": 6.0},
]


def test_ingest_stores_rows_and_offsets_once(factory, settings, tmp_path):
    import json

    run_id = _submit(factory)
    token = lease.acquire(factory, run_id, "a", lease_s=30)
    provider = LocalProvider(tmp_path / "runs", python="python3")
    inst = provider.launch(name=instance_name(run_id, 0), instance_type="local", region="local")
    ctx = RunContext(run_id, token, settings, factory, provider)
    text = "".join(json.dumps(m) + "\n" for m in METRIC_LINES)
    new = NewOutput(
        complete=True,
        metrics_from=0,
        metrics_offset=len(text),
        log_from=0,
        log_offset=6,
        log_text="hello\n",
        lines=[json.loads(line) for line in text.splitlines()],
    )
    handle = NodeHandle(inst, LocalNode())
    assert record_output(ctx, handle, new) is True
    assert record_output(ctx, handle, new) is False  # the same read again (a retried pass): nothing twice

    with factory() as s:
        run = s.get(Run, run_id)
        assert (run.metrics_offset, run.log_offset) == (len(text), 6)
        assert (run.world_size, run.target_tokens, run.step, run.tokens_done) == (2, 4096, 2, 2048)
        assert (run.train_loss, run.val_loss, run.tokens_per_s) == (9.0, 9.5, 600.0)
        points = s.scalars(select(MetricPoint).where(MetricPoint.run_id == run_id).order_by(MetricPoint.id)).all()
        assert [(p.kind, p.step) for p in points] == [("train", 1), ("val", 2), ("train", 2)]
        (ckpt,) = s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id)).all()
        assert ckpt.uri == (tmp_path / "runs" / inst.name / "checkpoints/step_000002").as_uri()
        assert (ckpt.step, ckpt.bytes) == (2, 77)
        assert [c.text for c in s.scalars(select(LogChunk).where(LogChunk.run_id == run_id))] == ["hello\n"]
        assert any("world size 2" in e.message for e in s.scalars(select(RunEvent).where(RunEvent.run_id == run_id)))


def test_apply_lines_ignores_non_numbers(factory):
    run_id = _submit(factory)
    with transaction(factory) as s:
        run = s.get(Run, run_id)
        apply_lines(
            s, run, [{"kind": "train", "step": 3, "tokens": 9, "train_loss": float("nan"), "lr": "x"}], lambda p: p
        )
    with factory() as s:
        (p,) = s.scalars(select(MetricPoint).where(MetricPoint.run_id == run_id)).all()
        assert (p.step, p.train_loss, p.lr) == (3, None, None)


# -- the lifecycle's edges ------------------------------------------------------------------------
def test_a_run_whose_data_is_missing_fails_naming_the_path_and_leaves_nothing_running(factory, settings, tmp_path):
    missing = tmp_path / "no" / "such" / "corpus.txt"
    run_id = _submit(factory, data={"source": str(missing)})
    worker = Worker(settings, factory)
    run = _drive(worker, factory, run_id, _ended)
    assert run.status == "failed"
    assert str(missing) in run.status_reason and run.status_reason.startswith("data preparation failed")
    assert run.finished_at is not None
    with factory() as s:
        (inst,) = s.scalars(select(Instance).where(Instance.run_id == run_id)).all()
        assert inst.status == "terminated" and inst.terminated_at is not None
        assert s.scalar(select(func.count()).select_from(CostEntry).where(CostEntry.run_id == run_id)) == 1
        assert s.scalar(select(func.count()).select_from(MetricPoint).where(MetricPoint.run_id == run_id)) == 0
        statuses = [
            (e.from_status, e.to_status)
            for e in s.scalars(
                select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.kind == "status").order_by(RunEvent.id)
            )
        ]
    assert statuses == [
        (None, "pending"),
        ("pending", "provisioning"),
        ("provisioning", "bootstrapping"),
        ("bootstrapping", "failed"),
    ]
    assert worker.held_runs == []


def test_cancel_before_anything_started(factory, settings):
    run_id = _submit(factory)
    with transaction(factory) as s:
        request_cancel(s, run_id)
    run = _drive(Worker(settings, factory), factory, run_id, _ended)
    assert (run.status, run.status_reason) == ("cancelled", "cancelled by the user")
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Instance).where(Instance.run_id == run_id)) == 0


def test_a_run_over_its_time_budget_is_stopped(factory, settings):
    run_id = _submit(factory, budget={"max_hours": 1e-7})
    run = _drive(Worker(settings, factory), factory, run_id, _ended)
    assert run.status == "stopped"
    assert "budget.max_hours" in run.status_reason


def test_an_ended_run_with_a_live_instance_is_terminated(factory, settings):
    """A crash between writing "failed" and terminating still converges to nothing running."""
    run_id = _submit(factory)
    provider = get_provider("local", settings)
    inst = provider.launch(name=instance_name(run_id, 0), instance_type="local", region="local")
    node = provider.node(inst)
    node.start_detached("sleep 300", workdir=inst.extra["workdir"], name="train")
    with transaction(factory) as s:
        s.get(Run, run_id).status = RunStatus.failed.value
        s.add(
            Instance(
                run_id=run_id,
                rank=0,
                name=inst.name,
                provider="local",
                provider_instance_id=inst.id,
                instance_type="local",
                status="active",
                active_at=utcnow(),
                workdir=inst.extra["workdir"],
            )
        )
    worker = Worker(settings, factory)
    _drive(worker, factory, run_id, lambda r: r.lease_token is None and worker.held_runs == [])
    assert not node.status(workdir=inst.extra["workdir"], name="train").running
    assert provider.get(inst.id).status.value == "terminated"
    with factory() as s:
        row = s.scalars(select(Instance).where(Instance.run_id == run_id)).one()
        assert row.terminated_at is not None
        assert s.scalar(select(func.count()).select_from(CostEntry).where(CostEntry.instance_id == row.id)) == 1
    assert lease.claimable_run_ids(factory, 10) == []


def test_a_worker_that_lost_its_lease_stops_acting(factory, settings):
    run_id = _submit(factory)
    a = Worker(settings, factory)
    # training: no placement or bootstrap task of a's is in flight (their fenced writes would
    # extend a's lease before b could take it)
    _drive(a, factory, run_id, lambda r: r.status == RunStatus.training.value)
    assert a.held_runs == [run_id]
    with transaction(factory) as s:
        s.execute(update(Run).where(Run.id == run_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    b_token = lease.acquire(factory, run_id, "worker-b", lease_s=30)
    status_before = _run(factory, run_id).status
    a.reconcile_once()
    assert a.held_runs == []
    run = _run(factory, run_id)
    assert (run.lease_token, run.status) == (b_token, status_before)
    # b hands the run back, cancelled; a takes it again and ends it (its trainer stopped)
    lease.release(factory, run_id, b_token)
    with transaction(factory) as s:
        request_cancel(s, run_id)
    assert _drive(a, factory, run_id, _ended).status == RunStatus.cancelled.value


def test_the_registry_names_what_it_has():
    settings = Settings()
    assert get_provider("local", settings).name == "local"
    with pytest.raises(InvalidRequest, match="provider 'nope' is not available"):
        get_provider("nope", settings)


def test_the_registry_names_the_settings_a_provider_lacks(tmp_path):
    bare = Settings(
        data_dir=tmp_path, lambda_api_key=None, lambda_ssh_key_name=None, ssh_private_key_file=None, ssh_hosts_file=None
    )
    with pytest.raises(
        InvalidRequest,
        match="^provider lambda needs TRAINYARD_LAMBDA_API_KEY and "
        "TRAINYARD_LAMBDA_SSH_KEY_NAME and TRAINYARD_SSH_PRIVATE_KEY_FILE$",
    ):
        get_provider("lambda", bare)
    with pytest.raises(InvalidRequest, match="^provider ssh needs TRAINYARD_SSH_HOSTS_FILE$"):
        get_provider("ssh", bare)
    with pytest.raises(InvalidRequest, match="TRAINYARD_SSH_PRIVATE_KEY_FILE .* is not a file"):
        get_provider(
            "lambda",
            bare.model_copy(
                update={"lambda_api_key": "k", "lambda_ssh_key_name": "me", "ssh_private_key_file": tmp_path / "none"}
            ),
        )

    key = tmp_path / "id_ed25519"
    key.write_text("not read until a node is reached")
    built = get_provider(
        "lambda",
        bare.model_copy(
            update={
                "lambda_api_key": SecretStr("secret-key-123"),
                "lambda_ssh_key_name": "me",
                "ssh_private_key_file": key,
                "lambda_api_url": "http://127.0.0.1:9",
            }
        ),
    )  # built without touching the network
    assert built.name == "lambda" and built.known_hosts.path == tmp_path / "known_hosts"
    assert "secret-key-123" not in repr(built) + repr(built.client)
    built.close()
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(f"hosts:\n  - {{name: box, host: 127.0.0.1, user: me, key_file: {key}}}\n")
    assert get_provider("ssh", bare.model_copy(update={"ssh_hosts_file": hosts})).name == "ssh"
    hosts.write_text("hosts: [{name: box}]\n")
    with pytest.raises(InvalidRequest, match=f"TRAINYARD_SSH_HOSTS_FILE {hosts} cannot be used"):
        get_provider("ssh", bare.model_copy(update={"ssh_hosts_file": hosts}))


def test_a_lambda_run_without_its_settings_fails_naming_them(factory, settings):
    bare = settings.model_copy(
        update={"lambda_api_key": None, "lambda_ssh_key_name": None, "ssh_private_key_file": None}
    )
    run_id = _submit(factory, compute={"provider": "lambda", "instance_type": "gpu_1x_a10"})
    worker = Worker(bare, factory)
    run = _drive(worker, factory, run_id, _ended, timeout=20)
    assert (run.status, run.status_reason) == (
        "failed",
        "provider lambda needs TRAINYARD_LAMBDA_API_KEY and TRAINYARD_LAMBDA_SSH_KEY_NAME and "
        "TRAINYARD_SSH_PRIVATE_KEY_FILE",
    )
    worker.close()


class CountingLocal(LocalProvider):
    """The real local provider, counting launches."""

    launches = 0

    def launch(self, **kw):
        CountingLocal.launches += 1
        return super().launch(**kw)


def _crashed_after_launch(factory, settings) -> tuple[str, LocalProvider, object]:
    """A run whose worker launched its instance and died before recording it."""
    run_id = _submit(factory)
    provider = CountingLocal(settings.runs_dir, python=settings.trainer_python, stop_grace_s=2)
    inst = provider.launch(name=instance_name(run_id, 0), instance_type="local", region="local")
    provider.node(inst).start_detached("sleep 300", workdir=inst.extra["workdir"], name="prepare")
    with transaction(factory) as s:
        run = s.get(Run, run_id)
        run.status, run.started_at = RunStatus.provisioning.value, utcnow()
    CountingLocal.launches = 0
    return run_id, provider, inst


def test_a_launch_that_was_not_recorded_is_found_by_name_not_repeated(factory, settings):
    run_id, provider, inst = _crashed_after_launch(factory, settings)
    worker = Worker(settings, factory, providers={"local": provider})
    _drive(worker, factory, run_id, lambda r: r.status == "bootstrapping")
    assert CountingLocal.launches == 0
    with factory() as s:
        (row,) = s.scalars(select(Instance).where(Instance.run_id == run_id)).all()
        assert row.provider_instance_id == inst.id
    worker.close()
    provider.terminate([inst.id])


def test_cancel_after_an_unrecorded_launch_terminates_that_instance(factory, settings):
    run_id, provider, inst = _crashed_after_launch(factory, settings)
    with transaction(factory) as s:
        request_cancel(s, run_id)
    worker = Worker(settings, factory, providers={"local": provider})
    run = _drive(worker, factory, run_id, _ended)
    assert run.status == "cancelled" and CountingLocal.launches == 0
    assert provider.get(inst.id).status.is_gone
    assert not LocalNode().status(workdir=inst.extra["workdir"], name="prepare").running
    with factory() as s:
        (row,) = s.scalars(select(Instance).where(Instance.run_id == run_id)).all()
        assert row.terminated_at is not None
