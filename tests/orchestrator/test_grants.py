"""A node's credentials reach its own run's prefix and nothing else, on a moto server that
enforces IAM (signatures, session tokens, role policies) the way AWS does."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from orchestrator.grants import grant_run_access, revoke_run_access, run_policy
from s3server import admin_client, iam_moto_server
from trainer.artifacts import ArtifactError, open_store
from trainer.artifacts import manifest as mf

REPO = Path(__file__).resolve().parents[2]
BUCKET = "ty-scoped"
MiB = 1 << 20


@pytest.fixture(scope="module")
def iam_server():
    """(endpoint, the service's long-lived credentials) on a moto server with IAM enforced."""
    with iam_moto_server(BUCKET) as server:
        yield server


def make_ckpt(path: Path) -> Path:
    rng = random.Random(3)
    path.mkdir(parents=True)
    files = {}
    for name, n in {
        "model.safetensors": 6 * MiB,
        "optimizer.pt": 1000,
        "state.pt": 10,
        "config.json": 2,
        "metrics.json": 2,
    }.items():
        (path / name).write_bytes(rng.randbytes(n))
        files[name] = {"bytes": n, "sha256": mf.sha256_file(path / name)}
    (path / mf.MANIFEST).write_text(json.dumps({"format": 1, "step": 1, "tokens": 1, "files": files}))
    return path


def raw_s3(url: str, creds: dict, token: bool = True):
    return admin_client(
        url,
        "s3",
        key=creds["access_key_id"],
        secret=creds["secret_access_key"],
        token=creds.get("session_token") if token else None,
    )


def test_the_server_refuses_unknown_keys(iam_server):
    url, _ = iam_server
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        admin_client(url).list_buckets()


def test_a_node_grant_reaches_only_its_run_prefix(iam_server, tmp_path):
    url, service = iam_server
    ckpt = make_ckpt(tmp_path / "ckpt")
    # the service commits a checkpoint of another run, and a file at a look-alike prefix
    open_store(
        f"s3://{BUCKET}/runs/r2", endpoint_url=url, credentials=service, state_dir=tmp_path / "s"
    ).put_checkpoint(ckpt, "step_000001")
    grant = grant_run_access(BUCKET, "runs/r1", credentials=service, endpoint_url=url, duration_s=900)
    assert grant.uri == f"s3://{BUCKET}/runs/r1"
    assert grant.secret_access_key not in repr(grant) and grant.session_token not in repr(grant)
    assert grant.access_key_id != service["access_key_id"]

    # inside its prefix: a multipart push, then a verified pull
    node = open_store(
        grant.uri, endpoint_url=url, credentials=grant.credentials(), part_size=5 * MiB, state_dir=tmp_path / "s"
    )
    assert node.put_checkpoint(ckpt, "step_000001").files_sent == 5
    node.get_checkpoint("step_000001", tmp_path / "pulled")
    assert mf.verify(tmp_path / "pulled")["step"] == 1

    # outside it: no write, no read, no listing, under a sibling, a look-alike or the root
    for other in ("runs/r2", "runs/r10", "runs", ""):
        store = open_store(
            f"s3://{BUCKET}/{other}".rstrip("/"),
            endpoint_url=url,
            credentials=grant.credentials(),
            state_dir=tmp_path / "s",
        )
        with pytest.raises(ArtifactError, match="access denied"):
            store.put_file(ckpt / "state.pt", "state.pt")
        with pytest.raises(ArtifactError, match="access denied"):
            store.put_checkpoint(ckpt, "step_000009")
        with pytest.raises(ArtifactError):
            store.get_checkpoint("step_000001", tmp_path / "stolen")
        with pytest.raises(ArtifactError, match="access denied"):
            store.list_checkpoints()
    assert not (tmp_path / "stolen").exists()
    s3 = raw_s3(url, grant.credentials())
    with pytest.raises(ClientError, match="AccessDenied"):  # it exists, and stays unreadable
        s3.get_object(Bucket=BUCKET, Key=f"runs/r2/step_000001/{mf.MANIFEST}")
    with pytest.raises(ClientError, match="AccessDenied"):  # not even its own objects can go
        s3.delete_object(Bucket=BUCKET, Key=f"runs/r1/step_000001/{mf.MANIFEST}")
    # the key alone, without the session token, is worth nothing
    with pytest.raises(ClientError):
        raw_s3(url, grant.credentials(), token=False).get_object(
            Bucket=BUCKET, Key=f"runs/r1/step_000001/{mf.MANIFEST}"
        )
    # and the service still sees everything
    service_store = open_store(f"s3://{BUCKET}/runs", endpoint_url=url, credentials=service, state_dir=tmp_path / "s")
    assert service_store.list_checkpoints() == ["r1/step_000001", "r2/step_000001"]


def test_a_revoked_grant_stops_working(iam_server):
    url, service = iam_server
    grant = grant_run_access(BUCKET, "runs/r3", credentials=service, endpoint_url=url)
    again = grant_run_access(BUCKET, "runs/r3", credentials=service, endpoint_url=url)  # idempotent
    assert again.role_arn == grant.role_arn
    s3 = raw_s3(url, grant.credentials())
    s3.put_object(Bucket=BUCKET, Key="runs/r3/a", Body=b"x")
    revoke_run_access(BUCKET, "runs/r3", credentials=service, endpoint_url=url)
    revoke_run_access(BUCKET, "runs/r3", credentials=service, endpoint_url=url)  # idempotent
    quick = admin_client(url, "s3", key=grant.access_key_id, secret=grant.secret_access_key, token=grant.session_token)
    quick.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(ClientError):
        quick.put_object(Bucket=BUCKET, Key="runs/r3/b", Body=b"x")


def test_the_node_cli_runs_on_the_grant_environment_alone(iam_server, tmp_path):
    url, service = iam_server
    ckpt = make_ckpt(tmp_path / "ckpt")
    grant = grant_run_access(BUCKET, "runs/r4", credentials=service, endpoint_url=url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(grant.env(), PYTHONPATH=str(REPO), TRAINYARD_ARTIFACT_STATE_DIR=str(tmp_path / "s"))

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "trainer.artifacts", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = cli("push", str(ckpt), f"{env['TRAINYARD_ARTIFACT_URI']}/step_000001")
    assert r.returncode == 0, r.stderr
    r = cli("push", str(ckpt), f"s3://{BUCKET}/runs/r5/step_000001")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "access denied" in r.stderr


def test_the_policy_names_only_the_run_prefix():
    policy = run_policy("b", "/runs/r1/")
    resources = [s["Resource"] for s in policy["Statement"]]
    assert resources == ["arn:aws:s3:::b/runs/r1/*"]
    actions = policy["Statement"][0]["Action"]
    assert "s3:DeleteObject" not in actions and "s3:ListBucket" not in actions
    with pytest.raises(ArtifactError):
        run_policy("b", "")
