"""Metric rollups (orchestrator.rollups) and the series read from them (orchestrator.series), on
SQLite and PostgreSQL: the ingest keeps them equal to a from-scratch recomputation (resumes
included), and a long run's series grouped from them is the one grouped from the raw points.

The raw GROUP BY's answer is had by deleting the run's rollups (a run with too few rollup buckets
is read raw); `rebuild_rollups` puts them back from scratch.
"""

from __future__ import annotations

import random

import pytest
from sqlalchemy import delete, event, literal, select, text

from orchestrator import series as series_module
from orchestrator.controller.ingest import apply_lines
from orchestrator.db.models import MetricRollup, Run
from orchestrator.db.session import transaction
from orchestrator.rollups import ROLLUP_STEPS, bucket_of, rebuild_rollups
from orchestrator.series import RunSeries, run_series
from orchestrator_helpers import submit_run

T0 = 1_800_000_000.0


def ingest(factory, run_id: str, lines: list[dict]) -> None:
    """Lines through the controller's ingest, in one transaction as record_output writes them."""
    with transaction(factory) as s:
        apply_lines(s, s.get(Run, run_id), lines, lambda rel: f"node://n/{rel}")


def train(step: int, loss: float | None = None, **kw) -> dict:
    return {
        "kind": "train",
        "step": step,
        "tokens": step * 1000,
        "time": T0 + step,
        "train_loss": 5.0 - step / 1000 if loss is None else loss,
        "lr": 1e-3,
        "tokens_per_s": 500.0 + step % 7,
        **kw,
    }


def val(step: int, loss: float) -> dict:
    return {"kind": "val", "step": step, "tokens": step * 1000, "time": T0 + step, "val_loss": loss}


def rollup_rows(factory, run_id: str) -> list[tuple]:
    cols = [c for c in MetricRollup.__table__.c]
    with factory() as s:
        rows = s.execute(select(*cols).where(cols[0] == run_id).order_by(MetricRollup.kind, MetricRollup.bucket)).all()
    return [tuple(r) for r in rows]


def from_scratch(factory, run_id: str) -> list[tuple]:
    """The run's rollups recomputed from every raw point (then left that way)."""
    with transaction(factory) as s:
        rebuild_rollups(s, run_id)
    return rollup_rows(factory, run_id)


def read(factory, run_id: str, max_points: int = 2000, after_id: int = 0) -> tuple[RunSeries, list[str]]:
    """run_series, and the statements it ran (to tell the rollup read from the raw one)."""
    statements: list[str] = []
    engine = factory.kw["bind"]

    def seen(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with factory() as s:
            return run_series(s, run_id, after_id, max_points), statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def read_raw(factory, run_id: str, max_points: int = 2000) -> RunSeries:
    """The raw GROUP BY's answer: the rollups deleted for the read, rebuilt after."""
    with transaction(factory) as s:
        s.execute(delete(MetricRollup).where(MetricRollup.run_id == run_id))
    got, statements = read(factory, run_id, max_points)
    assert not used_rollups(statements)
    from_scratch(factory, run_id)
    return got


def used_rollups(statements: list[str]) -> bool:
    return any("UNION ALL" in q and "metric_rollups" in q for q in statements)


def bulk_train(factory, run_id: str, n: int) -> None:
    """Train points at steps 0..n-1, made by the database itself: a falling noisy curve with one
    spike and one dip, lr null on every 11th step."""
    with transaction(factory) as s:
        s.execute(
            text(
                "INSERT INTO metric_points (run_id, kind, step, tokens, time, train_loss, lr, tokens_per_s) "
                "WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < :n - 1) "
                "SELECT :run, 'train', i, i * 1000, :t0 + i, "
                "CASE WHEN i = 31337 THEN 99.0 WHEN i = 177777 THEN 0.25 ELSE 3.0 + 7.0 / (1 + i / 1000.0) "
                "+ (i % 7) * 0.01 END, CASE WHEN i % 11 = 0 THEN NULL ELSE 0.001 * (1 + i % 5) END, "
                "500.0 + (i % 13) FROM g"
            ),
            {"n": n, "run": run_id, "t0": T0},
        )


def extremes(s) -> tuple:
    return (s.raw_points, min(s.y), max(s.y), s.tokens[0], s.tokens[-1], s.time[0], s.time[-1])


# -- the series from the rollups ------------------------------------------------------------------
def test_a_long_runs_series_from_the_rollups_is_the_raw_group_bys(factory):
    # Train steps 0..191,999: with max_points=2000 (1,000 display buckets of 192 steps, 6 rollup
    # buckets each) the display buckets fall on rollup bounds, so the two answers are identical.
    run_id, n = submit_run(factory), 192_000
    bulk_train(factory, run_id, n)
    with transaction(factory) as s:  # validation every 16 steps: 12,000 points, 1-2 a rollup bucket
        s.execute(
            text(
                "INSERT INTO metric_points (run_id, kind, step, tokens, time, val_loss) "
                "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 11999) "
                "SELECT :run, 'val', i * 16, i * 16000, :t0 + i * 16, "
                "CASE WHEN i = 4321 THEN 42.0 ELSE 4.0 - i / 12000.0 END FROM g"
            ),
            {"run": run_id, "t0": T0},
        )
    other = submit_run(factory)  # another run's points and rollups are not this run's
    ingest(factory, other, [train(step, loss=-1.0) for step in range(40_000, 40_100)])
    from_scratch(factory, run_id)  # as the migration's backfill makes them

    got, statements = read(factory, run_id)
    assert used_rollups(statements)
    raw = read_raw(factory, run_id)
    assert got.next_after_id == raw.next_after_id and got.downsampled == raw.downsampled
    for name in ("train_loss", "lr", "tokens_per_s"):
        assert got.series[name] == raw.series[name], name
    # validation's steps 16..191984 put its display bounds off the rollups' (see below)
    assert extremes(got.series["val_loss"]) == extremes(raw.series["val_loss"])
    loss = got.series["train_loss"]
    assert got.downsampled and loss.raw_points == n and 1000 < len(loss.y) <= 2000
    assert max(loss.y) == 99.0 and min(loss.y) == 0.25
    assert got.series["lr"].raw_points == n - len(range(0, n, 11))
    assert got.series["val_loss"].raw_points == 11_999 and max(got.series["val_loss"].y) == 42.0

    # display buckets not on rollup bounds: each rollup row goes whole into one, so the buckets
    # differ a little, but the extremes, the counts and the ends are the raw answer's
    for max_points in (10, 777, 5000):
        got, statements = read(factory, run_id, max_points)
        raw = read_raw(factory, run_id, max_points)
        assert used_rollups(statements) and got.next_after_id == raw.next_after_id
        for name, s in got.series.items():
            assert len(s.y) <= max_points and s.tokens == sorted(s.tokens)
            assert extremes(s) == extremes(raw.series[name]), (max_points, name)


def test_an_increment_and_a_short_run_are_read_raw(factory):
    run_id = submit_run(factory)
    ingest(factory, run_id, [train(step) for step in range(0, 3000)])  # 94 rollup buckets < 1,000
    got, statements = read(factory, run_id)
    assert got.downsampled and not used_rollups(statements)
    assert got.series["train_loss"].raw_points == 3000

    first, statements = read(factory, run_id, max_points=100)  # 50 display buckets: rollups do
    assert used_rollups(statements) and first.series["train_loss"].raw_points == 3000
    ingest(factory, run_id, [train(step) for step in range(3000, 3500)])
    new, statements = read(factory, run_id, max_points=100, after_id=first.next_after_id)
    assert not used_rollups(statements) and new.series["train_loss"].raw_points == 500
    assert new.series["train_loss"].tokens[0] == 3_000_000


def test_points_written_after_the_cursor_was_read_are_left_to_the_next_read(factory, monkeypatch):
    # The ingest commits points (and their buckets' rollups) between the read of the newest id
    # and the rollups' read: the answer still covers exactly the points up to the cursor.
    run_id = submit_run(factory)
    ingest(factory, run_id, [train(step, loss=2.0 + step % 3) for step in range(0, 620)])
    with factory() as s:
        upper = s.execute(text("SELECT max(id) FROM metric_points WHERE run_id = :r"), {"r": run_id}).scalar_one()
    before, _ = read(factory, run_id, max_points=20)
    # steps 608..619 are in bucket 19 at the cursor; 620..700 join it and fill 20 and 21, one
    # with a new extreme that must not show
    ingest(factory, run_id, [train(step, loss=0.5 if step == 650 else 2.0) for step in range(620, 701)])
    assert bucket_of(619) == bucket_of(620) == 19
    monkeypatch.setattr(series_module, "_UPPER", select(literal(upper)))
    got, statements = read(factory, run_id, max_points=20)
    assert used_rollups(statements)
    assert got == before
    loss = got.series["train_loss"]
    assert loss.raw_points == 620 and min(loss.y) == 2.0 and loss.tokens[-1] == 619_000
    assert got.next_after_id == upper


# -- keeping the rollups current ------------------------------------------------------------------
def test_the_ingest_keeps_the_rollups_equal_to_a_recomputation_through_resumes(factory):
    rng = random.Random(7)
    run_id, other = submit_run(factory), submit_run(factory)
    ingest(factory, other, [train(step) for step in range(0, 200)])
    other_rollups = rollup_rows(factory, other)
    step = 0

    def batch(count: int) -> list[dict]:
        nonlocal step
        lines = []
        for _ in range(count):
            step += 1
            lines.append(train(step, loss=rng.uniform(1, 5), lr=None if step % 5 == 0 else 1e-3))
            if step % 10 == 0:
                lines.append(val(step, rng.uniform(1, 5)))
        return lines

    for count in (1, 7, 100, 31, 3, 250):  # within a bucket, across several, past many
        ingest(factory, run_id, batch(count))
        assert rollup_rows(factory, run_id) == from_scratch(factory, run_id)
    kept = rollup_rows(factory, run_id)
    assert {r[1] for r in kept} == {"train", "val"} and len(kept) > 20

    # a resume from step 300 (mid-bucket): the points after it go, their rollups with them
    step = 300
    ingest(factory, run_id, [{"kind": "start", "world_size": 1, "params": 10, "resumed_from_step": 300}])
    kept = rollup_rows(factory, run_id)
    assert kept == from_scratch(factory, run_id)
    assert max(r[5] for r in kept) == 300  # max_step
    # resumed again in the batch that trains the steps again, then more of them
    step = 256  # a bucket's first step
    ingest(
        factory,
        run_id,
        [{"kind": "start", "world_size": 1, "params": 10, "resumed_from_step": 256}, *batch(80)],
    )
    assert rollup_rows(factory, run_id) == from_scratch(factory, run_id)
    ingest(factory, run_id, batch(500))
    kept = rollup_rows(factory, run_id)
    assert kept == from_scratch(factory, run_id)
    train_rows = [r for r in kept if r[1] == "train"]
    assert sum(r[3] for r in train_rows) == step and train_rows[-1][2] == bucket_of(step)
    assert all(r[3] <= ROLLUP_STEPS for r in train_rows)
    assert rollup_rows(factory, other) == other_rollups

    # a run's rollups go with it (the foreign key's cascade)
    with transaction(factory) as s:
        s.execute(text("DELETE FROM run_events WHERE run_id = :r"), {"r": run_id})
        s.execute(text("DELETE FROM runs WHERE id = :r"), {"r": run_id})
    assert rollup_rows(factory, run_id) == []


@pytest.mark.parametrize("batch_size", [100])
def test_a_long_ingested_run_reads_from_its_rollups_as_from_its_points(factory, batch_size):
    # 640 steps and max_points=20: 10 display buckets of 64 steps, 2 rollup buckets each
    run_id = submit_run(factory)
    lines = [train(step, loss=3.0 + (step * 7919 % 101) / 100) for step in range(0, 400)]
    lines.append(val(399, 3.5))
    for i in range(0, len(lines), batch_size):
        ingest(factory, run_id, lines[i : i + batch_size])
    resumed = [{"kind": "start", "world_size": 1, "params": 10, "resumed_from_step": 300}]
    lines = resumed + [train(step, loss=9.0 if step == 500 else 3.2) for step in range(301, 640)]
    for i in range(0, len(lines), batch_size):
        ingest(factory, run_id, lines[i : i + batch_size])
    assert rollup_rows(factory, run_id) == from_scratch(factory, run_id)

    got, statements = read(factory, run_id, max_points=20)
    assert used_rollups(statements)
    assert got == read_raw(factory, run_id, max_points=20)
    loss = got.series["train_loss"]
    assert loss.raw_points == 640 and max(loss.y) == 9.0 and loss.tokens[-1] == 639_000
    assert got.series["val_loss"].y == []  # validated at step 399, past the resume
