"""Checkpoints leave the node as they are committed (train config `artifact_uri`), on file:// and
on moto's S3 server, and a run resumes from a stored checkpoint (`--resume-from URI`) exactly as
if it had never stopped."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from orchestrator.grants import grant_run_access  # the service's grant is what a node gets
from s3server import iam_moto_server
from trainer import checkpoint, upload
from trainer.artifacts import manifest as mf
from trainer.artifacts import open_store
from trainer.train import main as train_main

BUCKET = "ty-train"
# 1 layer, width 32, tied head: a checkpoint is ~20 MB and a step takes a fraction of a second
SMALL = {
    "model_overrides": {"n_layer": 1, "n_embd": 32, "n_head": 2, "tie_weights": True, "dropout": 0.1},
    "eval_tokens": 1024,
    "checkpoint_every": 4,
    "keep_last": 1,
}


def lines(run_dir: Path, kind: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def local_checkpoints(run_dir: Path) -> list[str]:
    return [p.name for p in checkpoint.committed(run_dir / "checkpoints")]


def test_every_committed_checkpoint_reaches_the_store_and_pruning_waits_for_it(tmp_path, tiny_config, monkeypatch):
    run = tmp_path / "run"
    uri = (tmp_path / "store" / "runs" / "R1" / "checkpoints").as_uri()
    config = tiny_config(**SMALL, max_tokens=4096, artifact_uri=uri)  # 16 steps: 4, 8, 12, 16
    real_open, held, seen = upload.open_artifact_store, threading.Event(), []

    def slow_first_upload(u):
        # Hold the first upload until two more checkpoints are committed behind it. keep_last is 1:
        # had pruning not waited for the uploads, step_000004 and step_000008 would be gone.
        if not held.is_set():
            held.set()
            deadline = time.monotonic() + 60
            while not (run / "checkpoints" / "step_000012" / mf.MANIFEST).is_file():
                assert time.monotonic() < deadline, "training waited for the upload"
                time.sleep(0.02)
            seen.extend(local_checkpoints(run))
        return real_open(u)

    monkeypatch.setattr(upload, "open_artifact_store", slow_first_upload)
    assert train_main([str(config), "--run-dir", str(run)]) == 0

    assert seen == ["step_000004", "step_000008", "step_000012"]  # none pruned while uploading
    assert local_checkpoints(run) == ["step_000016"]  # keep_last applies once they are stored
    store = open_store(uri)
    names = [f"step_{s:06d}" for s in (4, 8, 12, 16)]
    assert store.list_checkpoints() == names
    committed = {line["step"]: line for line in lines(run, "checkpoint")}
    stored = lines(run, "checkpoint_stored")
    assert [line["step"] for line in stored] == [4, 8, 12, 16]  # in commit order
    assert lines(run, "checkpoint_upload_failed") == []
    for line in stored:
        c = committed[line["step"]]
        assert line["uri"] == store.uri_of(f"step_{line['step']:06d}")
        assert (line["tokens"], line["val_loss"], line["bytes"]) == (c["tokens"], c["val_loss"], c["bytes"])
        assert line["seconds"] >= 0 and line["time"] >= c["time"]
    kinds = [line["kind"] for line in lines(run)]
    assert kinds.index("done") > max(i for i, k in enumerate(kinds) if k == "checkpoint_stored")
    for name in names:  # every stored file verifies after a pull
        pulled = tmp_path / "pulled" / name
        store.get_checkpoint(name, pulled)
        assert checkpoint.verify(pulled)["step"] == int(name[5:])
    for f in mf.REQUIRED + (mf.MANIFEST,):
        assert (tmp_path / "pulled" / "step_000016" / f).read_bytes() == (
            run / "checkpoints" / "step_000016" / f
        ).read_bytes()


def test_a_failed_upload_is_reported_and_training_goes_on(tmp_path, tiny_config):
    run, root = tmp_path / "run", tmp_path / "store"
    root.mkdir()
    (root / "step_000004").write_text("in the way")  # this checkpoint's folder cannot be created
    config = tiny_config(**SMALL, max_tokens=2048, artifact_uri=root.as_uri())  # steps 4 and 8
    assert train_main([str(config), "--run-dir", str(run)]) == 0
    failed = lines(run, "checkpoint_upload_failed")
    assert [line["step"] for line in failed] == [4] and "step_000004" in failed[0]["error"]
    assert [line["step"] for line in lines(run, "checkpoint_stored")] == [8]  # the next one went up
    assert open_store(root.as_uri()).list_checkpoints() == ["step_000008"]
    assert json.loads((run / "DONE").read_text())["step"] == 8


def test_a_run_resumed_from_the_store_matches_the_uninterrupted_run(tmp_path, tiny_config, capsys):
    config = tiny_config(**SMALL, max_tokens=4096)  # 16 steps, dropout on: RNG state must carry over
    whole, first, second = tmp_path / "whole", tmp_path / "first", tmp_path / "second"
    store_uri = (tmp_path / "store").as_uri()
    assert train_main([str(config), "--run-dir", str(whole)]) == 0
    assert (
        train_main([str(config), "--run-dir", str(first), "--set", f"artifact_uri={store_uri}", "--stop-at-step", "6"])
        == 0
    )
    assert not (first / "DONE").exists()
    shutil.rmtree(first)  # the node is gone; only the store is left
    resume_uri = f"{store_uri}/step_000006"
    argv = [str(config), "--run-dir", str(second), "--set", f"artifact_uri={store_uri}", "--resume-from", resume_uri]
    capsys.readouterr()
    assert train_main(argv) == 0
    assert "resumed from step 6" in capsys.readouterr().err
    start = lines(second, "start")[0]
    assert start["resumed_from_step"] == 6 and start["resumed_from_uri"] == resume_uri
    resolved = json.loads((second / "config.resolved.json").read_text())
    assert resolved["resumed_from_uri"] == resume_uri
    want = {line["step"]: line["train_loss"] for line in lines(whole, "train")}
    got = {line["step"]: line["train_loss"] for line in lines(second, "train")}
    assert sorted(got) == list(range(7, 17))
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), step
    assert lines(second, "val")[-1]["val_loss"] == pytest.approx(lines(whole, "val")[-1]["val_loss"], rel=1e-6)
    assert json.loads((second / "DONE").read_text()) == {"step": 16, "tokens": 4096}
    # the run's own later checkpoints went to the store too
    assert open_store(store_uri).list_checkpoints() == [
        "step_000004",
        "step_000006",
        "step_000008",
        "step_000012",
        "step_000016",
    ]

    # a run dir that already holds a newer checkpoint keeps it: nothing is pulled
    assert train_main(argv) == 0
    again = lines(second, "start")[-1]
    assert again["resumed_from_step"] == 16 and again["resumed_from_uri"] is None
    assert local_checkpoints(second) == ["step_000016"]


def test_resume_from_a_uri_without_a_checkpoint_fails_clearly(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    empty = (tmp_path / "store" / "step_000006").as_uri()
    rc = train_main([str(tiny_config(**SMALL)), "--run-dir", str(run), "--resume-from", empty])
    assert rc == 2
    message = f"--resume-from {empty} is not a committed checkpoint"
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {message}")
    failed = json.loads((run / "FAILED").read_text())
    assert failed["kind"] == "CheckpointError" and failed["error"].startswith(message)
    assert not (run / "checkpoints" / "latest").exists()
    rc = train_main([str(tiny_config(**SMALL)), "--run-dir", str(run), "--resume-from", "http://x/y"])
    assert rc == 2 and "--resume-from: artifact URI 'http://x/y'" in capsys.readouterr().err


# ------------------------------------------------------------------ S3 (moto, over loopback HTTP)


@pytest.fixture(scope="module")
def iam_s3():
    """(endpoint, the service's credentials) on a moto server that enforces IAM as AWS does, so a
    node's grant (get/put of its run's keys, no ListBucket) is all the trainer gets."""
    with iam_moto_server(BUCKET) as server:
        yield server


def node_environment(monkeypatch, tmp_path, url: str, env: dict) -> None:
    """The process environment of a node: exactly `env` for AWS (plus the endpoint)."""
    for k in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
    monkeypatch.setenv("TRAINYARD_ARTIFACT_STATE_DIR", str(tmp_path / "upload-state"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_a_training_process_uploads_its_checkpoints_to_s3(iam_s3, tmp_path, tiny_config, run_module, monkeypatch):
    url, service = iam_s3
    grant = grant_run_access(BUCKET, "p/runs/R1", credentials=service, endpoint_url=url)
    node_environment(monkeypatch, tmp_path, url, grant.env())  # the subprocess's environment
    run = tmp_path / "run"
    uri = f"{grant.uri}/checkpoints"
    assert uri == f"s3://{BUCKET}/p/runs/R1/checkpoints"
    config = tiny_config(**SMALL, max_tokens=2048, artifact_uri=uri)  # steps 4 and 8
    r = run_module("trainer.train", str(config), "--run-dir", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    stored = lines(run, "checkpoint_stored")
    assert [(line["step"], line["uri"]) for line in stored] == [(4, f"{uri}/step_000004"), (8, f"{uri}/step_000008")]
    assert local_checkpoints(run) == ["step_000008"]
    store = open_store(uri, endpoint_url=url, credentials=service)
    assert store.list_checkpoints() == ["step_000004", "step_000008"]
    for line in stored:
        name = line["uri"].rpartition("/")[2]
        pulled = tmp_path / "pulled" / name
        store.get_checkpoint(name, pulled)  # every file re-hashed against the manifest
        manifest = checkpoint.verify(pulled)
        assert manifest["step"] == line["step"]
        assert sum(f["bytes"] for f in manifest["files"].values()) == line["bytes"]
    assert (tmp_path / "pulled" / "step_000008" / "model.safetensors").read_bytes() == (
        run / "checkpoints" / "step_000008" / "model.safetensors"
    ).read_bytes()


def test_rotated_credentials_are_picked_up_and_a_grant_suffices_to_resume(iam_s3, tmp_path, tiny_config, monkeypatch):
    url, service = iam_s3
    grant = grant_run_access(BUCKET, "p/runs/R2", credentials=service, endpoint_url=url)
    creds = tmp_path / "aws-credentials"  # the file the service rewrites when it renews a grant
    creds.write_text("[default]\naws_access_key_id = AKIAEXPIREDEXPIRED00\naws_secret_access_key = expired\n")
    node_environment(monkeypatch, tmp_path, url, {"AWS_SHARED_CREDENTIALS_FILE": str(creds)})
    real_open, opened = upload.open_artifact_store, []

    def renew_after_first_upload(u):
        opened.append(u)
        if len(opened) == 2:  # the service renews the grant between the uploads
            creds.write_text(
                f"[default]\naws_access_key_id = {grant.access_key_id}\n"
                f"aws_secret_access_key = {grant.secret_access_key}\n"
                f"aws_session_token = {grant.session_token}\n"
            )
        return real_open(u)

    monkeypatch.setattr(upload, "open_artifact_store", renew_after_first_upload)
    uri = f"{grant.uri}/checkpoints"
    config = tiny_config(**SMALL, max_tokens=3072, artifact_uri=uri)  # steps 4, 8, 12
    run = tmp_path / "run"
    assert train_main([str(config), "--run-dir", str(run)]) == 0
    failed = lines(run, "checkpoint_upload_failed")
    assert [line["step"] for line in failed] == [4] and "credentials refused" in failed[0]["error"]
    assert [line["step"] for line in lines(run, "checkpoint_stored")] == [8, 12]
    assert len(opened) == 3  # a fresh store, and so a fresh read of the credentials, per upload

    # a new node with the same (renewed) grant resumes from a stored checkpoint (GETs of known
    # keys only) and stores its own checkpoints (under another prefix of the run, here)
    run2, uri2 = tmp_path / "run2", f"{grant.uri}/attempt-2"
    assert (
        train_main(
            [
                str(config),
                "--run-dir",
                str(run2),
                "--set",
                f"artifact_uri={uri2}",
                "--resume-from",
                f"{uri}/step_000008",
            ]
        )
        == 0
    )
    start = lines(run2, "start")[0]
    assert start["resumed_from_step"] == 8 and start["resumed_from_uri"] == f"{uri}/step_000008"
    assert [line["step"] for line in lines(run2, "train")] == [9, 10, 11, 12]
    assert [line["uri"] for line in lines(run2, "checkpoint_stored")] == [f"{uri2}/step_000008", f"{uri2}/step_000012"]
    assert json.loads((run2 / "DONE").read_text())["step"] == 12


def test_a_final_checkpoint_that_cannot_be_stored_fails_the_run(iam_s3, tmp_path, tiny_config, capsys, monkeypatch):
    url, service = iam_s3
    node_environment(
        monkeypatch,
        tmp_path,
        url,
        {"AWS_ACCESS_KEY_ID": service["access_key_id"], "AWS_SECRET_ACCESS_KEY": service["secret_access_key"]},
    )
    run = tmp_path / "run"
    uri = "s3://no-such-bucket/p/runs/R1/checkpoints"
    config = tiny_config(**SMALL, max_tokens=2048, artifact_uri=uri)
    assert train_main([str(config), "--run-dir", str(run)]) == 2
    failed = json.loads((run / "FAILED").read_text())
    assert failed["kind"] == "CheckpointUploadError" and failed["exit_code"] == 2
    assert failed["error"].startswith(f"the last checkpoint (step_000008) could not be stored at {uri}")
    assert "bucket no-such-bucket does not exist" in failed["error"]
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {failed['error']}"
    # training went on after the first failure, and the node keeps the checkpoint
    assert [line["step"] for line in lines(run, "checkpoint_upload_failed")] == [4, 8]
    assert [line["step"] for line in lines(run, "checkpoint")] == [4, 8]
    assert not (run / "DONE").exists() and lines(run, "done") == []
    assert checkpoint.latest(run).name == "step_000008"
