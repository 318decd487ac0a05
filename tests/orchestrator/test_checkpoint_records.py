"""Checkpoints as the service records and keeps them, without a training: ingest of the trainer's
checkpoint lines (committed, stored, upload failed, a step saved again after a recovery), the
loss curve after a resume, retention (which checkpoints it deletes from a real file:// store, and
which it never touches), the names of replacement nodes, and the commands' store arguments.

Every test that touches the database runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from sqlalchemy import select

from orchestrator.controller import commands as cmd
from orchestrator.controller import lease, storage
from orchestrator.controller.context import RunContext
from orchestrator.controller.ingest import apply_lines
from orchestrator.db.models import Checkpoint, Evaluation, MetricPoint, Run, RunEvent
from orchestrator.db.session import transaction
from orchestrator.runs import instance_name, next_instance_name
from orchestrator.settings import Settings
from orchestrator.spec import validate_spec
from orchestrator_helpers import submit_run as _submit
from provision.local import LocalProvider
from trainer.artifacts import manifest as mf
from trainer.artifacts import open_store


def _apply(factory, run_id: str, lines: list[dict]) -> None:
    with transaction(factory) as s:
        apply_lines(s, s.get(Run, run_id), lines, lambda rel: f"node://n/{rel}")


def _rows(factory, run_id: str) -> list[Checkpoint]:
    with factory() as s:
        return list(s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step)))


def test_a_checkpoint_is_on_the_node_until_the_trainer_says_it_is_stored(factory):
    run_id = _submit(factory)
    _apply(
        factory,
        run_id,
        [
            {
                "kind": "checkpoint",
                "step": 10,
                "tokens": 640,
                "path": "checkpoints/step_000010",
                "bytes": 5,
                "val_loss": 4.0,
            },
            {"kind": "checkpoint", "step": 20, "tokens": 1280, "path": "checkpoints/step_000020", "bytes": 6},
        ],
    )
    assert [(c.step, c.state, c.uri) for c in _rows(factory, run_id)] == [
        (10, "on_node", "node://n/checkpoints/step_000010"),
        (20, "on_node", "node://n/checkpoints/step_000020"),
    ]

    _apply(
        factory,
        run_id,
        [
            {
                "kind": "checkpoint_stored",
                "step": 10,
                "tokens": 640,
                "uri": "s3://b/runs/r/checkpoints/step_000010",
                "bytes": 5,
                "seconds": 1.5,
            },
            {"kind": "checkpoint_upload_failed", "step": 20, "error": "connection reset"},
        ],
    )
    first, second = _rows(factory, run_id)
    assert (first.state, first.uri, first.val_loss, first.node_path) == (
        "stored",
        "s3://b/runs/r/checkpoints/step_000010",
        4.0,
        "checkpoints/step_000010",
    )
    assert first.stored_at is not None
    assert second.state == "on_node"  # a failed upload leaves it where it is
    with factory() as s:
        messages = [e.message for e in s.scalars(select(RunEvent).where(RunEvent.run_id == run_id))]
    assert "checkpoint of step 10 stored at s3://b/runs/r/checkpoints/step_000010 (1.5 s)" in messages
    assert "uploading the checkpoint of step 20 failed: connection reset" in messages

    # a recovery trains step 20 again and commits it again: still one row for the step
    _apply(
        factory,
        run_id,
        [
            {"kind": "checkpoint", "step": 20, "tokens": 1280, "path": "checkpoints/step_000020", "bytes": 7},
            {"kind": "checkpoint_stored", "step": 20, "tokens": 1280, "uri": "s3://b/runs/r/checkpoints/step_000020"},
        ],
    )
    assert [(c.step, c.state, c.bytes) for c in _rows(factory, run_id)] == [(10, "stored", 5), (20, "stored", 7)]


def test_a_resumed_trainer_continues_the_curve_from_its_checkpoint(factory):
    run_id = _submit(factory)

    def train(step: int) -> dict:
        return {"kind": "train", "step": step, "tokens": step * 64, "train_loss": 5.0 - step / 100}

    _apply(factory, run_id, [train(s) for s in (2, 4, 6, 8, 10, 12)])
    # the node died after step 12; the last stored checkpoint was step 8
    _apply(
        factory,
        run_id,
        [{"kind": "start", "world_size": 2, "params": 10, "resumed_from_step": 8}, train(10), train(12), train(14)],
    )
    with factory() as s:
        steps = [
            p.step for p in s.scalars(select(MetricPoint).where(MetricPoint.run_id == run_id).order_by(MetricPoint.id))
        ]
        assert s.get(Run, run_id).step == 14
    assert steps == [2, 4, 6, 8, 10, 12, 14]  # no step twice, none lost


def _stored_rows(ids_steps_losses):
    return [
        SimpleNamespace(id=i, step=step, val_loss=loss, state=state)
        for i, (step, loss, state) in enumerate(ids_steps_losses, 1)
    ]


def test_retention_keeps_the_last_k_the_best_and_the_referenced_and_never_an_unstored_one():
    rows = _stored_rows(
        [
            (10, 3.0, "stored"),
            (20, 2.0, "stored"),
            (30, 2.5, "stored"),
            (40, 2.6, "stored"),
            (50, 2.7, "stored"),
            (60, 2.8, "on_node"),
            (5, None, "deleting"),
        ]
    )
    victims = storage.retention_victims(rows, keep_last=2, referenced={3})
    # last 2 stored: 40, 50; best: 20; referenced: 30; step 60 is not in the store yet; 5 was
    # chosen before and its deletion is finished now
    assert sorted(v.step for v in victims) == [5, 10]
    assert storage.retention_victims(rows[:5], keep_last=5, referenced=set()) == []


def _commit_ckpt(root, name: str, step: int) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(bytes([step]) * 100)
    files = {"model.safetensors": {"bytes": 100, "sha256": mf.sha256_file(d / "model.safetensors")}}
    (d / mf.MANIFEST).write_text(json.dumps({"format": 1, "step": step, "tokens": step, "files": files}))


def test_retention_deletes_from_the_store_and_says_so(factory, db_url, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url)
    run_id = _submit(factory, training={"keep_last": 1})
    store_uri = (tmp_path / "store" / "runs" / run_id / "checkpoints").as_uri()
    store = open_store(store_uri)
    local = tmp_path / "local"
    for step, loss in ((10, 3.0), (20, 2.0), (30, 2.5), (40, 2.6)):
        _commit_ckpt(local, f"step_{step:06d}", step)
        store.put_checkpoint(local / f"step_{step:06d}", f"step_{step:06d}")
        _apply(
            factory,
            run_id,
            [
                {
                    "kind": "checkpoint_stored",
                    "step": step,
                    "tokens": step,
                    "val_loss": loss,
                    "uri": f"{store_uri}/step_{step:06d}",
                }
            ],
        )
    with transaction(factory) as s:
        s.get(Run, run_id).artifact_uri = (tmp_path / "store" / "runs" / run_id).as_uri()
        ten = s.scalar(select(Checkpoint.id).where(Checkpoint.run_id == run_id, Checkpoint.step == 10))
        s.add(Evaluation(run_id=run_id, checkpoint_id=ten, kind="test_loss", test_loss=3.1, details={}))
    token = lease.acquire(factory, run_id, "w", lease_s=30)
    ctx = RunContext(run_id, token, settings, factory, LocalProvider(tmp_path / "runs", python="python3"))
    with factory() as s:
        run = s.get(Run, run_id)
        storage.apply_retention(ctx, run, validate_spec(run.spec))

    assert store.list_checkpoints() == ["step_000010", "step_000020", "step_000040"]
    assert [(c.step, c.state) for c in _rows(factory, run_id)] == [
        (10, "stored"),
        (20, "stored"),
        (30, "deleted"),
        (40, "stored"),
    ]
    with factory() as s:
        assert any(
            "retention deleted the stored checkpoint(s) of step 30" in e.message
            for e in s.scalars(select(RunEvent).where(RunEvent.run_id == run_id))
        )


def test_a_replacement_node_has_a_name_of_its_own():
    rows = [SimpleNamespace(rank=0), SimpleNamespace(rank=1), SimpleNamespace(rank=1)]
    assert next_instance_name("abc", 0, []) == instance_name("abc", 0) == "ty-abc-0"
    assert next_instance_name("abc", 1, rows) == "ty-abc-1r2"
    assert next_instance_name("abc", 0, rows) == "ty-abc-0r1"


def test_the_commands_carry_the_store():
    spec = validate_spec({"name": "t", "data": {"max_tokens": 1000}})
    prep = cmd.prepare_command(
        "py", {"AWS_SHARED_CREDENTIALS_FILE": "/w/.aws-credentials"}, spec, "/w", cache_uri="s3://b/p/data/d-1"
    )
    assert "--cache s3://b/p/data/d-1" in prep.command  # the credentials file's path: in its env file
    assert prep.env["AWS_SHARED_CREDENTIALS_FILE"] == "/w/.aws-credentials" and ".aws" not in prep.command
    train = cmd.train_command(
        "py", {}, spec, "/w", node_rank=0, master_addr=None, resume_from="s3://b/p/runs/r/checkpoints/step_000008"
    )
    assert train.command.endswith("--resume-from s3://b/p/runs/r/checkpoints/step_000008")
    assert (
        cmd.trainer_config(spec, "/w", "s3://b/p/runs/r/checkpoints")["artifact_uri"] == "s3://b/p/runs/r/checkpoints"
    )
    assert cmd.cache_outcome('tokenising...\n{"splits": {}, "cache": "hit"}\n') == "hit"
    assert cmd.cache_outcome("no summary") is None
