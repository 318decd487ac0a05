"""A real job through the service image: the containerised `trainyard serve` (the image's own
command, on the host's network) drives a 1-node run on the Lambda simulator, whose instance is a
real sshd on 127.0.0.x, to `succeeded` with a test loss, its checkpoints stored in moto's S3
server on loopback (which enforces IAM like AWS).

So the image carries what the controller needs and nothing is baked in: the trainer's sources
(the node wheel it builds offline), paramiko, migrations, boto3 (the s3:// store and the node's
run-scoped grants). Its secrets come from outside: the Lambda key by environment, the SSH key and
the S3 credentials as mounted files; none of them shows in its logs or in the image.

The service is the orchestrator tests' `Service` (tests/orchestrator/orchestrator_helpers.py)
started by their `start_lambda_service`, with the process swapped for a container.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest

import orchestrator_helpers
from orchestrator_helpers import Service, assert_nothing_left, lambda_spec, start_lambda_service
from podman_helpers import IMAGE_UID, Container, image_text
from s3server import admin_client, iam_moto_server

BUCKET = "ty-image"


class ContainerService(Service):
    """`Service` whose `trainyard serve` runs in a container of `image`: only its TRAINYARD_* and
    AWS_* settings go in (by name, from the environment), and the test's folder holding its data
    dir, database and key files is mounted at the same path, so every path in them holds inside
    too; the keys folder read-only. The folder is handed to the image's user (uid 1000)."""

    def __init__(self, data_dir: Path, db_url: str | None = None, *, image: str, **env: str):
        super().__init__(data_dir, db_url, **env)
        self.image, self.root = image, data_dir.parent
        self.container: Container | None = None

    def start(self, wait: bool = True) -> ContainerService:
        self.starts += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", str(IMAGE_UID), str(self.root)], check=True, timeout=30)
        env = {k: v for k, v in self.env.items() if k.startswith(("TRAINYARD_", "AWS_"))}
        keys = str(self.root / "keys")
        mounts = [(str(self.root), str(self.root), ""), (keys, keys, "ro")]
        self.container = Container(self.image, env=env, mounts=mounts).start()
        if wait:
            self.container.wait_healthy()
        return self

    def stop(self) -> None:
        if self.container is not None:
            self.container.remove()

    def log_tail(self, n: int = 60) -> str:
        return "".join(self.container.logs().splitlines(True)[-n:]) if self.container else ""


@pytest.fixture(scope="module")
def lsim(tmp_path_factory):
    """The Lambda simulator (real sshd machines on 127.0.0.x), as the orchestrator tests' `lsim`."""
    from orchestrator_helpers import LAMBDA_MINUTE_S
    from provision.simulator import SimulatorServer
    from simhelpers import free_ssh_port, require_sshd, sim_config

    port = free_ssh_port()
    assert port is not None, "no free port for the simulated machines' sshd"
    config = sim_config(tmp_path_factory.mktemp("lsim"), require_sshd(), port, boot_s=0.5, minute_s=LAMBDA_MINUTE_S)
    server = SimulatorServer(config).start()
    yield server
    server.stop()


def test_a_lambda_run_through_the_image_succeeds_with_its_checkpoints_in_s3(image, lsim, tmp_path, monkeypatch):
    with iam_moto_server(BUCKET) as (s3_url, s3_key):
        keys = tmp_path / "keys"
        keys.mkdir()
        aws = keys / "aws-credentials"
        aws.write_text(
            f"[default]\naws_access_key_id = {s3_key['access_key_id']}\n"
            f"aws_secret_access_key = {s3_key['secret_access_key']}\n"
        )
        monkeypatch.setattr(orchestrator_helpers, "Service", functools.partial(ContainerService, image=image))
        svc = start_lambda_service(
            lsim,
            tmp_path,
            AWS_SHARED_CREDENTIALS_FILE=str(aws),
            AWS_DEFAULT_REGION="us-east-1",
            TRAINYARD_ARTIFACT_URI=f"s3://{BUCKET}/trainyard",
            TRAINYARD_ARTIFACT_ENDPOINT_URL=s3_url,
        )
        try:
            run_id = svc.submit(lambda_spec("image-run", nodes=1, train_tokens=4096))  # 16 steps, 2 checkpoints
            run = svc.wait_ended(run_id, timeout=300)
            assert run["status"] == "succeeded", (run["status_reason"], svc.log_tail())
            assert run["progress"]["test_loss"] > 0
            stored = [c for c in svc.checkpoints(run_id) if c["state"] == "stored"]
            assert stored and all(c["uri"].startswith(f"s3://{BUCKET}/trainyard/runs/{run_id}/") for c in stored)
            s3 = admin_client(s3_url, key=s3_key["access_key_id"], secret=s3_key["secret_access_key"])
            listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"trainyard/runs/{run_id}/")
            keys_in_s3 = [o["Key"] for o in listed.get("Contents", [])]
            assert any(k.endswith("manifest.json") for k in keys_in_s3), keys_in_s3
            assert_nothing_left(svc, run_id)
            logs = svc.container.logs()
        finally:
            svc.close()

    assert "trainyard serving on" in logs
    secrets = {
        "the Lambda key": lsim.cloud.config.api_key.get_secret_value(),
        "the S3 secret key": s3_key["secret_access_key"],
        "the SSH key": next(line for line in (keys / "id_ed25519").read_text().splitlines()[1:] if line),
    }
    made = image_text(image)
    for what, value in secrets.items():
        assert value not in logs, f"{what} is in the container's logs"
        assert value not in made, f"{what} is in the image"
