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
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from orchestrator.db.migrations import upgrade
from orchestrator.db.models import Checkpoint, CostEntry, Evaluation, Instance
from orchestrator.db.session import make_engine, make_sessionmaker

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled", "stopped"}

# The real commands, run as a user would (python -m orchestrator.cli is the `trainyard` script).
SERVE = ("serve",)


def tiny_spec(name: str, *, train_tokens: int = 12288, source: str = "builtin:corpus",
              test_loss: bool = True) -> dict:
    return {
        "name": name,
        "model": {"preset": "gpt2-tiny", "overrides": {"n_layer": 2, "n_embd": 64, "n_head": 2}},
        "data": {"source": source, "max_tokens": 60000},
        "training": {"seq_len": 64, "micro_batch": 8, "max_tokens": train_tokens, "lr": 3e-3,
                     "min_lr": 3e-4, "warmup_steps": 2, "log_every": 2, "eval_every": 10,
                     "eval_tokens": 2048, "checkpoint_every": 10},
        "evaluation": {"test_loss": test_loss, "test_max_tokens": 2048},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line holds `text` (zombies have an empty command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline.strip()))
    return found


def kill_processes_mentioning(text: str) -> None:
    for pid, _cmd in processes_mentioning(text):
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except OSError:
            pass


class Service:
    """A service process (or a bare worker process) on a database and data dir of its own."""

    def __init__(self, db_url: str, data_dir: Path, log_dir: Path, command: tuple[str, ...] = SERVE,
                 **env: str):
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.data_dir = data_dir
        self.command = command
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TRAINYARD_DATA_DIR": str(data_dir),
            "TRAINYARD_DATABASE_URL": db_url,
            "TRAINYARD_HOST": "127.0.0.1",
            "TRAINYARD_PORT": self.url.rsplit(":", 1)[1],
            "TRAINYARD_TRAINER_PYTHON": sys.executable,
            # short leases so a restarted service takes over a killed one's runs quickly
            "TRAINYARD_LEASE_S": "4",
            "TRAINYARD_RECONCILE_INTERVAL_S": "0.5",
            **env,
        }
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.client = httpx.Client(base_url=self.url + "/api/v1", timeout=30)

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    def start(self, wait_http: bool = True) -> "Service":
        self.starts += 1
        log = open(self.log_dir / f"service-{id(self)}-{self.starts}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *self.command],
                                     env=self.env, cwd=REPO,
                                     stdout=log, stderr=subprocess.STDOUT)
        if wait_http:
            deadline = time.time() + 60
            while time.time() < deadline:
                assert self.proc.poll() is None, f"the service exited:\n{self.log_tail()}"
                try:
                    if self.client.get("/health").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            raise AssertionError(f"the service did not answer within 60 s:\n{self.log_tail()}")
        return self

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 60) -> str:
        logs = sorted(self.log_dir.glob(f"service-{id(self)}-*.log"))
        return "\n".join("".join(p.read_text().splitlines(True)[-n:]) for p in logs)

    # -- the REST API -----------------------------------------------------------------------------
    def submit(self, spec: dict) -> str:
        r = self.client.post("/runs", json=spec)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def run(self, run_id: str) -> dict:
        r = self.client.get(f"/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, run_id: str, until, timeout: float = 300, what: str = "") -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.run(run_id)
            if until(run):
                return run
            if run["status"] in TERMINAL:
                raise AssertionError(f"run {run_id} ended {run['status']} ({run['status_reason']}) "
                                     f"before being {what}\n{self.log_tail()}")
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the service died:\n{self.log_tail()}")
            time.sleep(0.3)
        raise AssertionError(f"run {run_id} not {what} after {timeout}s: {run['status']} "
                             f"({run['status_reason']})\n{self.log_tail()}")

    def events(self, run_id: str) -> list[dict]:
        return self.client.get(f"/runs/{run_id}/events", params={"limit": 1000}).json()["events"]

    def metrics(self, run_id: str) -> list[dict]:
        return self.client.get(f"/runs/{run_id}/metrics", params={"limit": 10000}).json()["points"]

    def logs(self, run_id: str) -> str:
        page = self.client.get(f"/runs/{run_id}/logs", params={"limit": 10000}).json()
        return "".join(c["text"] for c in page["chunks"])


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'trainyard.db'}"
    upgrade(url)
    return url


@pytest.fixture
def service(sqlite_url, tmp_path):
    made: list[Service] = []

    def make(**env: str) -> Service:
        svc = Service(sqlite_url, tmp_path / "data", tmp_path, **env)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop()
        svc.client.close()
    kill_processes_mentioning(str(tmp_path / "data" / "runs"))  # never leave a trainer behind


def _db(url: str):
    return make_sessionmaker(make_engine(url))


def _status_path(events: list[dict]) -> list[str]:
    return [e["to_status"] for e in events if e["kind"] == "status"]


def _training(run: dict) -> bool:
    return run["status"] == "training" and run["progress"]["step"] > 0


# -- the tests ------------------------------------------------------------------------------------
def test_a_local_run_is_trained_evaluated_and_recorded(service, sqlite_url):
    svc = service().start()
    run_id = svc.submit(tiny_spec("e2e-succeeds"))
    run = svc.wait(run_id, lambda r: r["status"] in TERMINAL, what="ended")
    assert run["status"] == "succeeded", run["status_reason"]

    events = svc.events(run_id)
    assert _status_path(events) == ["pending", "provisioning", "bootstrapping", "training", "evaluating",
                                    "succeeded"]
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

    with _db(sqlite_url)() as s:
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


def test_cancel_mid_training_stops_the_trainer(service):
    svc = service().start()
    run_id = svc.submit(tiny_spec("e2e-cancel", train_tokens=50_000))
    svc.wait(run_id, _training, what="training")
    run_dir = svc.runs_dir / f"ty-{run_id}-0"
    assert processes_mentioning(str(run_dir)), "the trainer should be running"

    r = svc.client.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    run = svc.wait(run_id, lambda r: r["status"] in TERMINAL, timeout=60, what="ended")
    assert (run["status"], run["status_reason"]) == ("cancelled", "cancelled by the user")
    assert processes_mentioning(str(run_dir)) == []
    assert _status_path(svc.events(run_id))[-1] == "cancelled"
    assert svc.client.post(f"/runs/{run_id}/cancel").status_code == 409


def test_the_service_killed_mid_training_finishes_the_run_without_a_second_trainer(service):
    svc = service().start()
    run_id = svc.submit(tiny_spec("e2e-kill9", train_tokens=16384))
    svc.wait(run_id, _training, what="training")
    run_dir = svc.runs_dir / f"ty-{run_id}-0"
    trainer_pid = int((run_dir / "train.pid").read_text())

    svc.kill9()
    assert processes_mentioning(str(run_dir)), "the trainer must outlive the service"
    svc.start()  # a new process: another worker id, so it must wait for the old lease to expire
    run = svc.wait(run_id, lambda r: r["status"] in TERMINAL, what="ended")
    assert run["status"] == "succeeded", run["status_reason"]

    events = svc.events(run_id)
    assert len([e for e in events if e["message"].startswith("trainer launched")]) == 1
    workers = [e["message"].split()[1] for e in events if e["kind"] == "worker"]
    assert len(set(workers)) == 2 and workers[0] != workers[-1]  # the killed worker, then the new one
    assert int((run_dir / "train.pid").read_text()) == trainer_pid
    starts = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "start"]
    assert len(starts) == 1
    # metrics were read exactly once across the restart: one point per logged step
    steps = [p["step"] for p in svc.metrics(run_id) if p["kind"] == "train"]
    assert len(steps) == len(set(steps))
    assert processes_mentioning(str(run_dir)) == []


def test_a_run_whose_data_is_missing_fails_with_a_clear_reason(service, sqlite_url, tmp_path):
    svc = service().start()
    missing = tmp_path / "nowhere" / "books"
    run_id = svc.submit(tiny_spec("e2e-missing", source=str(missing)))
    run = svc.wait(run_id, lambda r: r["status"] in TERMINAL, timeout=120, what="ended")
    assert run["status"] == "failed"
    assert run["status_reason"] == (f"data preparation failed: source {missing} does not exist "
                                    f"(expected a file, a folder, builtin:corpus or hf:NAME[:CONFIG])")
    assert svc.metrics(run_id) == []
    with _db(sqlite_url)() as s:
        (inst,) = s.scalars(select(Instance).where(Instance.run_id == run_id)).all()
        assert inst.terminated_at is not None
    assert processes_mentioning(str(svc.runs_dir / f"ty-{run_id}-0")) == []


WORKER = ("worker",)


def test_two_workers_on_postgresql_execute_each_of_ten_runs_exactly_once(pg_server_url, tmp_path):
    from orchestrator.db.models import RunEvent, Run
    from orchestrator.runs import create_run
    from orchestrator.spec import validate_spec

    url = pg_server_url()
    upgrade(url)
    factory = _db(url)
    spec = tiny_spec("e2e-many", train_tokens=2048, test_loss=False)
    spec["data"]["max_tokens"] = 20000
    spec["training"].update(log_every=1, eval_every=1000, checkpoint_every=1000)
    with factory.begin() as s:
        run_ids = [create_run(s, validate_spec({**spec, "name": f"many-{i}"})).id for i in range(10)]

    data_dir = tmp_path / "data"
    workers = [Service(url, data_dir, tmp_path, command=WORKER, TRAINYARD_WORKER_ID=f"worker-{n}",
                       TRAINYARD_MAX_CONCURRENT_RUNS="2", TRAINYARD_LEASE_S="15")
               for n in ("a", "b")]
    try:
        for w in workers:
            w.start(wait_http=False)
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
            w.stop()
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
                (e.kind, e.to_status, e.message) for e in events]
            took |= {e.message.split()[1] for e in events if e.kind == "worker"}
            assert len(s.scalars(select(Instance).where(Instance.run_id == run_id)).all()) == 1
            metrics = (data_dir / "runs" / f"ty-{run_id}-0" / "metrics.jsonl").read_text().splitlines()
            assert sum(json.loads(line)["kind"] == "start" for line in metrics) == 1
    assert took == {"worker-a", "worker-b"}  # both did work; each run was launched once (above)
