"""Instruction fine-tuning: the best epoch really comes back, generation stops, bad data is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer import checkpoint, ift, tokenizer
from trainer.artifacts import open_store
from trainer.evaluate import load_model
from trainer.model import GPT, GPTConfig

TINY = dict(vocab_size=50257, block_size=128, n_layer=1, n_head=2, n_embd=32, dropout=0.0)


def _save_tiny_checkpoint(run_dir: Path, seed: int = 0) -> Path:
    """A committed checkpoint of a 1-layer, 32-wide GPT-2, through checkpoint.save's real path."""
    torch.manual_seed(seed)
    cfg = GPTConfig(**TINY)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = {
        "step": 1,
        "tokens": 0,
        "data_offset": 0,
        "world_size": 1,
        "tokens_per_step": 0,
        "warmup_tokens": 0,
        "rng": [],
        "val_loss": None,
    }
    path, _ = checkpoint.save(
        run_dir, 1, 0, model, opt, state, {"model": vars(cfg), "train": {}}, {"step": 1}, keep_last=1
    )
    return path


def _write_data(path: Path, n: int = 40) -> Path:
    """n short Alpaca entries; every third has an empty input (no "### Input:" section)."""
    entries = [
        {
            "instruction": f"Add {i} and {i + 1}.",
            "input": "" if i % 3 == 0 else f"numbers {i}, {i + 1}",
            "output": f"The sum is {2 * i + 1}.",
        }
        for i in range(n)
    ]
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return _save_tiny_checkpoint(tmp_path_factory.mktemp("run"))


def test_prompt_split_and_collate_follow_the_book():
    with_input = {"instruction": "Do it.", "input": "x", "output": "done"}
    assert ift.format_example(with_input) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nDo it.\n\n### Input:\nx\n\n### Response:\ndone"
    )
    assert "### Input:" not in ift.format_input({**with_input, "input": ""})
    train, test, val = ift.split_data(list(range(1100)))
    assert (len(train), len(test), len(val)) == (935, 110, 55) and train[0] == 0 and test[0] == 935
    x, y = ift.collate([[1, 2, 3], [4]], max_len=128)
    pad, ign = tokenizer.EOT, ift.IGNORE
    assert x.tolist() == [[1, 2, 3], [4, pad, pad]]
    assert y.tolist() == [[2, 3, pad], [pad, ign, ign]]  # only the first end-of-text is a target
    x, y = ift.collate([[1, 2, 3]], max_len=2)  # truncated to the model's context
    assert x.shape == y.shape == (1, 2)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run_with_rising_val_loss(tiny_ckpt, data, out):
    """Fine-tune with a scripted val loss that is lowest after epoch 1; returns (summary, snapshots)."""
    snapshots = {}
    finals = {}

    def on_epoch(epoch, model):
        snapshots[epoch] = _weights(model)
        finals["model"] = model

    summary = ift.run(
        str(tiny_ckpt),
        str(data),
        out,
        epochs_max=5,
        patience=1,
        lr=1e-2,
        max_new_tokens=2,
        limit_test=1,
        seed=0,
        device="cpu",
        val_loss_fn=lambda _model, epoch: {1: 1.0, 2: 2.0}[epoch],
        on_epoch=on_epoch,
    )
    return summary, snapshots, _weights(finals["model"])


def test_finetune_restores_the_best_epoch_not_the_last(tmp_path, tiny_ckpt):
    data = _write_data(tmp_path / "data.json")
    summary, snaps, final = _run_with_rising_val_loss(tiny_ckpt, data, tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "ift.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["best_epoch"] == 1 and on_disk["val_losses"] == [1.0, 2.0]
    assert on_disk["epochs_run"] == 2  # patience 1: stopped after the first epoch that got worse
    assert (on_disk["train_items"], on_disk["val_items"], on_disk["test_items"]) == (34, 2, 1)
    assert on_disk["checkpoint"] == str(tiny_ckpt) and on_disk["seed"] == 0
    assert sorted(snaps) == [1, 2]
    for k in final:
        assert torch.equal(final[k], snaps[1][k]), k  # the epoch-1 weights came back
    # and they are not the last epoch's: epoch 2 moved the weights, so a "restore" that kept
    # references instead of copies would leave these equal
    assert any(not torch.equal(final[k], snaps[2][k]) for k in final)
    # the best epoch's weights are kept: a committed checkpoint of their own, as training's
    kept = tmp_path / "out" / "ift_step_000001"
    assert on_disk["fine_tuned"] == {
        "name": "ift_step_000001",
        "path": str(kept.resolve()),
        "step": 1,
        "tokens": 0,
        "bytes": sum(f["bytes"] for f in checkpoint.verify(kept)["files"].values()),
        "uri": None,
    }
    model, info = load_model(str(kept), None)  # what trainer.evaluate scores
    assert info["step"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, snaps[1][k]), k


def test_a_shallow_best_state_dict_would_restore_the_last_epoch(tmp_path, tiny_ckpt, monkeypatch):
    """The user's bug, reproduced: without clone() the "best" weights follow training."""
    data = _write_data(tmp_path / "data.json")
    monkeypatch.setattr(ift, "snapshot_state", lambda model: model.state_dict())
    summary, snaps, final = _run_with_rising_val_loss(tiny_ckpt, data, tmp_path / "out")
    assert summary["best_epoch"] == 1  # the bookkeeping says epoch 1 ...
    assert all(torch.equal(final[k], snaps[2][k]) for k in final)  # ... the weights are epoch 2's


class _Scripted(torch.nn.Module):
    """A stand-in model whose greedy choice at its n-th call is script[n] (the last one repeated)."""

    def __init__(self, script: list[int], vocab: int = 50257):
        super().__init__()
        self.config = GPTConfig(block_size=16, vocab_size=vocab)
        self.script, self.vocab = script, vocab
        self.seen_lengths = []

    def forward(self, idx, targets=None):
        B, T = idx.shape
        self.seen_lengths.append(T)
        step = len(self.seen_lengths) - 1
        logits = torch.zeros(B, T, self.vocab)
        logits[:, -1, self.script[min(step, len(self.script) - 1)]] = 1.0
        return logits, None


def test_generation_stops_at_end_of_text_and_at_max_new_tokens():
    stops = _Scripted([11, 12, tokenizer.EOT, 13])
    assert ift.generate(stops, [1, 2, 3], max_new_tokens=10) == [11, 12]  # end-of-text not kept
    endless = _Scripted([7])
    assert ift.generate(endless, [1, 2, 3], max_new_tokens=20) == [7] * 20
    # the prompt is cut to the model's context (16) as it grows, as the book's generate does
    assert max(endless.seen_lengths) == 16


def test_cli_writes_one_answer_per_test_item(tmp_path, tiny_ckpt, run_module):
    data = _write_data(tmp_path / "data.json")
    out = tmp_path / "out"
    r = run_module(
        "trainer.ift",
        str(tiny_ckpt),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs-max",
        "1",
        "--max-new-tokens",
        "3",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--store",
        (tmp_path / "store").as_uri(),
    )
    assert r.returncode == 0, r.stderr
    answers = json.loads((out / "answers.json").read_text())
    entries = json.loads(data.read_text())
    assert [{k: a[k] for k in ift.KEYS} for a in answers] == entries[34:38]  # the 10% test split
    for a in answers:
        assert isinstance(a["model_response"], str)
    summary = json.loads((out / "ift.json").read_text())
    assert summary["test_items"] == len(answers) == 4 and summary["best_epoch"] == 1
    assert json.loads(r.stdout.strip().splitlines()[-1])["best_epoch"] == 1
    # the fine-tuned checkpoint went to the store, committed (manifest last) and byte for byte
    stored = open_store((tmp_path / "store").as_uri())
    assert summary["fine_tuned"]["uri"] == stored.uri_of("ift_step_000001")
    assert stored.read_manifest("ift_step_000001") == checkpoint.verify(out / "ift_step_000001")
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temporaries


@pytest.mark.parametrize(
    "entries, message",
    [
        (
            [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "a", "input": ""}],
            "entry 1 lacks key 'output'",
        ),
        ({"instruction": "a"}, "must be a non-empty JSON list"),
    ],
)
def test_bad_data_is_one_error_line_and_exit_2(tmp_path, tiny_ckpt, run_module, entries, message):
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(entries))
    r = run_module("trainer.ift", str(tiny_ckpt), "--data", str(data), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
