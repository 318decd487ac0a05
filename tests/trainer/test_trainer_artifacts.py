"""The artifact store on file:// and on moto's S3 server (through boto3, over loopback HTTP):
checkpoints committed by a manifest written last, SHA-256 checked both ways, resumable uploads."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from s3server import ACCESS_KEY, SECRET_KEY, Proxy, admin_client, moto_server
from trainer.artifacts import ArtifactError, IntegrityError, open_store
from trainer.artifacts import manifest as mf

REPO = Path(__file__).resolve().parents[2]
BUCKET = "ty-artifacts"
MiB = 1 << 20
CREDS = {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}


@pytest.fixture(scope="module")
def s3_url():
    with moto_server() as url:
        admin_client(url).create_bucket(Bucket=BUCKET)
        yield url


def s3_store(url: str, prefix: str, state_dir: Path, **kw):
    return open_store(
        f"s3://{BUCKET}/{prefix}",
        endpoint_url=url,
        credentials=CREDS,
        part_size=5 * MiB,
        concurrency=4,
        state_dir=state_dir,
        **kw,
    )


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    """A fresh store of each kind (s3: its own prefix in the shared bucket)."""
    if request.param == "file":
        return open_store((tmp_path / "store").as_uri())
    url = request.getfixturevalue("s3_url")
    return s3_store(url, f"t/{uuid.uuid4().hex[:8]}", tmp_path / "state")


def make_ckpt(path: Path, step: int = 1, big: int = 11 * MiB, seed: int = 0) -> Path:
    """A checkpoint folder in the trainer's format (real manifest layout), with random bytes."""
    rng = random.Random(seed)
    path.mkdir(parents=True)
    sizes = {
        "model.safetensors": big,
        "optimizer.pt": big + 12345,
        "state.pt": 3000,
        "config.json": 40,
        "metrics.json": 20,
    }
    files = {}
    for name, n in sizes.items():
        (path / name).write_bytes(rng.randbytes(n))
        files[name] = {"bytes": n, "sha256": mf.sha256_file(path / name)}
    manifest = {
        "format": mf.FORMAT,
        "step": step,
        "tokens": step * 128,
        "files": files,
        "created": "2026-01-01T00:00:00Z",
    }
    (path / mf.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, "-m", "trainer.artifacts", *args],
        cwd=REPO,
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def s3_env(url: str, state_dir: Path) -> dict:
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": url,
        "TRAINYARD_ARTIFACT_STATE_DIR": str(state_dir),
    }


def test_importing_the_store_loads_neither_torch_nor_boto3():
    code = (
        "import sys, trainer.artifacts, trainer.artifacts.__main__, orchestrator.grants\n"
        "from trainer.artifacts import open_store\n"
        "open_store('file:///tmp/ty-none')\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "assert 'boto3' not in sys.modules, 'boto3'\n"
        "open_store('s3://bucket/p', endpoint_url='http://127.0.0.1:9')\n"
        "assert 'torch' not in sys.modules, 'torch after s3'\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_round_trip_lists_only_committed_checkpoints(store, tmp_path):
    a = make_ckpt(tmp_path / "a" / "step_000001", step=1)
    stats = store.put_checkpoint(a, "ckpts/step_000001")
    assert (
        stats.files_sent == 5
        and stats.bytes_sent == sum(f.stat().st_size for f in a.iterdir()) - (a / mf.MANIFEST).stat().st_size
    )
    # a second checkpoint whose files are up but whose manifest is not: not a checkpoint
    store.put_file(a / "model.safetensors", "ckpts/step_000002/model.safetensors")
    assert store.list_checkpoints("ckpts") == ["ckpts/step_000001"]
    assert store.read_manifest("ckpts/step_000002") is None

    again = store.put_checkpoint(a, "ckpts/step_000001")
    assert again.files_skipped == 5 and again.files_sent == 0

    out = tmp_path / "pulled" / "step_000001"
    store.get_checkpoint("ckpts/step_000001", out)
    assert mf.verify(out)["step"] == 1
    assert (out / mf.MANIFEST).read_bytes() == (a / mf.MANIFEST).read_bytes()
    assert not (out.parent / ".tmp-step_000001").exists()

    with pytest.raises(ArtifactError, match="not a committed checkpoint"):
        store.get_checkpoint("ckpts/step_000002", tmp_path / "pulled" / "step_000002")
    assert not (tmp_path / "pulled" / "step_000002").exists()

    store.delete_checkpoint("ckpts/step_000001")
    assert store.list_checkpoints() == []


def test_a_real_trainer_checkpoint_round_trips_through_s3(s3_url, tmp_path, make_checkpoint):
    from trainer import checkpoint

    path = make_checkpoint(tmp_path / "run", step=7, vocab_size=8192)  # ~8 MB of weights: multipart
    store = s3_store(s3_url, "real/run", tmp_path / "state")
    store.put_checkpoint(path, "checkpoints/step_000007")
    out = tmp_path / "restore" / "step_000007"
    store.get_checkpoint("checkpoints/step_000007", out)
    assert checkpoint.verify(out)["step"] == 7
    for name in mf.REQUIRED:
        assert (out / name).read_bytes() == (path / name).read_bytes()


def _corrupt_in_store(store, key: str) -> None:
    """Flip one byte of a stored object, keeping its size and its recorded SHA-256."""
    if store.uri.startswith("file://"):
        p = store.root / key
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
        return
    s3 = store.client
    full = f"{store.prefix}/{key}"
    obj = s3.get_object(Bucket=store.bucket, Key=full)
    data = bytearray(obj["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.put_object(Bucket=store.bucket, Key=full, Body=bytes(data), Metadata=obj["Metadata"])


@pytest.mark.parametrize("victim", ["model.safetensors", "state.pt"])
def test_a_corrupted_object_is_refused_on_download(store, tmp_path, victim):
    a = make_ckpt(tmp_path / "a")
    store.put_checkpoint(a, "c")
    _corrupt_in_store(store, f"c/{victim}")
    out = tmp_path / "pulled" / "c"
    with pytest.raises(IntegrityError, match=f"{victim} .*corrupt in the store"):
        store.get_checkpoint("c", out)
    assert not out.exists()  # nothing that could pass for a checkpoint
    assert not (out.parent / ".tmp-c" / mf.MANIFEST).exists()


@pytest.mark.parametrize("victim", ["model.safetensors", "config.json"])  # multipart / single put
def test_a_local_file_that_does_not_match_its_manifest_is_not_uploaded(store, tmp_path, victim):
    a = make_ckpt(tmp_path / "a")
    data = bytearray((a / victim).read_bytes())
    data[-1] ^= 0xFF
    (a / victim).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="manifest says"):
        store.put_checkpoint(a, "c")
    assert store.list_checkpoints() == []
    assert store.read_manifest("c") is None


def test_data_files_round_trip_with_their_sha256(store, tmp_path):
    shard = tmp_path / "train_000000.bin"
    shard.write_bytes(random.Random(1).randbytes(6 * MiB + 7))
    sha = store.put_file(shard, "data/train_000000.bin")
    assert sha == mf.sha256_file(shard)
    assert store.get_file("data/train_000000.bin", tmp_path / "got.bin") == sha
    assert (tmp_path / "got.bin").read_bytes() == shard.read_bytes()
    _corrupt_in_store(store, "data/train_000000.bin")
    with pytest.raises(IntegrityError):
        store.get_file("data/train_000000.bin", tmp_path / "bad.bin", sha256=sha)
    assert not (tmp_path / "bad.bin").exists()


def test_keys_cannot_escape_the_store(store, tmp_path):
    with pytest.raises(ArtifactError, match="invalid artifact key"):
        store.put_file(make_ckpt(tmp_path / "a") / "state.pt", "../outside")


def test_cli_push_list_pull_and_bad_input(s3_url, tmp_path):
    a = make_ckpt(tmp_path / "a" / "step_000003", step=3, big=2 * MiB)
    env = s3_env(s3_url, tmp_path / "state")
    uri = f"s3://{BUCKET}/cli/run/checkpoints"
    r = cli("push", str(a), f"{uri}/step_000003", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files_sent"] == 5
    r = cli("list", uri, env=env)
    assert r.stdout.split() == [f"{uri}/step_000003"]
    r = cli("pull", f"{uri}/step_000003", str(tmp_path / "b"), env=env)
    assert r.returncode == 0, r.stderr
    assert mf.verify(tmp_path / "b")["step"] == 3
    r = cli("push", str(a), (tmp_path / "fs" / "step_000003").as_uri())
    assert r.returncode == 0 and mf.verify(tmp_path / "fs" / "step_000003")
    for args in (
        ["push", str(a), "ftp://host/x"],  # unknown scheme
        ["push", str(tmp_path), f"{uri}/x"],  # not a committed checkpoint
        ["pull", f"{uri}/missing", str(tmp_path / "c")],  # nothing committed there
        ["pull", "file://relative/x", str(tmp_path / "c")],  # not an absolute path
        ["push", str(a)],  # missing argument
        ["push", str(a), f"{uri}/y", "--part-size-mib", "1"],
    ):  # below S3's minimum
        r = cli(*args, env=env)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)


def _uploaded_parts(s3, key: str) -> int:
    for up in s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []):
        return len(s3.list_parts(Bucket=BUCKET, Key=key, UploadId=up["UploadId"]).get("Parts", []))
    return 0


def test_an_upload_killed_part_way_is_not_a_checkpoint_and_a_retry_resumes_it(s3_url, tmp_path):
    a = make_ckpt(tmp_path / "a", big=12 * MiB)  # 3 parts each for model and optimizer
    s3 = admin_client(s3_url)
    uri = f"s3://{BUCKET}/killed/step_000001"
    key = "killed/step_000001"
    # A slow link, so the kill lands mid-file even on a loaded machine: once optimizer.pt's first
    # part is stored, its other 7 MiB still take about 3.5 s to send.
    proxy = Proxy(int(s3_url.rsplit(":", 1)[1]), rate_bytes_s=2 * MiB)
    env = s3_env(proxy.url, tmp_path / "state")
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.artifacts", "push", str(a), uri, "--part-size-mib", "5", "--concurrency", "1"],
        cwd=REPO,
        env={**base, "PYTHONPATH": str(REPO), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            model_done = "Contents" in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{key}/model")
            if model_done and _uploaded_parts(s3, f"{key}/optimizer.pt") >= 1:
                proc.send_signal(signal.SIGKILL)  # the uploader dies mid-file, no cleanup at all
                break
            time.sleep(0.03)
        proc.wait(timeout=30)
    finally:
        proxy.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()

    store = s3_store(s3_url, "killed", tmp_path / "state")
    assert store.list_checkpoints() == []  # not taken for a checkpoint
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{key}/{mf.MANIFEST}")
    with pytest.raises(ArtifactError, match="not a committed checkpoint"):
        store.get_checkpoint("step_000001", tmp_path / "early")

    r = cli("push", str(a), uri, "--part-size-mib", "5", env=s3_env(s3_url, tmp_path / "state"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["files_skipped"] >= 1  # model.safetensors was already whole
    assert summary["parts_reused"] >= 1, summary  # optimizer.pt resumed from its uploaded parts
    assert store.list_checkpoints() == ["step_000001"]
    store.get_checkpoint("step_000001", tmp_path / "b")
    assert mf.verify(tmp_path / "b")["files"] == json.loads((a / mf.MANIFEST).read_text())["files"]
    assert s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []) == []


def test_a_connection_dropped_mid_part_is_retried_in_the_same_upload(s3_url, tmp_path):
    a = make_ckpt(tmp_path / "a", big=11 * MiB)
    proxy = Proxy(int(s3_url.rsplit(":", 1)[1]))
    proxy.cut_after = 3 * MiB  # the link dies inside the first part (moto closes each connection)
    try:
        store = s3_store(proxy.url, "dropped", tmp_path / "state")
        stats = store.put_checkpoint(a, "step_000001")
    finally:
        proxy.close()
    assert proxy.cuts == 1 and stats.files_sent == 5
    direct = s3_store(s3_url, "dropped", tmp_path / "state")
    direct.get_checkpoint("step_000001", tmp_path / "b")
    assert mf.verify(tmp_path / "b")["step"] == 1


def test_an_interrupted_pull_keeps_what_it_fetched(store, tmp_path):
    a = make_ckpt(tmp_path / "a", big=6 * MiB)
    store.put_checkpoint(a, "c")
    out = tmp_path / "pulled" / "c"
    tmp = out.parent / ".tmp-c"
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes((a / "model.safetensors").read_bytes())  # fetched before
    (tmp / "optimizer.pt").write_bytes(b"half")  # cut off
    stats = store.get_checkpoint("c", out)
    assert stats.files_skipped == 1 and stats.files_sent == 4
    assert mf.verify(out)["step"] == 1 and not tmp.exists()


def test_transfer_retries_back_off_with_full_jitter_then_give_up():
    from trainer.artifacts import TransferError
    from trainer.artifacts.retry import with_retries

    sleeps: list[float] = []
    calls = []

    def drop() -> None:
        calls.append(1)
        raise ConnectionResetError("reset by peer")

    with pytest.raises(TransferError, match="GET x failed after 4 attempts: reset by peer"):
        with_retries(
            drop,
            what="GET x",
            is_transient=lambda e: isinstance(e, OSError),
            attempts=4,
            base_s=0.5,
            cap_s=1.0,
            sleep=sleeps.append,
        )
    assert len(calls) == 4 and len(sleeps) == 3
    assert all(0 <= s <= cap for s, cap in zip(sleeps, [0.5, 1.0, 1.0], strict=True)), sleeps

    def refused() -> None:  # not transient: raised as it is, at once
        calls.append(1)
        raise PermissionError("no")

    calls.clear()
    with pytest.raises(PermissionError):
        with_retries(refused, what="GET y", is_transient=lambda e: isinstance(e, ConnectionError), sleep=sleeps.append)
    assert len(calls) == 1
