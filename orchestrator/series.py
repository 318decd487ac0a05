"""A run's metric series for the dashboard's charts (`GET /runs/{id}/series`): columnar, at most
`max_points` points per series however long the run, and incremental through an id cursor.

- **Series.** `train_loss`, `lr` and `tokens_per_s` come from the trainer's `train` points,
  `val_loss` from its `val` points; a point whose value is null is left out of that series. Each
  point has its tokens, its time (unix seconds, the trainer's clock) and `usd`: what the run's
  instances had cost at that moment (orchestrator.costs.instance_cost_at, the one cost rule).
- **Cursor.** Only points with `after_id < id <= upper` are read, `upper` being the run's newest
  point id when the call began: a point written meanwhile is left to the next call, so a page that
  passes `next_after_id` back never skips one (the two kinds are read by separate statements).
- **Downsampling, in the database.** A kind with more than `max_points` new points is grouped into
  about `max_points / 2` buckets of equal step ranges by one GROUP BY on an integer expression
  (the same SQL on SQLite and PostgreSQL), computing every series of that kind at once. Each
  bucket gives its minimum and its maximum as two points at the bucket's first and last
  tokens/time, ordered by the curve's direction there (the neighbouring buckets' middles), so
  spikes and the true extremes survive. The response stays the same size however long the run.
- **From the rollups, when they suffice.** A first read (`after_id` 0) of a kind whose rollups
  (orchestrator.rollups: its points pre-aggregated per 32 steps, kept current by the ingest) hold
  at least the `max_points / 2` buckets the display needs groups those rollup rows into the
  display buckets instead (min of mins, max of maxes, sums of counts; a rollup row goes whole
  into the display bucket of its first step): a million-point run reads ~31k rows, not 1M.
  Increments and shorter runs (< 32k steps) keep the raw GROUP BY, as cheap at their size.

Reads only indexed ranges (`metric_points (run_id, kind, id)`, `(run_id, id)`, `metric_rollups`'
primary key and `(run_id, kind, max_id)`); a call with a recent cursor reads a handful of rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Integer,
    Row,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.elements import BindParameter

from orchestrator.costs import instance_cost_at
from orchestrator.db.models import Instance, MetricPoint, MetricRollup
from orchestrator.rollups import LAST_BUCKET, step_bucket

#: series name -> the metric kind it is read from; a kind's series are read together
SERIES_KINDS: dict[str, str] = {"train_loss": "train", "val_loss": "val", "lr": "train", "tokens_per_s": "train"}
MIN_POINTS, MAX_POINTS = 10, 5000

_m, _i, _r = MetricPoint.__table__, Instance.__table__, MetricRollup.__table__
_KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    kind: tuple(name for name, k in SERIES_KINDS.items() if k == kind) for kind in ("train", "val")
}
_RANGE = (
    _m.c.run_id == bindparam("run_id"),
    _m.c.kind == bindparam("kind"),
    _m.c.id > bindparam("after_id"),
    _m.c.id <= bindparam("upper"),
)
_UPPER = select(func.max(_m.c.id)).where(_m.c.run_id == bindparam("run_id"))
_LAST_STEP = select(_m.c.step).where(*_RANGE).order_by(_m.c.id.desc()).limit(1)
_INSTANCES = select(
    _i.c.active_at, _i.c.terminate_requested_at, _i.c.terminated_at, _i.c.price_cents_per_hour, _i.c.billing_minute_s
).where(_i.c.run_id == bindparam("run_id"))


def _raw_statement(kind: str) -> Select:
    columns = [_m.c[name] for name in _KIND_COLUMNS[kind]]
    return (
        select(_m.c.step, _m.c.tokens, _m.c.time, *columns).where(*_RANGE).order_by(_m.c.id).limit(bindparam("limit"))
    )


def _big(name: str) -> BindParameter[int]:
    return bindparam(name, type_=BigInteger)


def _display_bucket(step: ColumnElement[int]) -> ColumnElement[int]:
    # Bucket = the step's place in [s0, s1] scaled to nb buckets: integer arithmetic (BIGINT: a
    # step times nb overflows 32 bits). Steps outside the range (not expected: steps grow with
    # ids, a recovery deletes the steps it trains again) are clamped so the bucket count holds.
    return case(
        (step < _big("s0"), 0),
        (step > _big("s1"), _big("last")),
        else_=(cast(step, BigInteger) - _big("s0")) * _big("nb") // _big("span"),
    ).label("b")


def _bucket_statement(kind: str) -> Select:
    bucket = _display_bucket(_m.c.step)
    aggregates = []
    for name in _KIND_COLUMNS[kind]:
        c = _m.c[name]
        aggregates += [func.min(c), func.max(c), func.count(c)]
    return (
        select(
            bucket, func.min(_m.c.tokens), func.max(_m.c.tokens), func.min(_m.c.time), func.max(_m.c.time), *aggregates
        )
        .where(*_RANGE)
        .group_by(bucket)
        .order_by(bucket)
    )


_ROLLUP_RANGE = (_r.c.run_id == bindparam("run_id"), _r.c.kind == bindparam("kind"))
# Whether the rollups hold `nb` buckets: counting stops there (a long run has ~30k).
_ROLLUP_COUNT = select(func.count()).select_from(
    select(_r.c.bucket).where(*_ROLLUP_RANGE).limit(bindparam("nb")).subquery()
)
# The first bucket holding a point past `upper` (none: past the last bucket), and the lowest raw
# id from that bucket on (see _rollup_bucket_statement).
_CUT = (
    select(func.coalesce(func.min(_r.c.bucket), literal_column(str(LAST_BUCKET + 1), Integer)))
    .where(*_ROLLUP_RANGE, _r.c.max_id > bindparam("upper"))
    .scalar_subquery()
)
_CUT_MIN_ID = select(func.min(_r.c.min_id)).where(*_ROLLUP_RANGE, _r.c.bucket >= _CUT).scalar_subquery()


def _rollup_bucket_statement(kind: str) -> Select:
    """_bucket_statement's rows, grouped from the rollup rows before bucket `_CUT` and the raw
    points (id <= upper) from it on: each part as rows of (first step, tokens and time range, each
    series' min, max and count), grouped into the display buckets together.

    Reads run in autocommit, one snapshot per statement, and the ingest may commit points (and
    their buckets' rollups) after `upper` was read. Rather than holding a snapshot across reads,
    this ONE statement (one snapshot) uses the rollup rows only before the first bucket holding a
    point past `upper`, all of whose points are <= upper, and from that bucket on reads the raw
    points <= upper (through the (run_id, kind, id) index from the lowest id those buckets hold:
    there is no step index). So the answer covers exactly the points up to `upper`, the cursor
    returned. Usually no bucket is past it and the raw part is empty."""
    names = _KIND_COLUMNS[kind]
    rollups = select(
        _r.c.min_step.label("step"),
        _r.c.min_tokens.label("tok0"),
        _r.c.max_tokens.label("tok1"),
        _r.c.min_time.label("t0"),
        _r.c.max_time.label("t1"),
        *(_r.c[f"{n}_{part}"].label(f"{n}_{part}") for n in names for part in ("min", "max", "n")),
    ).where(*_ROLLUP_RANGE, _r.c.bucket < _CUT)
    one, zero = literal_column("1", Integer), literal_column("0", Integer)
    raw = select(
        _m.c.step,
        _m.c.tokens.label("tok0"),
        _m.c.tokens.label("tok1"),
        _m.c.time.label("t0"),
        _m.c.time.label("t1"),
        *(
            col
            for n in names
            for col in (
                _m.c[n].label(f"{n}_min"),
                _m.c[n].label(f"{n}_max"),
                case((_m.c[n].is_(None), zero), else_=one).label(f"{n}_n"),
            )
        ),
    ).where(
        _m.c.run_id == bindparam("run_id"),
        _m.c.kind == bindparam("kind"),
        _m.c.id >= _CUT_MIN_ID,
        _m.c.id <= bindparam("upper"),
        step_bucket(_m.c.step) >= _CUT,
    )
    parts = union_all(rollups, raw).subquery()
    bucket = _display_bucket(parts.c.step)
    aggregates = []
    for n in names:
        aggregates += [func.min(parts.c[f"{n}_min"]), func.max(parts.c[f"{n}_max"]), func.sum(parts.c[f"{n}_n"])]
    return (
        select(
            bucket,
            func.min(parts.c.tok0),
            func.max(parts.c.tok1),
            func.min(parts.c.t0),
            func.max(parts.c.t1),
            *aggregates,
        )
        .group_by(bucket)
        .order_by(bucket)
    )


# Built once: building a statement costs SQLAlchemy more than an incremental call's queries.
_RAW = {kind: _raw_statement(kind) for kind in _KIND_COLUMNS}
_BUCKETS = {kind: _bucket_statement(kind) for kind in _KIND_COLUMNS}
_ROLLUP_BUCKETS = {kind: _rollup_bucket_statement(kind) for kind in _KIND_COLUMNS}


@dataclass
class Series:
    """One series, columnar: the i-th point is (tokens[i], time[i], usd[i], y[i])."""

    tokens: list[int] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    usd: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    #: how many points the series has in the range read (before downsampling)
    raw_points: int = 0

    def add(self, tokens: int, time: float, y: float) -> None:
        self.tokens.append(int(tokens))
        self.time.append(float(time))
        self.y.append(float(y))


@dataclass
class RunSeries:
    run_id: str
    #: the newest point id read: pass it as `after_id` to get only what is newer
    next_after_id: int
    #: some series were grouped into buckets (their min and max kept) rather than sent whole
    downsampled: bool
    series: dict[str, Series]


def run_series(session: Session, run_id: str, after_id: int, max_points: int) -> RunSeries:
    """The run's series after the cursor (see the module doc); the caller checks the run exists."""
    if not MIN_POINTS <= max_points <= MAX_POINTS:
        raise ValueError(f"max_points must be {MIN_POINTS}..{MAX_POINTS}, not {max_points}")
    conn = session.connection()
    series = {name: Series() for name in SERIES_KINDS}
    upper = conn.execute(_UPPER, {"run_id": run_id}).scalar()
    if upper is None or upper <= after_id:
        return RunSeries(run_id, after_id, False, series)
    downsampled = False
    for kind, names in _KIND_COLUMNS.items():
        params = {"run_id": run_id, "kind": kind, "after_id": after_id, "upper": upper}
        # One row more than may be sent tells whether to downsample, without a count(*) scan.
        rows = conn.execute(_RAW[kind], {**params, "limit": max_points + 1}).all()
        if len(rows) <= max_points:
            _add_raw(rows, names, series)
            continue
        downsampled = True
        first_step, last_step = rows[0].step, conn.execute(_LAST_STEP, params).scalar_one()
        buckets = max(1, max_points // 2)
        span = max(1, last_step - first_step + 1)
        display = {"s0": first_step, "s1": last_step, "nb": buckets, "span": span, "last": buckets - 1}
        # The rollups, on a first read (an increment is small) when they hold at least the
        # display's buckets (a shorter run is as cheap from its raw rows).
        if after_id == 0 and conn.execute(_ROLLUP_COUNT, {**params, "nb": buckets}).scalar_one() >= buckets:
            grouped = conn.execute(_ROLLUP_BUCKETS[kind], {**params, **display}).all()
        else:
            grouped = conn.execute(_BUCKETS[kind], {**params, **display}).all()
        _add_buckets(grouped, names, series)
    _add_usd(session, run_id, series.values())
    return RunSeries(run_id, upper, downsampled, series)


def _add_raw(rows: Sequence[Row], names: Sequence[str], series: dict[str, Series]) -> None:
    for name in names:
        s = series[name]
        for r in rows:
            y = r._mapping[name]
            if y is not None:
                s.add(r.tokens, r.time, y)
        s.raw_points = len(s.y)


def _add_buckets(rows: Sequence[Row], names: Sequence[str], series: dict[str, Series]) -> None:
    """Two points a bucket (one when the bucket holds one point): its min and max y, at its first
    and last tokens/time; where the curve falls (the next bucket's middle below the previous
    one's) the max comes first."""
    for j, name in enumerate(names):
        s = series[name]
        at = 5 + 3 * j  # this series' (min, max, count) in the row
        kept = [r for r in rows if r[at + 2]]
        s.raw_points = sum(int(r[at + 2]) for r in kept)
        mids = [(r[at] + r[at + 1]) / 2 for r in kept]
        for k, r in enumerate(kept):
            tok0, tok1, t0, t1, low, high = r[1], r[2], r[3], r[4], r[at], r[at + 1]
            if tok0 == tok1 and t0 == t1:
                s.add(tok0, t0, low)
                continue
            falling = mids[min(k + 1, len(kept) - 1)] < mids[max(k - 1, 0)]
            s.add(tok0, t0, high if falling else low)
            s.add(tok1, t1, low if falling else high)


def _add_usd(session: Session, run_id: str, series: Iterable[Series]) -> None:
    """Each point's `usd`: what the run's instances had cost at its time."""
    instances = session.connection().execute(_INSTANCES, {"run_id": run_id}).all()
    cache: dict[float, float] = {}
    for s in series:
        for t in s.time:
            usd = cache.get(t)
            if usd is None:
                moment = datetime.fromtimestamp(t, timezone.utc)
                cents = sum(instance_cost_at(inst, moment).cents for inst in instances)
                usd = cache[t] = round(cents / 100.0, 6)
            s.usd.append(usd)
