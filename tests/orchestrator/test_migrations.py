"""Migrations are the only way tables come to exist; they must match the models exactly."""

import json
from datetime import datetime, timezone

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from orchestrator.db.migrations import alembic_config, downgrade, upgrade
from orchestrator.db.models import Base
from orchestrator.rollups import rebuild_rollups


def test_single_head():
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"


def test_upgrade_from_empty_matches_models_and_downgrade_to_empty(empty_db_url):
    upgrade(empty_db_url)
    engine = create_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrated schema differ: {diff}"
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        downgrade(empty_db_url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_0008_fills_runs_provider_from_each_spec(empty_db_url):
    upgrade(empty_db_url, "0007")
    engine = create_engine(empty_db_url)
    try:
        specs = {
            "on-lambda": {"compute": {"provider": "lambda", "instance_type": "gpu_1x_a10"}},
            "on-ssh": {"compute": {"provider": "ssh"}},
            "hand-made": {},
        }
        with engine.begin() as conn:
            for run_id, spec in specs.items():
                conn.execute(
                    text(
                        "INSERT INTO runs (id, name, spec, status, cancel_requested, created_at, updated_at, "
                        "tokens_done, step, recoveries, metrics_offset, log_offset) VALUES (:id, :id, :spec, "
                        "'succeeded', false, :now, :now, 0, 0, 0, 0, 0)"
                    ),
                    {"id": run_id, "spec": json.dumps(spec), "now": datetime.now(timezone.utc)},
                )
        upgrade(empty_db_url)
        with engine.connect() as conn:
            got = dict(conn.execute(text("SELECT id, provider FROM runs")).all())
        assert got == {"on-lambda": "lambda", "on-ssh": "ssh", "hand-made": "local"}
        downgrade(empty_db_url, "0007")
        assert "provider" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    finally:
        engine.dispose()


def _point(run: str, kind: str, step: int, loss: float | None, lr: float | None = None) -> dict:
    """A metric_points row's values as 0007 stores them."""
    train = kind == "train"
    return dict(
        run=run,
        kind=kind,
        step=step,
        tokens=step * 64,
        time=1000.0 + step,
        lr=lr,
        train_loss=loss if train else None,
        val_loss=None if train else loss,
    )


def test_0008_backfills_metric_rollups_from_the_existing_points(empty_db_url):
    upgrade(empty_db_url, "0007")
    engine = create_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            for run_id in ("long", "short"):
                conn.execute(
                    text(
                        "INSERT INTO runs (id, name, spec, status, cancel_requested, created_at, updated_at, "
                        "tokens_done, step, recoveries, metrics_offset, log_offset) VALUES (:id, :id, '{}', "
                        "'running', false, :now, :now, 0, 0, 0, 0, 0)"
                    ),
                    {"id": run_id, "now": datetime.now(timezone.utc)},
                )
            points = [_point("long", "train", s, 5.0 - s / 100, None if s % 3 else 1e-3) for s in range(0, 100)]
            points += [_point("long", "val", s, 4.0 + s % 7) for s in (10, 40, 99)]
            points += [_point("short", "train", 1, None, 2e-3)]
            conn.execute(
                text(
                    "INSERT INTO metric_points (run_id, kind, step, tokens, time, train_loss, val_loss, lr) "
                    "VALUES (:run, :kind, :step, :tokens, :time, :train_loss, :val_loss, :lr)"
                ),
                points,
            )
        upgrade(empty_db_url)
        query = text("SELECT * FROM metric_rollups ORDER BY run_id, kind, bucket")
        with engine.connect() as conn:
            backfilled = [tuple(r) for r in conn.execute(query).all()]
        first = dict(zip(("run_id", "kind", "bucket", "points", "min_step", "max_step"), backfilled[0], strict=False))
        assert first == {"run_id": "long", "kind": "train", "bucket": 0, "points": 32, "min_step": 0, "max_step": 31}
        assert len(backfilled) == 4 + 3 + 1  # long: train steps 0..99 in 4 buckets, 3 val; short: 1
        with Session(engine) as s, s.begin():  # what the ingest's code computes, the same rows
            for run_id in ("long", "short"):
                rebuild_rollups(s, run_id)
        with engine.connect() as conn:
            assert [tuple(r) for r in conn.execute(query).all()] == backfilled
        downgrade(empty_db_url, "0007")
        assert "metric_rollups" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_0011_marks_existing_checkpoints_as_training_and_keeps_one_row_per_kind_and_step(empty_db_url):
    upgrade(empty_db_url, "0010")
    engine = create_engine(empty_db_url)
    now = datetime.now(timezone.utc)
    insert_run = text(
        "INSERT INTO runs (id, name, spec, status, cancel_requested, created_at, updated_at, tokens_done, step, "
        "recoveries, metrics_offset, log_offset) VALUES ('r', 'r', '{}', 'succeeded', false, :now, :now, 0, 0, 0, 0, 0)"
    )
    columns = "run_id, step, tokens, uri, state, created_at"
    try:
        with engine.begin() as conn:
            conn.execute(insert_run, {"now": now})
            conn.execute(
                text(f"INSERT INTO checkpoints ({columns}) VALUES ('r', 8, 64, 'u', 'stored', :now)"), {"now": now}
            )
        upgrade(empty_db_url, "0011")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT kind, step FROM checkpoints")).all() == [("train", 8)]
            # the IFT weights tuned from step 8 have a row of their own
            conn.execute(
                text(f"INSERT INTO checkpoints (kind, {columns}) VALUES ('ift', 'r', 8, 0, 'i', 'stored', :now)"),
                {"now": now},
            )
        downgrade(empty_db_url, "0010")  # one row per step again: the IFT row goes, training's stays
        with engine.connect() as conn:
            assert conn.execute(text("SELECT step, uri FROM checkpoints")).all() == [(8, "u")]
    finally:
        engine.dispose()
