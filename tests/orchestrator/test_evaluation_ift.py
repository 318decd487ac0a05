"""The evaluating stage's instruction fine-tuning, driven by a real Worker with the local provider.

The runs are pretrained baselines (`model.pretrained: gpt2`): no training, so each test takes
seconds. Their "OpenAI weights" are a one-layer GPT-2 in Hugging Face's format, found in the
trainer's download cache (TRAINYARD_HF_CACHE), so no request leaves the machine. The trainer's
programs (prepare, evaluate, ift) are the real ones.
"""

from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import select

from ift_helpers import fill_hf_cache, write_instruction_data, write_tiny_gpt2
from orchestrator.controller import Worker
from orchestrator.db.models import Evaluation, Instance, LogChunk, RunEvent
from orchestrator.judge.compare import item_set_hash
from orchestrator.judge.schemas import Item
from orchestrator_helpers import drive, ended, submit_run
from trainer.artifacts.manifest import verify


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def db_url(sqlite_url, tmp_path, tiny_weights, monkeypatch):
    """SQLite only (the trainer's programs run for real). The trainer runs as a child of this
    process: it reads the cache of Hugging Face weights from our environment."""
    monkeypatch.setenv("TRAINYARD_HF_CACHE", str(fill_hf_cache(tmp_path / "hf", tiny_weights)))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no download
    return sqlite_url


@pytest.fixture
def worker(factory, settings):
    made: list[Worker] = []

    def make(worker_id: str = "worker-a") -> Worker:
        w = Worker(settings.model_copy(update={"worker_id": worker_id}), factory)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def _drive(worker, factory, run_id, until):
    return drive(worker, factory, run_id, until, timeout=120.0)


def _baseline(factory, tmp_path, **ift) -> str:
    spec = {
        "name": "baseline gpt2",
        "model": {"pretrained": "gpt2"},
        "data": {"source": "builtin:corpus", "max_tokens": 20000},
        "evaluation": {
            "test_max_tokens": 512,
            "ift": {
                "enabled": True,
                "data": str(write_instruction_data(tmp_path / "alpaca.json", 40)),
                "epochs_max": 1,
                "limit_test": 3,
                "max_new_tokens": 4,
                **ift,
            },
        },
    }
    return submit_run(factory, **spec)


def _events(factory, run_id: str) -> list[RunEvent]:
    with factory() as s:
        return s.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)).all()


def _ift_starts(factory, run_id: str) -> int:
    return sum(e.message.startswith("instruction fine-tuning hf:gpt2") for e in _events(factory, run_id))


def test_a_pretrained_run_is_evaluated_then_its_ift_answers_are_stored(worker, factory, tmp_path, client):
    run_id = _baseline(factory, tmp_path)
    run = _drive(worker(), factory, run_id, ended)
    assert run.status == "succeeded", run.status_reason
    assert run.status_reason.startswith(f"test loss {run.test_loss:.4f}; instruction fine-tuned (best epoch 1 of 1")
    assert run.status_reason.endswith("answered 3 test items")
    statuses = [e.to_status for e in _events(factory, run_id) if e.kind == "status"]
    assert statuses == ["pending", "provisioning", "bootstrapping", "evaluating", "succeeded"]  # never trained

    with factory() as s:
        test, ift = s.scalars(select(Evaluation).where(Evaluation.run_id == run_id).order_by(Evaluation.id)).all()
        assert (test.kind, test.test_loss, test.checkpoint_id) == ("test_loss", run.test_loss, None)
        assert test.details["checkpoint"] == "hf:gpt2" and test.test_set_sha256
        # OpenAI's weights were never trained at a shorter length: scored over their context, in fp32
        assert (test.window, test.precision) == (128, "fp32")
        assert ift.kind == "ift" and ift.test_loss is None
        answers = ift.details["answers"]
        # the book's split of 40 items: 34 train, 4 test (the first 3 answered), 2 validation
        assert [a["instruction"] for a in answers] == [
            f"Name the colour of item {i}." if i % 2 else "Rewrite the sentence in the past tense."
            for i in (34, 35, 36)
        ]
        assert all(set(a) == {"instruction", "input", "output", "model_response"} for a in answers)
        items = [Item(**{k: a[k] for k in ("instruction", "input", "output")}) for a in answers]
        assert ift.details["item_set_hash"] == item_set_hash(items) and ift.details["n_items"] == 3
        summary = ift.details["summary"]
        assert (summary["checkpoint"], summary["epochs_run"], summary["max_new_tokens"]) == ("hf:gpt2", 1, 4)
        assert (summary["train_items"], summary["test_items"], summary["val_items"]) == (34, 3, 2)
        logs = "".join(c.text for c in s.scalars(select(LogChunk).where(LogChunk.run_id == run_id)))
        assert '"test_loss"' in logs and '"best_epoch"' in logs  # evaluate's and ift's output kept
        (inst,) = s.scalars(select(Instance).where(Instance.run_id == run_id)).all()
        assert inst.terminated_at is not None
    assert (tmp_path / "data" / "runs" / f"ty-{run_id}-0" / "ift" / "answers.json").is_file()

    # the fine-tuned weights are a checkpoint of their own in the store, listed and downloadable
    stored = tmp_path / "data" / "artifacts" / "runs" / run_id / "ift" / "ift_step_000000"
    manifest = verify(stored)  # committed: every file's SHA-256 checked against its manifest
    (listed,) = client.get(f"/api/v1/runs/{run_id}/checkpoints").json()["items"]
    assert (listed["kind"], listed["step"], listed["state"], listed["best"]) == ("ift", 0, "stored", False)
    assert listed["uri"] == stored.as_uri() and listed["bytes"] == sum(f["bytes"] for f in manifest["files"].values())
    detail = client.get(f"/api/v1/runs/{run_id}/checkpoints/0", params={"kind": "ift"}).json()
    assert detail["manifest"] == manifest
    weights = client.get(f"/api/v1/runs/{run_id}/checkpoints/0/files/model.safetensors", params={"kind": "ift"})
    assert weights.content == (stored / "model.safetensors").read_bytes()
    assert client.get(f"/api/v1/runs/{run_id}/checkpoints/0").status_code == 404  # no training checkpoint


def test_a_failing_ift_fails_the_run_with_one_line_and_keeps_the_test_loss(worker, factory, tmp_path):
    missing = tmp_path / "nowhere" / "alpaca.json"
    run_id = _baseline(factory, tmp_path, data=str(missing))
    run = _drive(worker(), factory, run_id, ended)
    assert run.status == "failed"
    assert run.status_reason == f"instruction fine-tuning failed: cannot read {missing}: No such file or directory"
    assert run.test_loss is not None
    with factory() as s:
        kinds = s.scalars(select(Evaluation.kind).where(Evaluation.run_id == run_id)).all()
        assert kinds == ["test_loss"]
        assert s.scalars(select(Instance).where(Instance.run_id == run_id)).one().terminated_at is not None


def test_a_killed_ift_is_restarted_and_a_new_worker_does_not_start_it_again(worker, factory, tmp_path):
    run_id = _baseline(factory, tmp_path, epochs_max=3)
    pid_file = tmp_path / "data" / "runs" / f"ty-{run_id}-0" / "ift.pid"
    first = worker("worker-a")
    _drive(first, factory, run_id, lambda _r: pid_file.is_file())
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # the node's process group: no exit code
    _drive(first, factory, run_id, lambda _r: _ift_starts(factory, run_id) == 2)
    restarted = int(pid_file.read_text())

    first.close()  # releases its lease; another worker takes the run while ift runs
    run = _drive(worker("worker-b"), factory, run_id, ended)
    assert run.status == "succeeded", run.status_reason
    assert _ift_starts(factory, run_id) == 2 and int(pid_file.read_text()) == restarted
    with factory() as s:
        assert s.scalars(select(Evaluation.kind).where(Evaluation.run_id == run_id)).all() == ["test_loss", "ift"]
