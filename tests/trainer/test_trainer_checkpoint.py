"""Checkpoints are committed by their manifest; anything missing or corrupt is refused, never loaded."""

from __future__ import annotations

import json

import pytest
import torch

from trainer import checkpoint
from trainer.errors import CheckpointError
from trainer.model import GPT, GPTConfig


def test_committed_checkpoint_round_trips_the_model(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path / "run", step=3, vocab_size=512)
    assert path.name == "step_000003"
    assert checkpoint.latest(tmp_path / "run") == path
    manifest = checkpoint.verify(path)
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "state.pt", "config.json", "metrics.json"}
    for name, meta in manifest["files"].items():
        assert (path / name).stat().st_size == meta["bytes"]
    model = GPT(GPTConfig(**checkpoint.read_config(path)["model"]))
    checkpoint.load_weights(path, model)
    x = torch.randint(0, 512, (2, 64))
    saved = make_checkpoint.last_model.eval()
    assert torch.equal(model.eval()(x)[0], saved(x)[0])


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.pt", "state.pt", "config.json"])
def test_corrupt_file_is_refused_and_named(tmp_path, make_checkpoint, victim):
    path = make_checkpoint(tmp_path / "run", vocab_size=512)
    data = bytearray((path / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    (path / victim).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{victim} does not match its sha256"):
        checkpoint.verify(path)


def test_missing_or_truncated_file_is_refused(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path / "run", vocab_size=512)
    (path / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match="optimizer.pt is missing"):
        checkpoint.verify(path)
    path = make_checkpoint(tmp_path / "run2", vocab_size=512)
    with open(path / "model.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match="model.safetensors is 100 bytes"):
        checkpoint.verify(path)


def test_folder_without_manifest_is_not_a_checkpoint(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path / "run", vocab_size=512)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="not committed: manifest.json is missing"):
        checkpoint.verify(path)
    model = GPT(GPTConfig(**checkpoint.read_config(path)["model"]))
    before = model.transformer.wte.weight.clone()
    with pytest.raises(CheckpointError):
        checkpoint.load_training(path, model)
    assert torch.equal(model.transformer.wte.weight, before)  # nothing was loaded


def test_keep_last_and_latest_pointer(tmp_path, make_checkpoint):
    run = tmp_path / "run"
    for step in (1, 2, 3, 4):
        make_checkpoint(run, step=step, keep_last=2, vocab_size=512)
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_000003", "step_000004"]
    assert (root / "latest").read_text().strip() == "step_000004"
    # a crash mid-save leaves a .tmp folder and an uncommitted step folder: neither is used
    (root / ".tmp-step_000005").mkdir()
    (root / "step_000006").mkdir()
    assert checkpoint.latest(run).name == "step_000004"
    assert [p.name for p in checkpoint.committed(root)] == ["step_000003", "step_000004"]
    checkpoint.clean_stale(run)
    assert not (root / ".tmp-step_000005").exists()


def test_training_refuses_to_resume_from_a_corrupt_latest(tmp_path, tiny_config, make_checkpoint, capsys):
    from trainer.train import main

    run = tmp_path / "run"
    path = make_checkpoint(run, vocab_size=512)
    (path / "state.pt").write_bytes(b"garbage")
    rc = main([str(tiny_config()), "--run-dir", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert (
        err[-1] == f"error: checkpoint {path}: state.pt is 7 bytes, the manifest says "
        f"{json.loads((path / 'manifest.json').read_text())['files']['state.pt']['bytes']} "
        f"(truncated or corrupt)"
    )
    failed = json.loads((run / "FAILED").read_text())
    assert failed["exit_code"] == 2 and failed["kind"] == "CheckpointError"
    assert not (run / "metrics.jsonl").exists() or "train" not in (run / "metrics.jsonl").read_text()
