"""The `local` provider: this machine, no cloud account, no SSH.

Its "instances" are working directories under the service's runs directory, one per instance name
(`RUNS_DIR/ty-<run>-<rank>`); the instance id is the directory name. An instance is active as soon
as its directory exists and costs nothing. Its node is a `LocalNode`, which runs the same shell
commands through invoke's local `Context` as the SSH providers run through Fabric, so the
controller drives a local run exactly as it drives a rented one.

What its processes see: this machine is the service's, so its shell environment holds the
service's secrets (TRAINYARD_* keys, cloud and OpenAI keys, HF_TOKEN, AWS_*). A local node runs
every command, the detached wrappers included, with only provision.launch.KEPT_ENV of it, and each
run process gets its own settings through its env file (launch.py); the run directories are the
service user's alone (mode 700).

Terminating stops whatever the controller started in the directory (prepare, trainer, evaluation)
and marks the instance terminated; the directory itself is kept, because it holds the run's logs,
metrics and checkpoints.

The instance record is a small JSON file in the directory, written atomically, so `list` and `get`
see the same thing after the service restarts.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from invoke import Context

import provision
from provision.base import Instance, InstanceStatus, InstanceType, Provider
from provision.errors import InvalidRequest, NodeError, NotFound
from provision.launch import kept_env
from provision.node import RUN_PROCESSES, LocalNode

INSTANCE_TYPE = "local"
REGION = "local"
#: the detached processes the controller may start in an instance's directory
_RECORD = ".instance.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class LocalProvider(Provider):
    """Runs nodes as directories on this machine. Every call is a few file operations."""

    name = "local"
    needs_bootstrap = False  # the trainer runs from this checkout, with `python`

    def __init__(self, runs_dir: str | Path, *, python: str, stop_grace_s: int = 10):
        self.runs_dir = Path(runs_dir).resolve()
        self.python = python
        self.stop_grace_s = stop_grace_s
        # The trainer package ships next to `provision/`; putting that folder on PYTHONPATH lets
        # `python -m trainer.*` work from a source checkout as well as from an installed wheel.
        self.source_root = str(Path(provision.__file__).resolve().parents[1])

    # -- catalog ----------------------------------------------------------------------------------
    def instance_types(self) -> list[InstanceType]:
        return [
            InstanceType(
                name=INSTANCE_TYPE,
                description="this machine",
                gpus=0,
                gpu_description="whatever this machine has (CPU if no GPU)",
                price_cents_per_hour=0,
                regions_with_capacity=(REGION,),
            )
        ]

    # -- instances --------------------------------------------------------------------------------
    def launch(self, *, name: str, instance_type: str, region: str) -> Instance:
        if not _NAME.match(name):
            raise InvalidRequest(f"instance name {name!r} is not a valid directory name")
        if instance_type != INSTANCE_TYPE:
            raise InvalidRequest(f"the local provider has one instance type, {INSTANCE_TYPE!r}, not {instance_type!r}")
        path = self.runs_dir / name
        path.mkdir(parents=True, exist_ok=True)
        for private in (self.runs_dir, path):  # the runs' data, logs and credentials files are ours alone
            private.chmod(0o700)
        now = time.time()
        self._write_record(
            path, {"name": name, "status": InstanceStatus.active.value, "launched_at": now, "active_at": now}
        )
        inst = self._instance(path)
        if inst is None:
            raise NodeError(f"the local instance record in {path} cannot be read back")
        return inst

    def get(self, instance_id: str) -> Instance | None:
        if not _NAME.match(instance_id):
            return None
        path = self.runs_dir / instance_id
        return self._instance(path) if (path / _RECORD).is_file() else None

    def list(self) -> list[Instance]:
        if not self.runs_dir.is_dir():
            return []
        found = []
        for path in sorted(self.runs_dir.iterdir()):
            if (path / _RECORD).is_file():
                inst = self._instance(path)
                if inst is not None:
                    found.append(inst)
        return found

    def terminate(self, instance_ids: builtins.list[str]) -> None:
        for instance_id in instance_ids:
            inst = self.get(instance_id)
            if inst is None or inst.status.is_gone:
                continue
            path = self.runs_dir / instance_id
            node = self.node(inst)
            for proc in RUN_PROCESSES:
                if (path / f"{proc}.pid").is_file():
                    node.stop(workdir=str(path), name=proc, grace_s=self.stop_grace_s)
            record = self._read_record(path)
            record.update(status=InstanceStatus.terminated.value, terminated_at=time.time())
            self._write_record(path, record)

    def node(self, instance: Instance) -> LocalNode:
        if instance.status.is_gone:
            raise NotFound(f"local instance {instance.name} is terminated")
        return _LocalRunNode(label=f"local:{instance.name}")

    # -- the record file --------------------------------------------------------------------------
    def _instance(self, path: Path) -> Instance | None:
        try:
            record = self._read_record(path)
            status = InstanceStatus(record["status"])
        except (KeyError, ValueError, NodeError):
            return None  # a half-written or foreign directory is not one of our instances
        return Instance(
            id=path.name,
            name=record.get("name", path.name),
            instance_type=INSTANCE_TYPE,
            region=REGION,
            status=status,
            price_cents_per_hour=0,
            public_ip="127.0.0.1",
            private_ip="127.0.0.1",
            ssh_port=0,
            extra={
                "workdir": str(path),
                "python": self.python,
                "env": {"PYTHONPATH": self.source_root},
            },
        )

    @staticmethod
    def _read_record(path: Path) -> dict:
        try:
            return json.loads((path / _RECORD).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise NodeError(f"cannot read the local instance record in {path}: {exc}") from exc

    @staticmethod
    def _write_record(path: Path, record: dict) -> None:
        tmp = path / (_RECORD + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path / _RECORD)


class _KeptEnvContext(Context):
    """invoke's local runner, giving every command only the kept part of the service's environment."""

    def run(self, command: str, **kwargs: Any) -> Any:
        return super().run(command, env=kept_env(os.environ), replace_env=True, **kwargs)


class _LocalRunNode(LocalNode):
    """This machine as a run's node: no command it runs inherits the service's environment."""

    def __init__(self, *, label: str):
        super().__init__(label=label)
        self.runner = _KeptEnvContext()
