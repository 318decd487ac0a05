"""Helpers for the orchestrator's tests that are not fixtures (those are in conftest.py).

- The service as a user runs it: `Service` (`trainyard serve`, or a bare `trainyard worker`, as a
  subprocess on a free loopback port), `api_service` (one without a controller, migrated by
  `trainyard db upgrade`), `trainyard` (the CLI), `cli_env`, `one_error_line`, `wait_http`, and
  the processes a run leaves (`processes_mentioning`).
- Runs in the database: `sessions`, `submit_run`, `set_run`, `run_of`; a Worker driven one pass at
  a time (`drive` until `ended`).
- Specs: `spec_error` (what a bad one raises); small enough for CPU: `tiny_spec` (local provider),
  `lambda_spec` (the Lambda simulator).
- The service on the Lambda simulator: `start_lambda_service`, `admin`, `sim_instances`,
  `assert_nothing_left`.
- The fake judge's scores: `quality`, `content_judge`.

Imported as `orchestrator_helpers` (pytest puts this folder on sys.path, as it does `tests/` for
simhelpers, openai_fake and s3server).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from fakes import FakeProvider
from openai_fake import score_by_content
from orchestrator.db.models import Instance, LogChunk, Run, RunStatus, utcnow
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.errors import InvalidSpecError
from orchestrator.runs import create_run, instance_name
from orchestrator.spec import parse_spec_yaml, validate_spec

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from orchestrator.controller import Worker

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {s.value for s in RunStatus if s.is_terminal}  # as the API shows a run's status
BIN = Path(sys.executable).with_name("trainyard")
# the installed entry point when `pip install -e .` ran; the same code via -m otherwise
TRAINYARD = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "orchestrator.cli"]


# -- the service and the CLI, as subprocesses ----------------------------------------------------
#: the PostgreSQL server the tests and benchmarks make their databases on (trust auth)
PG_ADMIN_URL = os.environ.get("TRAINYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def create_pg_database(prefix: str) -> str:
    """The URL of a new, empty database `<prefix>_<random>` on PG_ADMIN_URL's server."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    """Drop a database create_pg_database made (its connections closed by force)."""
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(data_dir: Path | None = None, api_url: str | None = None) -> dict:
    """This process's environment without any TRAINYARD_ setting, then the data dir (and a config
    dir in it) and the service's address where given (PYTHONPATH: the checkout, for `python -m orchestrator.cli`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env["PYTHONPATH"] = str(REPO)
    if data_dir is not None:
        env["TRAINYARD_DATA_DIR"] = str(data_dir)
        env["XDG_CONFIG_HOME"] = str(data_dir / "config")  # the CLI's token file: the test's, never the user's
    if api_url:
        env["TRAINYARD_API_URL"] = api_url
    return env


def local_client(app: FastAPI) -> TestClient:
    """The app in process, called as a client on this machine calls it: Host 127.0.0.1, a name the
    service answers to (TestClient's default `testserver` it refuses: orchestrator/api/hosts.py)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1")


def trainyard(*args: str, env: dict, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The `trainyard` CLI, run to its end as a user runs it (no stdin)."""
    return subprocess.run(
        [*TRAINYARD, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    return lines[0]


def wait_http(
    url: str, proc: subprocess.Popen, what: str, output: Callable[[], str] = str, timeout_s: float = 60
) -> None:
    """Until GET `url` answers 200. AssertionError with `output()` (the process's log) if `proc`
    exits first or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"{what} exited:\n{output()}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what} did not answer within {timeout_s:.0f} s:\n{output()}"
        time.sleep(0.2)


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
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


class Service:
    """`trainyard serve` (REST API + controller), or any other long-running command such as
    `("worker",)` or `("serve", "--no-controller")`, as a subprocess on a free loopback port.

    It has a data dir and a database of its own: `db_url`, or by default the embedded SQLite file
    in the data dir, which the command then finds by itself. `env`: more settings (the defaults
    are short leases and passes, so a restarted service takes over a killed one's runs quickly).
    Its output goes to a log file in the data dir (`log_tail`). `close()` when done.
    """

    def __init__(self, data_dir: Path, db_url: str | None = None, *, command: tuple[str, ...] = ("serve",), **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.db_url = db_url or f"sqlite:///{data_dir / 'trainyard.db'}"
        self.command = command
        self.env = {
            **cli_env(data_dir, self.url),
            **({"TRAINYARD_DATABASE_URL": db_url} if db_url else {}),
            "TRAINYARD_HOST": "127.0.0.1",
            "TRAINYARD_PORT": str(self.port),
            "TRAINYARD_TRAINER_PYTHON": sys.executable,
            "TRAINYARD_LEASE_S": "4",
            "TRAINYARD_RECONCILE_INTERVAL_S": "0.5",
            # the test's own files (data sets, instruction data) sit next to the data dir
            "TRAINYARD_DATA_ROOTS": json.dumps([str(data_dir.parent)]),
            **env,
        }
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.client = httpx.Client(base_url=self.url + "/api/v1", timeout=30)
        self._db: sessionmaker[Session] | None = None

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def db(self) -> sessionmaker[Session]:
        """Sessions on the service's database, for what the API does not show."""
        if self._db is None:
            self._db = sessions(self.db_url)
        return self._db

    def start(self, wait: bool = True) -> Service:
        """Start the command; with `wait`, return once the API answers."""
        self.starts += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / f"service-{id(self)}-{self.starts}.log", "w") as log:
            self.proc = subprocess.Popen(
                [*TRAINYARD, *self.command],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            wait_http(self.url + "/api/v1/health", self.proc, "the service", self.log_tail)
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

    def close(self) -> None:
        self.stop()
        self.client.close()
        if self._db is not None:
            self._db.kw["bind"].dispose()

    def log_tail(self, n: int = 60) -> str:
        logs = sorted(self.data_dir.glob(f"service-{id(self)}-*.log"))
        return "\n".join("".join(p.read_text().splitlines(True)[-n:]) for p in logs)

    def cli(self, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """The `trainyard` CLI against this service, with no setting but its address."""
        return trainyard(*args, env=cli_env(api_url=self.url), cwd=cwd, timeout=timeout)

    # -- the database, written the way the controller writes it ------------------------------------
    def set_run(self, run_id: str, **columns) -> None:
        set_run(self.db, run_id, **columns)

    def add_log(self, run_id: str, *texts: str) -> None:
        with transaction(self.db) as s:
            for text in texts:
                s.add(LogChunk(run_id=run_id, text=text, time=utcnow()))

    # -- the REST API -------------------------------------------------------------------------------
    def submit(self, spec: dict) -> str:
        r = self.client.post("/runs", json=spec)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def run(self, run_id: str) -> dict:
        r = self.client.get(f"/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, run_id: str, until, timeout: float = 300, what: str = "") -> dict:
        """The run once `until(run)` holds; AssertionError if it ends or the service dies first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.run(run_id)
            if until(run):
                return run
            if run["status"] in TERMINAL:
                raise AssertionError(
                    f"run {run_id} ended {run['status']} ({run['status_reason']}) "
                    f"before being {what}\n{self.log_tail()}"
                )
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the service died:\n{self.log_tail()}")
            time.sleep(0.3)
        raise AssertionError(
            f"run {run_id} not {what} after {timeout}s: {run['status']} ({run['status_reason']})\n{self.log_tail()}"
        )

    def wait_ended(self, run_id: str, timeout: float = 120) -> dict:
        """The run once it ended and every instance it had is confirmed terminated."""
        self.wait(run_id, lambda r: r["status"] in TERMINAL, timeout=timeout, what="ended")
        deadline = time.time() + 30
        while time.time() < deadline:
            with self.db() as s:
                rows = s.scalars(select(Instance).where(Instance.run_id == run_id)).all()
            if all(r.terminated_at is not None for r in rows):
                return self.run(run_id)
            time.sleep(0.2)
        raise AssertionError(f"instances of {run_id} not terminated:\n{self.log_tail()}")

    def events(self, run_id: str) -> list[dict]:
        return self.client.get(f"/runs/{run_id}/events", params={"limit": 1000}).json()["events"]

    def metrics(self, run_id: str) -> list[dict]:
        return self.client.get(f"/runs/{run_id}/metrics", params={"limit": 10000}).json()["points"]

    def logs(self, run_id: str) -> str:
        page = self.client.get(f"/runs/{run_id}/logs", params={"limit": 10000}).json()
        return "".join(c["text"] for c in page["chunks"])

    def checkpoints(self, run_id: str) -> list[dict]:
        r = self.client.get(f"/runs/{run_id}/checkpoints")
        assert r.status_code == 200, r.text
        return r.json()["items"]


def api_service(data_dir: Path, **env: str) -> Service:
    """A started `trainyard serve --no-controller` on the embedded SQLite database in `data_dir`,
    migrated first by `trainyard db upgrade`."""
    svc = Service(data_dir, command=("serve", "--no-controller"), **env)
    up = trainyard("db", "upgrade", env=svc.env)
    assert up.returncode == 0, up.stderr
    assert "is at revision" in up.stderr and up.stdout == ""
    return svc.start()


def training(run: dict) -> bool:
    """The run (as the API shows it) is training and has logged a step."""
    return run["status"] == "training" and run["progress"]["step"] > 0


# -- runs in the database ------------------------------------------------------------------------
def sessions(url: str) -> sessionmaker[Session]:
    """A session factory on `url`; `factory.kw["bind"]` is its engine (dispose it when done)."""
    return make_sessionmaker(make_engine(url))


def submit_run(factory, **spec) -> str:
    """A pending run named "t" (`spec`: the rest of its spec), as the API creates it."""
    with transaction(factory) as s:
        return create_run(s, validate_spec({"name": "t", **spec})).id


def set_run(factory, run_id: str, **columns) -> None:
    with transaction(factory) as s:
        run = s.get(Run, run_id)
        for k, v in columns.items():
            setattr(run, k, v)


def run_of(factory, run_id: str) -> Run:
    with factory() as s:
        return s.get(Run, run_id)


def drive(worker: Worker, factory, run_id: str, until, timeout: float = 60.0) -> Run:
    """Reconcile until `until(run)` holds; AssertionError naming the run's state after `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        worker.reconcile_once()
        run = run_of(factory, run_id)
        if until(run):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} is still {run.status} ({run.status_reason}) after {timeout}s")


def ended(run: Run) -> bool:
    """The run is over and no worker holds it (its instances are confirmed terminated)."""
    return RunStatus(run.status).is_terminal and run.lease_token is None


# -- specs ---------------------------------------------------------------------------------------
def spec_error(text: str) -> InvalidSpecError:
    """The error that reading the YAML spec `text` raises (AssertionError if it is accepted)."""
    with pytest.raises(InvalidSpecError) as info:
        parse_spec_yaml(text)
    return info.value


def tiny_spec(name: str, *, train_tokens: int = 12288, source: str = "builtin:corpus", test_loss: bool = True) -> dict:
    """gpt2-tiny cut down (2 layers, 64 wide) on a slice of the shipped corpus, on this machine:
    tens of seconds on 2 CPU cores."""
    return {
        "name": name,
        "model": {"preset": "gpt2-tiny", "overrides": {"n_layer": 2, "n_embd": 64, "n_head": 2}},
        "data": {"source": source, "max_tokens": 60000},
        "training": {
            "seq_len": 64,
            "micro_batch": 8,
            "max_tokens": train_tokens,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 2,
            "log_every": 2,
            "eval_every": 10,
            "eval_tokens": 2048,
            "checkpoint_every": 10,
        },
        "evaluation": {"test_loss": test_loss, "test_max_tokens": 2048},
    }


def lambda_spec(
    name: str,
    *,
    nodes: int = 2,
    train_tokens: int = 8192,
    instance_type: str = "cpu_4x_general",
    fallbacks: tuple[str, ...] = (),
    regions: tuple[str, ...] = (),
    placement_timeout_s: float = 60,
    test_loss: bool = True,
    long: bool = False,
) -> dict:
    """A tiny 1-layer GPT on the Lambda simulator; `long`: one sequence per step, hundreds of steps
    (the data holds ~53k training tokens), so there is time to act while it trains."""
    micro_batch, train_tokens = (1, 50_000) if long else (4, train_tokens)
    return {
        "name": name,
        "model": {"preset": "gpt2-tiny", "overrides": {"n_layer": 1, "n_embd": 64, "n_head": 2}},
        "data": {"source": "builtin:corpus", "max_tokens": 60000},
        "training": {
            "seq_len": 64,
            "micro_batch": micro_batch,
            "max_tokens": train_tokens,
            "lr": 2e-3,
            "min_lr": 2e-4,
            "warmup_steps": 2,
            "log_every": 2,
            "eval_every": 1000,
            "eval_tokens": 512,
            "checkpoint_every": 8,
        },
        "compute": {
            "provider": "lambda",
            "instance_type": instance_type,
            "fallback_instance_types": list(fallbacks),
            "regions": list(regions),
            "nodes": nodes,
            "placement_timeout_s": placement_timeout_s,
        },
        "evaluation": {"test_loss": test_loss, "test_max_tokens": 1024},
    }


# -- the service on the Lambda simulator ---------------------------------------------------------
#: the simulator's billing minute for the end-to-end tests (and so the controller's), in seconds
LAMBDA_MINUTE_S = 20.0
KEY_NAME = "trainyard-e2e"
LIVE = ("booting", "active", "unhealthy", "terminating")


def start_lambda_service(lsim, root: Path, db_url: str | None = None, **env: str) -> Service:
    """A started `trainyard serve` for runs on the simulator `lsim` (its SSH key registered there,
    the simulator's API key as its Lambda key), with a data dir under `root` and a database
    (`db_url`, migrated here; default SQLite under `root`); `env`: more settings. `service.sim` is `lsim`."""
    from orchestrator.db.migrations import upgrade
    from provision.lambda_cloud.client import LambdaClient
    from simhelpers import FAST_RETRY, NODE_PYTHON, TORCH_SITE, write_key_pair  # slow to import

    api_key = lsim.cloud.config.api_key.get_secret_value()
    key_file, public = write_key_pair(root / "keys")
    with LambdaClient(api_key, base_url=lsim.url, retry=FAST_RETRY, launch_interval_s=0) as c:
        c.add_ssh_key(KEY_NAME, public)
    db_url = db_url or f"sqlite:///{root / 'trainyard.db'}"
    upgrade(db_url)
    service = Service(
        root / "data",
        db_url,
        TRAINYARD_LEASE_S="20",
        TRAINYARD_RECONCILE_INTERVAL_S="0.3",
        TRAINYARD_LAMBDA_API_KEY=api_key,
        TRAINYARD_LAMBDA_API_URL=lsim.url,
        TRAINYARD_LAMBDA_SSH_KEY_NAME=KEY_NAME,
        TRAINYARD_LAMBDA_SSH_PORT=str(lsim.cloud.config.ssh_port),
        TRAINYARD_LAMBDA_LAUNCH_INTERVAL_S="0.2",
        TRAINYARD_LAMBDA_RETRY_BASE_DELAY_S="0.05",
        TRAINYARD_LAMBDA_RETRY_MAX_DELAY_S="0.2",
        TRAINYARD_BILLING_MINUTE_S=str(LAMBDA_MINUTE_S),
        TRAINYARD_PLACEMENT_POLL_S="0.5",
        TRAINYARD_SSH_PRIVATE_KEY_FILE=str(key_file),
        TRAINYARD_SSH_USER=getpass.getuser(),
        TRAINYARD_SSH_CONNECT_TIMEOUT_S="3",
        TRAINYARD_NODE_PYTHON=NODE_PYTHON,
        TRAINYARD_NODE_TORCH_SITE_PACKAGES=TORCH_SITE,
        TRAINYARD_NODE_SOCKET_IFNAME="lo",  # every simulated node is this machine
        TRAINYARD_NODE_ENV=json.dumps({"OMP_NUM_THREADS": "1"}),
        TRAINYARD_NODE_ACTIVE_POLL_S="0.02",
        TRAINYARD_NODE_SSH_TIMEOUT_S="30",
        **env,
    )
    service.sim = lsim
    return service.start()


def admin(svc: Service, method: str, path: str, **kw) -> dict:
    """The simulator's admin API (/sim/v1): capacity, faults, machines, billing."""
    r = httpx.request(method, svc.sim.url + "/sim/v1" + path, timeout=10, trust_env=False, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def sim_instances(svc: Service, run_id: str) -> list:
    """The simulator's instances of the run, live or not."""
    with svc.sim.cloud.lock:
        return [i for i in svc.sim.cloud.instances.values() if (i.name or "").startswith(f"ty-{run_id}-")]


def assert_nothing_left(svc: Service, run_id: str) -> None:
    deadline = time.time() + 10
    while any(i.status in LIVE for i in sim_instances(svc, run_id)):
        assert time.time() < deadline, [(i.name, i.status) for i in sim_instances(svc, run_id)]
        time.sleep(0.1)


# -- the fake judge ------------------------------------------------------------------------------
def quality(answer: str, ref: str) -> int:
    """90 for the reference answer itself, 60 for a partial one ("partly ..."), 40 for a wrong one."""
    return 90 if answer == ref else 60 if answer.startswith("partly") else 40


def content_judge(body: dict) -> str:
    """The fake judge's reply: every answer scored by its content (`quality`), whatever its label."""
    return score_by_content(body, quality)


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """`app` on a free 127.0.0.1 port in a thread of this process, as `trainyard serve` runs it
    (uvicorn, lifespan on); yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def training_run_on(factory, provider: FakeProvider) -> tuple[str, str]:
    """A run training on one recorded, active instance of `provider` (a FakeProvider standing
    for Lambda): (run id, provider instance id)."""
    run_id = submit_run(
        factory, compute={"provider": "lambda", "instance_type": FakeProvider.INSTANCE_TYPE, "nodes": 1}
    )
    inst = provider.launch(name=instance_name(run_id, 0), instance_type=FakeProvider.INSTANCE_TYPE, region="here")
    now = utcnow()
    with transaction(factory) as s:
        run = s.get(Run, run_id)
        run.status, run.started_at = RunStatus.training.value, now
        s.add(
            Instance(
                run_id=run_id,
                rank=0,
                name=inst.name,
                provider="lambda",
                provider_instance_id=inst.id,
                instance_type=inst.instance_type,
                price_cents_per_hour=120,
                status="active",
                launched_at=now,
                active_at=now,
                workdir="/home/ubuntu/trainyard/runs/x",
                python="/usr/bin/python3",
            )
        )
    return run_id, inst.id
