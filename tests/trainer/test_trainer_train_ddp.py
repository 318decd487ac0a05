"""Real 2-process torchrun (gloo) training on the shipped corpus: it learns, it checkpoints, and a
run stopped and resumed follows the same loss trajectory as one that never stopped."""

from __future__ import annotations

import json

import pytest

from trainer import checkpoint

STEPS = 16  # 8192 tokens / (2 ranks x 4 x 64)


def metric_lines(run_dir, kind=None):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if kind is None or line["kind"] == kind]


def torchrun_train(run_module, config, run_dir, *extra):
    r = run_module("trainer.train", str(config), "--run-dir", str(run_dir), *extra, nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory, write_tiny_config, run_module):
    """One uninterrupted 2-rank run, and one stopped after step 6 then resumed; same config.

    Dropout is on (0.1), so matching trajectories also need the RNG states restored.
    """
    d = tmp_path_factory.mktemp("ddp")
    config = write_tiny_config(d / "config.yaml")
    whole, split = d / "whole", d / "split"
    torchrun_train(run_module, config, whole)
    first = torchrun_train(run_module, config, split, "--stop-at-step", "6")
    first.done_existed = (split / "DONE").exists()
    first.latest = (split / "checkpoints" / "latest").read_text().strip()
    second = torchrun_train(run_module, config, split)
    return whole, split, first, second


def test_two_rank_run_learns_and_commits_a_checkpoint(runs):
    whole, _, _, _ = runs
    start = metric_lines(whole, "start")[0]
    assert start["world_size"] == 2 and start["resumed_from_step"] is None
    vals = metric_lines(whole, "val")
    assert vals[0]["step"] == 0 and vals[-1]["step"] == STEPS
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] - 1.0  # from ~10.8 (uniform) clearly down
    train = metric_lines(whole, "train")
    assert [line["step"] for line in train] == list(range(1, STEPS + 1))
    assert train[-1]["tokens"] == 8192
    for key in ("train_loss", "lr", "tokens_per_s", "mfu", "peak_mem_bytes", "wall_s", "time"):
        assert key in train[-1]
    assert train[-1]["mfu"] is None and train[-1]["peak_mem_bytes"] > 0  # CPU: no MFU without a peak
    assert json.loads((whole / "DONE").read_text()) == {"step": STEPS, "tokens": 8192}
    assert metric_lines(whole)[-1]["kind"] == "done"
    resolved = json.loads((whole / "config.resolved.json").read_text())
    assert resolved["world_size"] == 2 and resolved["micro_batch"] == 4
    assert resolved["tokens_per_step"] == 512 and resolved["total_steps"] == STEPS
    # keep_last: 2 of the checkpoints at 4, 8, 12, 16 remain; latest is the final one
    ckpts = whole / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step_000012", "step_000016"]
    assert (ckpts / "latest").read_text().strip() == "step_000016"
    manifest = checkpoint.verify(ckpts / "step_000016")
    assert manifest["step"] == STEPS and manifest["tokens"] == 8192
    assert [line["path"] for line in metric_lines(whole, "checkpoint")][-1] == "checkpoints/step_000016"
    hb = json.loads((whole / "heartbeat.json").read_text())
    assert hb["step"] == STEPS and hb["pid"] > 0


def test_resumed_run_matches_the_uninterrupted_one(runs):
    whole, split, first, second = runs
    starts = metric_lines(split, "start")
    assert [s["resumed_from_step"] for s in starts] == [None, 6]
    want = {line["step"]: line["train_loss"] for line in metric_lines(whole, "train")}
    got = {}
    for line in metric_lines(split, "train"):
        got[line["step"]] = line["train_loss"]
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(7, STEPS + 1):  # the steps that ran after the resume
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), step
    assert metric_lines(split, "val")[-1]["val_loss"] == pytest.approx(
        metric_lines(whole, "val")[-1]["val_loss"], rel=1e-6
    )
    assert "resumed from step 6" in second.stderr


def test_stopped_run_leaves_a_committed_checkpoint_and_no_done(runs):
    _, split, first, _ = runs
    assert "stopped at step 6" in first.stderr
    assert not first.done_existed and first.latest == "step_000006"
    # the split run's first half stopped before DONE; only the second half wrote it
    done_lines = metric_lines(split, "done")
    assert len(done_lines) == 1 and done_lines[0]["step"] == STEPS
