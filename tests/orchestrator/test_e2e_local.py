"""End to end on this machine: the service (REST API + controller in one process, started as a
real subprocess on a free port) drives the real trainer through the `local` provider.

What is shown: submit -> training -> evaluating -> succeeded with metrics, checkpoints, the test
loss and events stored; cancel mid-training leaves no trainer process; the service killed with
SIGKILL mid-training and started again finishes the run without starting a second trainer; a run
whose data is missing fails with a reason naming the path.

The model is gpt2-tiny cut down (2 layers, 64 wide) on a slice of the shipped corpus, so each run
takes tens of seconds on 2 CPU cores.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import select

from orchestrator.db.migrations import upgrade
from orchestrator.db.models import Checkpoint, CostEntry, Evaluation, Instance
from orchestrator_helpers import (
    TERMINAL,
    Service,
    kill_processes_mentioning,
    processes_mentioning,
    sessions,
    tiny_spec,
    training,
)


def _status_path(events: list[dict]) -> list[str]:
    return [e["to_status"] for e in events if e["kind"] == "status"]


# -- the tests ------------------------------------------------------------------------------------
def test_a_local_run_is_trained_evaluated_and_recorded(make_service):
    svc = make_service().start()
    run_id = svc.submit(tiny_spec("e2e-succeeds"))
    run = svc.wait(run_id, lambda r: r["status"] in TERMINAL, what="ended")
    assert run["status"] == "succeeded", run["status_reason"]

    events = svc.events(run_id)
    assert _status_path(events) == ["pending", "provisioning", "bootstrapping", "training", "evaluating", "succeeded"]
    assert [e["from_status"] for e in events if e["kind"] == "status"][1:] == _status_path(events)[:-1]

    train = [p for p in svc.metrics(run_id) if p["kind"] == "train"]
    assert len(train) >= 5
    assert train[-1]["train_loss"] < train[0]["train_loss"]
    assert [p["step"] for p in train] == sorted(p["step"] for p in train)
    progress = run["progress"]
    assert progress["tokens_done"] >= 12288 - 512 and progress["target_tokens"] == 12288
    assert progress["test_loss"] is not None and progress["val_loss"] is not None
    assert run["finished_at"] is not None

    logs = svc.logs(run_id)  # prepare's summary, the trainer's progress, the evaluation's result
    assert '"splits"' in logs and "step " in logs and '"test_loss"' in logs

    with svc.db() as s:
        checkpoints = s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id)).all()
        assert checkpoints and all(c.uri.startswith("file://") for c in checkpoints)
        (evaluation,) = s.scalars(select(Evaluation).where(Evaluation.run_id == run_id)).all()
        assert evaluation.test_loss == progress["test_loss"]
        assert evaluation.checkpoint_id == max(checkpoints, key=lambda c: c.step).id
        assert evaluation.test_set_sha256
        (inst,) = s.scalars(select(Instance).where(Instance.run_id == run_id)).all()
        assert inst.status == "terminated" and inst.terminated_at is not None
        assert s.scalars(select(CostEntry).where(CostEntry.run_id == run_id)).one().cents == 0

    run_dir = svc.runs_dir / f"ty-{run_id}-0"
    assert processes_mentioning(str(run_dir)) == []
    assert (run_dir / "train.log").stat().st_size > 0  # logs are kept after the run
    assert (run_dir / "DONE").is_file() and (run_dir / "eval.json").is_file()


def test_cancel_mid_training_stops_the_trainer(make_service):
    svc = make_service().start()
    run_id = svc.submit(tiny_spec("e2e-cancel", train_tokens=50_000))
    svc.wait(run_id, training, what="training")
    run_dir = svc.runs_dir / f"ty-{run_id}-0"
    assert processes_mentioning(str(run_dir)), "the trainer should be running"

    r = svc.client.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    run = svc.wait(run_id, lambda r: r["status"] in TERMINAL, timeout=60, what="ended")
    assert (run["status"], run["status_reason"]) == ("cancelled", "cancelled by the user")
    assert processes_mentioning(str(run_dir)) == []
    assert _status_path(svc.events(run_id))[-1] == "cancelled"
    assert svc.client.post(f"/runs/{run_id}/cancel").status_code == 409


def test_the_service_killed_mid_training_finishes_the_run_without_a_second_trainer(make_service):
    svc = make_service().start()
    run_id = svc.submit(tiny_spec("e2e-kill9", train_tokens=16384))
    svc.wait(run_id, training, what="training")
    run_dir = svc.runs_dir / f"ty-{run_id}-0"
    trainer_pid = int((run_dir / "train.pid").read_text())

    svc.kill9()
    assert processes_mentioning(str(run_dir)), "the trainer must outlive the service"
    svc.start()  # a new process under the killed one's name: it takes the run back at once
    run = svc.wait(run_id, lambda r: r["status"] in TERMINAL, what="ended")
    assert run["status"] == "succeeded", run["status_reason"]

    events = svc.events(run_id)
    assert len([e for e in events if e["message"].startswith("trainer launched")]) == 1
    workers = [e["message"].split()[1] for e in events if e["kind"] == "worker"]
    assert len(workers) == 2 and workers[0] == workers[1]  # the killed worker, then its restart
    assert int((run_dir / "train.pid").read_text()) == trainer_pid
    starts = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "start"
    ]
    assert len(starts) == 1
    # metrics were read exactly once across the restart: one point per logged step
    steps = [p["step"] for p in svc.metrics(run_id) if p["kind"] == "train"]
    assert len(steps) == len(set(steps))
    assert processes_mentioning(str(run_dir)) == []


def test_a_run_whose_data_is_missing_fails_with_a_clear_reason(make_service, tmp_path):
    svc = make_service().start()
    missing = tmp_path / "nowhere" / "books"
    run_id = svc.submit(tiny_spec("e2e-missing", source=str(missing)))
    run = svc.wait(run_id, lambda r: r["status"] in TERMINAL, timeout=120, what="ended")
    assert run["status"] == "failed"
    assert run["status_reason"] == (
        f"data preparation failed: source {missing} does not exist "
        f"(expected a file, a folder, builtin:corpus or hf:NAME[:CONFIG])"
    )
    assert svc.metrics(run_id) == []
    with svc.db() as s:
        (inst,) = s.scalars(select(Instance).where(Instance.run_id == run_id)).all()
        assert inst.terminated_at is not None
    assert processes_mentioning(str(svc.runs_dir / f"ty-{run_id}-0")) == []


WORKER = ("worker",)


def test_two_workers_on_postgresql_execute_each_of_ten_runs_exactly_once(pg_server_url, tmp_path):
    from orchestrator.db.models import Run, RunEvent
    from orchestrator.runs import create_run
    from orchestrator.spec import validate_spec

    url = pg_server_url()
    upgrade(url)
    factory = sessions(url)
    spec = tiny_spec("e2e-many", train_tokens=2048, test_loss=False)
    spec["data"]["max_tokens"] = 20000
    spec["training"].update(log_every=1, eval_every=1000, checkpoint_every=1000)
    with factory.begin() as s:
        run_ids = [create_run(s, validate_spec({**spec, "name": f"many-{i}"})).id for i in range(10)]

    data_dir = tmp_path / "data"
    workers = [
        Service(
            data_dir,
            url,
            command=WORKER,
            TRAINYARD_WORKER_ID=f"worker-{n}",
            TRAINYARD_MAX_CONCURRENT_RUNS="2",
            TRAINYARD_LEASE_S="15",
        )
        for n in ("a", "b")
    ]
    try:
        for w in workers:
            w.start(wait=False)
        deadline = time.time() + 400
        while time.time() < deadline:
            with factory() as s:
                runs = s.scalars(select(Run).where(Run.id.in_(run_ids))).all()
                if all(r.status in TERMINAL and r.lease_token is None for r in runs):
                    break
            assert all(w.proc.poll() is None for w in workers), workers[0].log_tail()
            time.sleep(1)
        else:
            raise AssertionError(f"runs not done: {[(r.id, r.status) for r in runs]}\n{workers[0].log_tail()}")
    finally:
        for w in workers:
            w.close()
        kill_processes_mentioning(str(data_dir / "runs"))

    assert {r.status for r in runs} == {"succeeded"}, [(r.status, r.status_reason) for r in runs]
    took: set[str] = set()
    with factory() as s:
        for run_id in run_ids:
            events = s.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)).all()
            launches = [e for e in events if e.message.startswith("trainer launched")]
            assert len(launches) == 1, f"run {run_id} was started {len(launches)} times"
            path = [e.to_status for e in events if e.kind == "status"]
            assert path == ["pending", "provisioning", "bootstrapping", "training", "succeeded"], [
                (e.kind, e.to_status, e.message) for e in events
            ]
            took |= {e.message.split()[1] for e in events if e.kind == "worker"}
            assert len(s.scalars(select(Instance).where(Instance.run_id == run_id)).all()) == 1
            metrics = (data_dir / "runs" / f"ty-{run_id}-0" / "metrics.jsonl").read_text().splitlines()
            assert sum(json.loads(line)["kind"] == "start" for line in metrics) == 1
    assert took == {"worker-a", "worker-b"}  # both did work; each run was launched once (above)
