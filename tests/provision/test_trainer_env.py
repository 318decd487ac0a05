"""Issue 13's attack, replayed: a trainer sees only its run, never the service.

The service's environment holds a LEAKCANARY value in every secret it could have (each SecretStr
setting, the database URL, and the cloud, OpenAI, Hugging Face and AWS variables a machine may
carry). Then:
- the attacker's spec (`data.source: /proc/self/environ`, an artifact_uri of their choosing) is
  refused at the door, naming both fields;
- a legitimate local run's processes (the detached wrappers, torchrun, the trainer) hold no
  canary in their environment; they do hold the run's own settings (settings.node_env), which
  appear in no process's command line on the machine (what `ps` shows every user); what the run
  writes is its user's alone;
- the env file that carries a process's settings is mode 600 when the process starts, and gone
  once its shell has read it.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from orchestrator.api.app import create_app
from orchestrator.controller import Worker
from orchestrator.db.migrations import upgrade
from orchestrator.db.models import Run, RunStatus
from orchestrator.db.session import transaction
from orchestrator.runs import create_run, request_cancel
from orchestrator.settings import Settings
from orchestrator.spec import validate_spec
from provision.launch import Launch
from provision.local import LocalProvider

CANARY = "LEAKCANARY-9d41c7"
#: the run's own setting: it must reach the trainer, and never a command line
NODE_SECRET = "node-env-value-5be0a2"
#: secrets a service's machine may hold outside the settings
OUTSIDE = (
    "OPENAI_API_KEY",
    "LAMBDA_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GITHUB_TOKEN",
)


def secret_settings() -> list[str]:
    """TRAINYARD_<NAME> of every SecretStr setting, whatever settings are added later."""
    return [
        f"TRAINYARD_{name.upper()}"
        for name, f in Settings.model_fields.items()
        if f.annotation is SecretStr or SecretStr in typing.get_args(f.annotation)
    ]


@pytest.fixture
def settings(monkeypatch, tmp_path) -> Settings:
    """The service's settings, read from an environment full of canaries as `trainyard serve`
    reads it (the database and data dir are the test's)."""
    names = [*secret_settings(), "TRAINYARD_DATABASE_URL", *OUTSIDE]
    assert {"TRAINYARD_LAMBDA_API_KEY", "TRAINYARD_OPENAI_API_KEY"} <= set(names)
    for name in names:
        monkeypatch.setenv(name, f"{CANARY}-{name}")
    monkeypatch.setenv("TRAINYARD_LAMBDA_API_URL", "http://127.0.0.1:9")  # nothing may call out
    database_url = f"sqlite:///{tmp_path / 'trainyard.db'}"
    upgrade(database_url)
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        trainer_python=sys.executable,
        node_env={"WANDB_API_KEY": NODE_SECRET, "OMP_NUM_THREADS": "1"},
        orphan_sweep_interval_s=0,
        lease_s=30,
        reconcile_interval_s=0.1,
    )


def environ(pid: int) -> str:
    return (Path("/proc") / str(pid) / "environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")


def command_lines() -> dict[int, str]:
    """Every live process's command line on this machine, as `ps` shows them to any user."""
    lines = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return lines


def mentioning(text: str) -> dict[int, str]:
    return {pid: line for pid, line in command_lines().items() if text in line and pid != os.getpid()}


def until(what: Callable[[], object], timeout_s: float, step: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        step()
        time.sleep(0.1)


def test_the_attack_spec_is_refused_at_the_door(settings, tmp_path):
    attack = {"name": "steal", "data": {"source": "/proc/self/environ"}, "artifact_uri": (tmp_path / "loot").as_uri()}
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        r = client.post("/api/v1/runs", json=attack)
        assert r.status_code == 422, r.text
        assert {e["field"] for e in r.json()["detail"]["errors"]} == {"data.source", "artifact_uri"}
        assert client.get("/api/v1/runs").json()["total"] == 0
    assert CANARY not in r.text


def test_a_local_runs_processes_see_only_the_run(settings):
    """A real run of a tiny GPT on the local provider, driven by the controller."""
    factory = sessionmaker(create_engine(settings.resolved_database_url), expire_on_commit=False)
    worker = Worker(settings, factory, providers={"local": LocalProvider(settings.runs_dir, python=sys.executable)})
    spec = {
        "name": "env",
        "model": {"overrides": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
        "data": {"max_tokens": 40_000},  # ~36k to train on: a step at a time, it outlasts the test
        "training": {"seq_len": 32, "micro_batch": 1, "max_tokens": 30_000, "log_every": 1, "eval_every": 0},
    }
    with transaction(factory) as session:
        run_id = create_run(session, validate_spec(spec)).id
    run_dir = settings.runs_dir / f"ty-{run_id}-0"

    def run() -> Run:
        with factory() as session:
            return session.get_one(Run, run_id)

    try:
        # its trainer has logged a step: every process of the run is up
        until(lambda: run().step > 0 or RunStatus(run().status).is_terminal, 120, worker.reconcile_once)
        assert run().status == RunStatus.training.value, run().status_reason
        procs = mentioning(str(run_dir))
        trainers = [pid for pid, line in procs.items() if "-m trainer.train" in line and "python" in line.split()[0]]
        assert trainers, procs  # torchrun's agent and its worker, under the detached wrapper
        for pid, line in procs.items():
            assert CANARY not in environ(pid), line
        assert all(f"WANDB_API_KEY={NODE_SECRET}" in environ(pid) for pid in trainers)
        shown = "\n".join(command_lines().values())
        assert NODE_SECRET not in shown and CANARY not in shown
        assert not list(run_dir.glob(".*.env"))  # read and deleted by each process's shell
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        shards = list((run_dir / "data").glob("*.bin"))
        assert shards and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in shards)
        with transaction(factory) as session:
            request_cancel(session, run_id)
        until(lambda: RunStatus(run().status).is_terminal and run().lease_token is None, 60, worker.reconcile_once)
        assert run().status == RunStatus.cancelled.value and mentioning(str(run_dir)) == {}
    finally:
        worker.close()
        for pid in mentioning(str(run_dir)):  # never leave a trainer behind
            os.kill(pid, signal.SIGKILL)


def test_the_env_file_is_private_and_gone_once_read(tmp_path):
    provider = LocalProvider(tmp_path / "runs", python=sys.executable)
    node = provider.node(provider.launch(name="ty-envfile-0", instance_type="local", region="local"))
    workdir = str(tmp_path / "runs" / "ty-envfile-0")
    modes: list[int] = []
    start = node.start_detached

    def start_detached(command: str, *, workdir: str, name: str = "train") -> int:
        modes.append(stat.S_IMODE(os.stat(f"{workdir}/.{name}.env").st_mode))  # as the process finds it
        return start(command, workdir=workdir, name=name)

    node.start_detached = start_detached  # type: ignore[method-assign]
    dump = "import os, sys; open(sys.argv[1], 'w').write(os.environ.get('WANDB_API_KEY', 'missing'))"
    launch = Launch("probe", workdir, (sys.executable, "-c", dump, f"{workdir}/seen"), {"WANDB_API_KEY": NODE_SECRET})
    launch.start(node)
    until(lambda: not node.status(workdir=workdir, name="probe").running, 30)
    assert node.status(workdir=workdir, name="probe").exit_code == 0, (Path(workdir) / "probe.log").read_text()
    assert modes == [0o600]
    assert (Path(workdir) / "seen").read_text() == NODE_SECRET
    assert stat.S_IMODE(os.stat(f"{workdir}/seen").st_mode) == 0o600  # the process's umask is 077
    assert not Path(launch.env_file).exists() and NODE_SECRET not in launch.command
