"""Bulk-seeds a migrated trainyard database for the API benchmark: N runs (with progress, one
instance, one cost entry and one event each) and M metric points spread over them.

Uses the drivers directly (sqlite3 executemany, PostgreSQL COPY): going through the ORM would
take minutes for a million rows and measure nothing we care about.
"""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import datetime, timedelta, timezone

from orchestrator.spec import RunSpec

STATUSES = ["succeeded"] * 6 + ["training", "failed", "cancelled", "pending"]
RUN_COLS = (
    "id",
    "name",
    "spec",
    "status",
    "cancel_requested",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "target_tokens",
    "tokens_done",
    "step",
    "train_loss",
    "val_loss",
    "tokens_per_s",
    "test_loss",
    "world_size",
    "recoveries",
    "metrics_offset",
    "log_offset",
)
INST_COLS = (
    "id",
    "run_id",
    "rank",
    "name",
    "provider",
    "instance_type",
    "price_cents_per_hour",
    "status",
    "launched_at",
    "active_at",
    "terminated_at",
)
COST_COLS = ("run_id", "instance_id", "kind", "cents", "quantity", "unit", "description", "created_at")
EVENT_COLS = ("run_id", "time", "kind", "from_status", "to_status", "message")
POINT_COLS = ("run_id", "kind", "step", "tokens", "time", "train_loss", "val_loss", "lr", "tokens_per_s")


def run_ids(n: int) -> list[str]:
    return [f"{i:012x}" for i in range(1, n + 1)]


def _rows(n_runs: int, n_points: int, seed: int = 0):
    rnd = random.Random(seed)
    spec = json.dumps(RunSpec(name="bench").model_dump(mode="json"))
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    runs, insts, costs, events = [], [], [], []
    for i, rid in enumerate(run_ids(n_runs), start=1):
        status = STATUSES[i % len(STATUSES)]
        created = t0 + timedelta(minutes=i)
        ended = created + timedelta(hours=1) if status in ("succeeded", "failed", "cancelled") else None
        target = 2_000_000
        done = target if status == "succeeded" else rnd.randrange(target)
        runs.append(
            (
                rid,
                f"bench-{i}",
                spec,
                status,
                False,
                created,
                created,
                created,
                ended,
                target,
                done,
                done // 2048,
                rnd.uniform(3, 6),
                rnd.uniform(3, 6),
                rnd.uniform(1e4, 1e5),
                rnd.uniform(3, 6) if status == "succeeded" else None,
                8,
                0,
                0,
                0,
            )
        )
        insts.append(
            (
                i,
                rid,
                0,
                f"ty-{rid}-0",
                "lambda",
                "gpu_8x_h100_sxm5",
                2392,
                "terminated" if ended else "active",
                created,
                created + timedelta(minutes=2),
                ended,
            )
        )
        if ended:
            costs.append((rid, i, "instance", 2392.0, 60.0, "minute", "billed instance time", ended))
        events.append((rid, created, "status", None, "pending", "submitted"))
    points = []
    per_run = max(1, n_points // n_runs)
    ids = run_ids(n_runs)
    for j in range(n_points):
        rid = ids[min(j // per_run, n_runs - 1)]
        step = j % per_run
        points.append(
            (
                rid,
                "val" if step % 10 == 9 else "train",
                step,
                step * 2048,
                1.7e9 + j,
                5.0 - step * 0.001,
                5.1,
                3e-4,
                5e4,
            )
        )
    return runs, insts, costs, events, points


def _naive(row: tuple) -> tuple:
    # SQLAlchemy stores SQLite datetimes as naive UTC text
    return tuple(v.replace(tzinfo=None).isoformat(sep=" ") if isinstance(v, datetime) else v for v in row)


def seed_sqlite(path: str, n_runs: int, n_points: int) -> None:
    runs, insts, costs, events, points = _rows(n_runs, n_points)
    con = sqlite3.connect(path)
    try:
        with con:
            for table, cols, rows in (
                ("runs", RUN_COLS, runs),
                ("instances", INST_COLS, insts),
                ("cost_entries", COST_COLS, costs),
                ("run_events", EVENT_COLS, events),
                ("metric_points", POINT_COLS, points),
            ):
                marks = ",".join("?" * len(cols))
                con.executemany(f"INSERT INTO {table} ({','.join(cols)}) VALUES ({marks})", map(_naive, rows))
        con.execute("ANALYZE")
    finally:
        con.close()


def seed_postgres(url: str, n_runs: int, n_points: int) -> None:
    import psycopg

    runs, insts, costs, events, points = _rows(n_runs, n_points)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con, con.cursor() as cur:
        for table, cols, rows in (
            ("runs", RUN_COLS, runs),
            ("instances", INST_COLS, insts),
            ("cost_entries", COST_COLS, costs),
            ("run_events", EVENT_COLS, events),
            ("metric_points", POINT_COLS, points),
        ):
            with cur.copy(f"COPY {table} ({','.join(cols)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        cur.execute("SELECT setval(pg_get_serial_sequence('instances', 'id'), (SELECT max(id) FROM instances))")
        con.commit()
        con.autocommit = True
        cur.execute("VACUUM ANALYZE")
