"""The service's STOP file (a budget about to be reached): the trainer stops after the step it sees
it at, with that step's checkpoint committed and stored, a `stopped` line and DONE saying so; and
the stopped run can still be resumed to the end. Then the same under torchrun (2 ranks): every
rank learns of the file from rank 0 and stops at the same step (or the run would hang)."""

from __future__ import annotations

import json
from pathlib import Path

from trainer import checkpoint
from trainer import train as train_mod
from trainer.artifacts import open_store
from trainer.control import STOP

SMALL = {
    "model_overrides": {"n_layer": 1, "n_embd": 32, "n_head": 2, "tie_weights": True, "dropout": 0.1},
    "eval_tokens": 1024,
    "checkpoint_every": 4,
    "keep_last": 1,
    "max_tokens": 4096,  # 16 steps of 4 x 64 tokens
}


def lines(run_dir: Path, kind: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def test_stop_mid_run_commits_and_stores_that_steps_checkpoint_writes_done_and_can_be_resumed(
    tmp_path, tiny_config, monkeypatch
):
    run = tmp_path / "run"
    uri = (tmp_path / "store" / "checkpoints").as_uri()
    config = tiny_config(**SMALL, artifact_uri=uri)
    real, calls = train_mod.stop_asked, []

    def stop_at_6(run_dir, master, device):
        calls.append(1)
        if len(calls) == 6:  # the service writes STOP while step 6 trains
            (run_dir / STOP).write_text(json.dumps({"reason": "budget.max_usd is near", "time": 0}))
        return real(run_dir, master, device)  # the real check reads the real file

    monkeypatch.setattr(train_mod, "stop_asked", stop_at_6)
    assert train_mod.main([str(config), "--run-dir", str(run)]) == 0

    done = json.loads((run / "DONE").read_text())
    assert done == {"step": 6, "tokens": 6 * 256, "stopped": True, "reason": "budget.max_usd is near"}
    assert [line["step"] for line in lines(run, "train")] == [1, 2, 3, 4, 5, 6]  # not one step more
    (stopped,) = lines(run, "stopped")
    assert (stopped["step"], stopped["tokens"], stopped["reason"]) == (6, 1536, "budget.max_usd is near")
    assert lines(run, "done") == []
    kinds = [line["kind"] for line in lines(run)]
    assert kinds[-1] == "stopped" and kinds.index("stopped") > kinds.index("checkpoint_stored")
    # the stop step's checkpoint: committed on the node, and in the store (every file checked)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000006"
    assert checkpoint.verify(run / "checkpoints" / "step_000006")["step"] == 6
    assert [line["step"] for line in lines(run, "checkpoint_stored")] == [4, 6]
    assert open_store(uri).list_checkpoints() == ["step_000004", "step_000006"]

    # resumable: without STOP (and the stale DONE) the same command goes on from step 6 to the end
    monkeypatch.setattr(train_mod, "stop_asked", real)
    (run / STOP).unlink()
    (run / "DONE").unlink()
    assert train_mod.main([str(config), "--run-dir", str(run)]) == 0
    assert [s["resumed_from_step"] for s in lines(run, "start")] == [None, 6]
    assert json.loads((run / "DONE").read_text()) == {"step": 16, "tokens": 4096}
    assert lines(run, "done")[0]["step"] == 16


def test_a_stop_under_torchrun_stops_every_rank_at_the_same_step(tmp_path, tiny_config, run_module):
    run = tmp_path / "run"
    run.mkdir()
    (run / STOP).write_text("the budget")  # there from the start: both ranks stop after step 1
    config = tiny_config(**{**SMALL, "eval_every": 0})
    r = run_module("trainer.train", str(config), "--run-dir", str(run), nproc=2, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "DONE").read_text()) == {"step": 1, "tokens": 512, "stopped": True, "reason": "the budget"}
    assert checkpoint.verify(run / "checkpoints" / "step_000001")["step"] == 1
    assert [line["kind"] for line in lines(run)][-2:] == ["checkpoint", "stopped"]
