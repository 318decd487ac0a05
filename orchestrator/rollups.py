"""Metric rollups: a run's metric points pre-aggregated per bucket of ROLLUP_STEPS steps
(`metric_rollups`, one row per run, kind and bucket), so the dashboard's downsampled series
(orchestrator.series) group a few thousand rollup rows rather than a million raw points.

- **What a row holds.** Its points' count, min/max step, tokens and time, min/max id, and for each
  of the four series (train_loss, lr, tokens_per_s, val_loss) min, max and non-null count: what a
  display bucket needs to be exactly the bucket the raw points would give (min of mins, max of
  maxes, sums of counts). Every row has all four (a train row's val_loss count is 0): one
  statement computes any kind.
- **Kept current by the writer.** The ingest (orchestrator.controller.ingest) recomputes, in the
  transaction that writes or deletes the points, the rows of the buckets it touched:
  `refresh_rollups` deletes them and re-inserts them from the raw rows with one
  INSERT ... SELECT ... GROUP BY over just those buckets. An insert batch touches a handful of
  buckets; a resume deletes the points past its checkpoint and recomputes from there on. The
  same SQL runs on SQLite and PostgreSQL; the migration (0008) backfills existing runs. Whatever
  else writes points (a benchmark's bulk seed) must call `rebuild_rollups` after: a run whose
  rollups are missing is read raw, one whose rollups are partial would be read wrong.
- **Finding a bucket's raw rows.** metric_points has no step index, so a refresh reads the raw
  rows through (run_id, kind, id) from the lowest id that can be in the buckets: the old rows'
  `min_id` (every point ever written went through a refresh, so each bucket's points have ids
  from its row's `min_id` on) or, for points just inserted, the run's newest id before the
  insert. Steps grow with ids, so that range is about the touched buckets' points only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from sqlalchemy import Integer, Table, bindparam, delete, func, insert, literal_column, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select

from orchestrator.db.models import MetricPoint, MetricRollup

#: Steps a rollup bucket spans: the balance between the two ways a long series is read. Rollups
#: are read once they hold the display's 1,000 buckets (max_points=2000 / 2), i.e. from 32k steps
#: on; below that the raw GROUP BY reads < 32k rows (~40 ms on SQLite). A 1M-step run is then
#: ~31k rollup rows (~50 ms to group on SQLite); 64 would halve that but read up to 64k raw rows
#: below its threshold (~80 ms). A refresh re-reads at most ~32 old points per touched bucket.
#: Changing it needs a migration that rebuilds every run's rollups (0008 backfilled with 32).
ROLLUP_STEPS = 32
#: the kinds the ingest writes (metric_points holds no others)
KINDS = ("train", "val")
#: the series a rollup row aggregates, each as <name>_min, <name>_max, <name>_n
SERIES = ("train_loss", "lr", "tokens_per_s", "val_loss")
#: above every bucket (steps are 32-bit integers): "to the end"
LAST_BUCKET = (2**31 - 1) // ROLLUP_STEPS

_m = MetricPoint.__table__
_r = cast(Table, MetricRollup.__table__)  # a Table (insert/delete's type), as declared


def bucket_of(step: int) -> int:
    """The bucket of `step`: step / ROLLUP_STEPS truncated toward zero, as SQLite and PostgreSQL
    divide integers (Python's // floors: it differs for a negative step)."""
    q = abs(step) // ROLLUP_STEPS
    return q if step >= 0 else -q


def step_bucket(step: ColumnElement[int]) -> ColumnElement[int]:
    """bucket_of in SQL: integer division, the literal inlined so GROUP BY repeats it verbatim."""
    return step // literal_column(str(ROLLUP_STEPS), Integer)


def aggregate(*where: ColumnElement[bool]) -> Select:
    """The rollup rows of the raw points matching `where`, in `_COLUMNS`' order."""
    bucket = step_bucket(_m.c.step)
    values = []
    for name in SERIES:
        c = _m.c[name]
        values += [func.min(c), func.max(c), func.count(c)]
    return (
        select(
            _m.c.run_id,
            _m.c.kind,
            bucket,
            func.count(),
            func.min(_m.c.step),
            func.max(_m.c.step),
            func.min(_m.c.tokens),
            func.max(_m.c.tokens),
            func.min(_m.c.time),
            func.max(_m.c.time),
            func.min(_m.c.id),
            func.max(_m.c.id),
            *values,
        )
        .where(*where)
        .group_by(_m.c.run_id, _m.c.kind, bucket)
    )


_COLUMNS = [
    "run_id",
    "kind",
    "bucket",
    "points",
    "min_step",
    "max_step",
    "min_tokens",
    "max_tokens",
    "min_time",
    "max_time",
    "min_id",
    "max_id",
    *(f"{name}_{part}" for name in SERIES for part in ("min", "max", "n")),
]
_IN_RANGE = (
    _r.c.run_id == bindparam("run_id"),
    _r.c.kind == bindparam("kind"),
    _r.c.bucket >= bindparam("blo"),
    _r.c.bucket <= bindparam("bhi"),
)
_OLD_MIN_ID = select(func.min(_r.c.min_id)).where(*_IN_RANGE)
_DELETE = delete(_r).where(*_IN_RANGE)
_INSERT = insert(_r).from_select(
    _COLUMNS,
    aggregate(
        _m.c.run_id == bindparam("run_id"),
        _m.c.kind == bindparam("kind"),
        _m.c.id >= bindparam("id_lo"),
        step_bucket(_m.c.step) >= bindparam("blo"),
        step_bucket(_m.c.step) <= bindparam("bhi"),
    ),
)
_NEWEST = select(func.max(_m.c.id)).where(_m.c.run_id == bindparam("run_id"))


def refresh_rollups(
    session: Session, run_id: str, kind: str, step_lo: int, step_hi: int | None = None, new_after_id: int | None = None
) -> None:
    """Recompute the rollup rows of the buckets holding steps step_lo..step_hi (None: to the
    end) from the raw points, in the caller's transaction. `new_after_id`: points were written
    since these rows were computed, all with ids above it (None: none were, only deleted)."""
    params = {"run_id": run_id, "kind": kind, "blo": bucket_of(step_lo)}
    params["bhi"] = LAST_BUCKET if step_hi is None else bucket_of(step_hi)
    old = session.execute(_OLD_MIN_ID, params).scalar()
    lows = [i for i in (old, None if new_after_id is None else new_after_id + 1) if i is not None]
    if not lows:  # no rows there and no new points: nothing to recompute
        return
    session.execute(_DELETE, params)
    session.execute(_INSERT, {**params, "id_lo": min(lows)})


def newest_point_id(session: Session, run_id: str) -> int:
    """The run's newest metric point id (0: none), read before an insert: the new points' ids
    are above it (ids only grow; one lease holder writes a run's points)."""
    return session.execute(_NEWEST, {"run_id": run_id}).scalar() or 0


def refresh_after_insert(session: Session, run_id: str, points: Iterable[dict], newest_before: int) -> None:
    """Recompute the buckets `points` (metric_points rows just inserted, as dicts) fell in."""
    steps: dict[str, tuple[int, int]] = {}
    for p in points:
        kind, step = p["kind"], p["step"]
        lo, hi = steps.get(kind, (step, step))
        steps[kind] = (min(lo, step), max(hi, step))
    for kind, (lo, hi) in steps.items():
        refresh_rollups(session, run_id, kind, lo, hi, new_after_id=newest_before)


def refresh_after_delete(session: Session, run_id: str, step_lo: int) -> None:
    """Recompute from `step_lo` on, after the run's points from that step on were deleted (a
    resume): the buckets past it go, the one it falls in keeps its points below it."""
    for kind in KINDS:
        refresh_rollups(session, run_id, kind, step_lo)


def rebuild_rollups(session: Session, run_id: str) -> None:
    """The run's rollups from scratch (a repair, and what tests compare the kept ones with)."""
    session.execute(delete(_r).where(_r.c.run_id == run_id))
    session.execute(insert(_r).from_select(_COLUMNS, aggregate(_m.c.run_id == run_id)))
