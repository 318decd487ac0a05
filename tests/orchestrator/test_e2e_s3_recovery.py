"""End to end on the Lambda simulator with an S3 artifact store (moto's standalone server on
loopback, enforcing IAM like AWS): the service (a real `trainyard serve`) runs 2-node runs whose
checkpoints go to S3 while they train, replaces a node killed mid-training with a new one that
resumes from the last checkpoint in the store, caches prepared data in S3 for the next node, and
hands nodes credentials that reach their own run's folder (and their data set's cache) only.

The service holds the only long-lived key (an IAM user allowed s3/iam/sts); boto3 finds it in the
service's environment. Nodes get nothing but the credentials file the controller writes.
"""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select

from orchestrator.controller.storage import data_name
from orchestrator.db.models import Instance
from orchestrator.spec import validate_spec
from orchestrator_helpers import admin, assert_nothing_left, lambda_spec, sim_instances, start_lambda_service
from s3server import admin_client, iam_moto_server
from trainer.artifacts import manifest as mf

BUCKET = "ty-e2e"


@pytest.fixture(scope="module")
def s3():
    """(endpoint, the service's credentials) on a moto server that enforces IAM."""
    with iam_moto_server(BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def svc(lsim, s3, tmp_path_factory):
    url, service_key = s3
    service = start_lambda_service(
        lsim,
        tmp_path_factory.mktemp("s3service"),
        AWS_ACCESS_KEY_ID=service_key["access_key_id"],
        AWS_SECRET_ACCESS_KEY=service_key["secret_access_key"],
        AWS_DEFAULT_REGION="us-east-1",
        TRAINYARD_ARTIFACT_URI=f"s3://{BUCKET}/trainyard",
        TRAINYARD_ARTIFACT_ENDPOINT_URL=url,
    )
    service.s3 = s3
    yield service
    service.close()


def stored_while_training(svc, run_id: str, at_least_step: int):
    def check(run: dict) -> bool:
        return run["status"] == "training" and any(
            c["state"] == "stored" and c["step"] >= at_least_step for c in svc.checkpoints(run_id)
        )

    return check


def machine_disk(svc, instance_id: str) -> Path:
    return Path(next(m["disk"] for m in admin(svc, "GET", "/machines") if m["id"] == instance_id))


def node_credentials(svc, run_id: str, instance_name: str) -> dict:
    inst = next(i for i in sim_instances(svc, run_id) if i.name == instance_name)
    ini = configparser.ConfigParser()
    path = machine_disk(svc, inst.id) / "trainyard" / "runs" / instance_name / ".aws-credentials"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    ini.read(path)
    return dict(ini["default"])


def test_a_two_node_run_stores_checkpoints_in_s3_and_survives_losing_node_0(svc, tmp_path):
    s = lambda_spec("s3-recover", long=True)
    s["training"]["max_tokens"] = 25_000  # ~200 steps: time to look at it and kill a node mid-run
    run_id = svc.submit(s)
    svc.wait(run_id, stored_while_training(svc, run_id, 16), timeout=240, what="storing checkpoints in S3")
    stored_before = max(c["step"] for c in svc.checkpoints(run_id) if c["state"] == "stored")
    # what a node's credentials reach: its run's folder and its data set's cache, nothing else
    url, _key = svc.s3
    creds = node_credentials(svc, run_id, f"ty-{run_id}-1")
    node_s3 = admin_client(
        url, key=creds["aws_access_key_id"], secret=creds["aws_secret_access_key"], token=creds["aws_session_token"]
    )
    own = f"trainyard/runs/{run_id}/scratch"
    node_s3.put_object(Bucket=BUCKET, Key=own, Body=b"ok")
    assert node_s3.get_object(Bucket=BUCKET, Key=own)["Body"].read() == b"ok"
    data_manifest = f"trainyard/data/{data_name(validate_spec(s))}/manifest.json"
    assert "splits" in json.loads(node_s3.get_object(Bucket=BUCKET, Key=data_manifest)["Body"].read())
    for call in (
        lambda: node_s3.list_objects_v2(Bucket=BUCKET, Prefix="trainyard/"),
        lambda: node_s3.put_object(Bucket=BUCKET, Key="trainyard/runs/another-run/x", Body=b"no"),
        lambda: node_s3.put_object(Bucket=BUCKET, Key="trainyard/data/d-other/manifest.json", Body=b"no"),
        lambda: node_s3.get_object(Bucket=BUCKET, Key="trainyard/runs"),
    ):
        with pytest.raises(ClientError, match="AccessDenied"):
            call()

    victim = next(i for i in sim_instances(svc, run_id) if i.name == f"ty-{run_id}-0")
    admin(svc, "POST", "/faults", json={"kind": "kill_instance", "instance_id": victim.id, "status": "unhealthy"})

    run = svc.wait_ended(run_id, timeout=300)
    assert run["status"] == "succeeded", (run["status_reason"], svc.log_tail())
    events = svc.events(run_id)
    messages = "\n".join(e["message"] for e in events)
    (recovery,) = [e["message"] for e in events if e["kind"] == "recovery"]
    assert f"node 0 (ty-{run_id}-0) is unhealthy at provider lambda" in recovery
    assert f"replacing ty-{run_id}-0 with a new node" in recovery and "(recovery 1 of 2)" in recovery
    statuses = [e["to_status"] for e in events if e["kind"] == "status"]
    assert statuses[statuses.index("recovering") :] == ["recovering", "training", "evaluating", "succeeded"]
    # the new node 0 pulled the data from the cache and the checkpoint from the store
    assert "stored in the data cache for later runs" in messages  # the first nodes: one of them prepared it
    assert f"ty-{run_id}-0r1: the prepared data came from the store's data cache" in messages
    resumed = [
        int(m.split("resumed from step ")[1].split()[0].rstrip(","))
        for m in messages.splitlines()
        if "trainer started" in m and "resumed from step" in m
    ]
    assert resumed and resumed[-1] >= stored_before, messages

    # the curve goes on from the checkpoint: every step once, none restarted from 0
    steps = [
        p["step"]
        for p in svc.client.get(f"/runs/{run_id}/metrics", params={"limit": 10000, "kind": "train"}).json()["points"]
    ]
    assert steps == sorted(set(steps)) and steps[-1] == run["progress"]["step"]
    assert any(step > resumed[-1] for step in steps)

    with svc.db() as session:
        rows = session.scalars(select(Instance).where(Instance.run_id == run_id).order_by(Instance.id)).all()
    assert sorted(r.name for r in rows) == [f"ty-{run_id}-0", f"ty-{run_id}-0r1", f"ty-{run_id}-1"]
    assert all(r.terminated_at is not None for r in rows)
    assert_nothing_left(svc, run_id)

    # every stored checkpoint is listed with its manifest, and downloads with every hash checked
    stored = [c for c in svc.checkpoints(run_id) if c["state"] == "stored"]
    assert stored and all(
        c["uri"].startswith(f"s3://{BUCKET}/trainyard/runs/{run_id}/checkpoints/step_") for c in stored
    )
    for c in stored:
        detail = svc.client.get(f"/runs/{run_id}/checkpoints/{c['step']}").json()
        assert detail["manifest"]["step"] == c["step"] and {f["name"] for f in detail["files"]} >= {"model.safetensors"}
    latest = max(c["step"] for c in stored)
    got = svc.cli("checkpoints", "download", run_id, "--out", str(tmp_path / "latest"))
    assert got.returncode == 0, got.stderr
    assert mf.verify(tmp_path / "latest")["step"] == latest

    # the run has ended: its nodes' credentials no longer work, even before they expire (the
    # run's role is deleted; AWS answers AccessDenied, moto an error 500 for the orphaned session)
    with pytest.raises(ClientError):
        node_s3.get_object(Bucket=BUCKET, Key=own)
