"""`python -m trainer.prepare --cache URI`: a dataset prepared once is downloaded, not re-tokenised,
by every later run (file:// and S3 without listing); a cache is complete or not used at all."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from s3server import ACCESS_KEY, SECRET_KEY, admin_client, moto_server
from trainer.artifacts import open_store
from trainer.errors import run_cli
from trainer.prepare import main as prepare_main

OPTIONS = ["--shard-tokens", "2000", "--val-fraction", "0.2", "--test-fraction", "0.2"]


@pytest.fixture()
def source(tmp_path) -> Path:
    """Six small text documents (a few thousand tokens: several train shards of 2000 tokens)."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(800)))
    return src


def prepare(capsys, source: Path, out: Path, cache: str) -> tuple[int, dict | None, str]:
    """Run the CLI; (exit code, its JSON summary line or None, stderr)."""
    rc = run_cli(prepare_main, ["--source", str(source), "--out", str(out), "--cache", cache, *OPTIONS])
    captured = capsys.readouterr()
    return rc, (json.loads(captured.out) if captured.out.strip() else None), captured.err


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_miss_fills_the_cache_then_a_hit_needs_no_source(tmp_path, source, capsys):
    cache = (tmp_path / "cache" / "d-1234").as_uri()
    rc, summary, _ = prepare(capsys, source, tmp_path / "first", cache)
    assert rc == 0 and summary["cache"] == "miss" and summary["cache_pushed"] is True
    first = files(tmp_path / "first")
    assert len([n for n in first if n.startswith("train_")]) >= 2
    assert files(tmp_path / "cache" / "d-1234") == first  # every shard, and the manifest
    rc = run_cli(prepare_main, ["--source", str(source), "--out", str(tmp_path / "off"), *OPTIONS])
    assert rc == 0 and json.loads(capsys.readouterr().out)["cache"] == "off"  # without --cache

    for p in source.iterdir():  # the source is gone: a hit must not read it
        p.unlink()
    source.rmdir()
    rc, summary, err = prepare(capsys, source, tmp_path / "second", cache)
    assert rc == 0 and summary["cache"] == "hit" and "cache_pushed" not in summary
    assert files(tmp_path / "second") == first  # byte-identical shards and manifest
    assert summary["tokens"] == json.loads(first["manifest.json"])["tokens"]
    assert not (tmp_path / ".tmp-second").exists()
    assert "from the cache" in err
    rc, summary, _ = prepare(capsys, source, tmp_path / "second", cache)  # already there: a no-op
    assert rc == 0 and summary["cache"] == "hit"


def test_a_corrupt_cache_is_an_error_and_a_half_pushed_one_is_a_miss(tmp_path, source, capsys):
    root = tmp_path / "cache"
    cache = root.as_uri()
    assert prepare(capsys, source, tmp_path / "first", cache)[1]["cache"] == "miss"
    shard = root / "train_000001.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    shard.write_bytes(bytes(data))
    rc, summary, err = prepare(capsys, source, tmp_path / "second", cache)
    assert rc == 2 and summary is None
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"error: the data cache {cache} is corrupt: {cache}/train_000001.bin has sha256")
    )
    assert "delete that folder (or run without --cache)" in err
    assert not (tmp_path / "second").exists() and not (tmp_path / ".tmp-second").exists()

    # a push cut off before its manifest (the commit point) is not a cache: prepared from the source
    (root / "manifest.json").unlink()
    rc, summary, _ = prepare(capsys, source, tmp_path / "third", cache)
    assert rc == 0 and summary["cache"] == "miss" and summary["cache_pushed"] is True
    assert files(root) == files(tmp_path / "third")  # and the cache is whole again


def test_a_failed_push_keeps_the_prepared_data(tmp_path, source, capsys):
    (tmp_path / "blocker").write_text("a file where the cache folder should be")
    cache = (tmp_path / "blocker" / "d-1").as_uri()
    rc, summary, err = prepare(capsys, source, tmp_path / "out", cache)
    assert rc == 0 and summary["cache"] == "miss" and summary["cache_pushed"] is False
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"warning: the prepared data is complete in {tmp_path / 'out'} but could not be pushed")
    )
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_the_cache_works_on_s3_with_node_credentials(tmp_path, source, capsys, monkeypatch):
    with moto_server() as url:
        admin_client(url).create_bucket(Bucket="ty-data")
        for k, v in {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": url,
        }.items():
            monkeypatch.setenv(k, v)
        cache = "s3://ty-data/p/data/d-5678"
        rc, summary, _ = prepare(capsys, source, tmp_path / "first", cache)
        assert rc == 0 and summary["cache"] == "miss" and summary["cache_pushed"] is True
        store = open_store(cache)
        assert store.read_bytes("manifest.json") == (tmp_path / "first" / "manifest.json").read_bytes()
        for p in source.iterdir():
            p.unlink()
        rc, summary, _ = prepare(capsys, source, tmp_path / "second", cache)
        assert rc == 0 and summary["cache"] == "hit"
        assert files(tmp_path / "second") == files(tmp_path / "first")
