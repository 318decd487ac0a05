"""Copy what the trainer wrote on a node into the database, incrementally and exactly once.

The node's `metrics.jsonl` and `train.log` are read from the byte offsets stored on the run
(`Node.read_from` returns whole lines only). The new rows and the advanced offsets are written in
ONE fenced transaction, so a crash either keeps both or neither: a line is never stored twice or
skipped, and a worker that lost its lease stores nothing.

The logs of the run's other processes are stored whole when they end (`keep_log`): a finished
data preparation's (bootstrapping.py), and a failed one's, so `trainyard logs` and the dashboard
show why a run failed before its trainer ever started. While a preparation runs, its newest
progress line becomes a `prepare` event (`record_prepare_progress`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from orchestrator import rollups
from orchestrator.controller.commands import path
from orchestrator.controller.context import NodeHandle, RunContext, log
from orchestrator.db.models import Checkpoint, CheckpointState, LogChunk, MetricPoint, Run, RunEvent, utcnow
from orchestrator.runs import add_event
from provision.node import Node

METRICS = "metrics.jsonl"
TRAIN_LOG = "train.log"
#: the most read from one file in one pass, so a large backlog cannot hold a lease for long
MAX_BYTES_PER_PASS = 8 << 20
_CHUNK = 1 << 20


@dataclass
class NewOutput:
    #: False when a pass's read limit was hit: there is more to read
    complete: bool
    metrics_from: int
    metrics_offset: int
    log_from: int
    log_offset: int
    log_text: str = ""
    lines: list[dict] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.metrics_offset == self.metrics_from and self.log_offset == self.log_from


def _read(node: Node, file: str, offset: int) -> tuple[str, int, bool]:
    """(text, new offset, whether everything there was read)."""
    parts: list[str] = []
    start = offset
    while offset - start < MAX_BYTES_PER_PASS:
        text, new = node.read_from(file, offset, _CHUNK)
        if new == offset:
            return "".join(parts), offset, True
        parts.append(text)
        offset = new
    return "".join(parts), offset, False


def read_new(handle: NodeHandle, run: Run) -> NewOutput:
    """What the trainer wrote since the run's stored offsets (no transaction open)."""
    metrics_text, metrics_offset, m_all = _read(handle.node, path(handle.workdir, METRICS), run.metrics_offset)
    log_text, log_offset, l_all = _read(handle.node, path(handle.workdir, TRAIN_LOG), run.log_offset)
    return NewOutput(
        complete=m_all and l_all,
        metrics_from=run.metrics_offset,
        metrics_offset=metrics_offset,
        log_from=run.log_offset,
        log_offset=log_offset,
        # PostgreSQL text cannot hold NUL; a log is for people, so drop them
        log_text=log_text.replace("\x00", ""),
        lines=parse_metrics(metrics_text),
    )


def parse_metrics(text: str) -> list[dict]:
    lines = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            # a line we cannot read must not stop the run; skip it and say so
            log.warning("skipping a metrics line that is not JSON: %.200s", raw)
            continue
        if isinstance(obj, dict) and isinstance(obj.get("kind"), str):
            lines.append(obj)
    return lines


#: the columns of a metric point that only a train line has (a val line leaves them None)
_TRAIN_ONLY = ("lr", "tokens_per_s", "mfu", "wall_s")


def _metric_point(run_id: str, kind: str, step: int, tokens: int, time: float, m: dict) -> dict:
    """A metric_points row (as a dict, for one bulk insert) from a train or val line."""
    train = kind == "train"
    peak = m.get("peak_mem_bytes") if train else None
    return dict(
        run_id=run_id,
        kind=kind,
        step=step,
        tokens=tokens,
        time=time,
        train_loss=_num(m.get("train_loss")) if train else None,
        val_loss=None if train else _num(m.get("val_loss")),
        peak_mem_bytes=_int(peak) if peak is not None else None,
        **{k: _num(m.get(k)) if train else None for k in _TRAIN_ONLY},
    )


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: object, default: int = 0) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def checkpoint_uri(handle: NodeHandle, rel: str, provider: str) -> str:
    """Where a checkpoint is: a file URI on this machine, else node:// on the instance."""
    full = rel if rel.startswith("/") else path(handle.workdir, rel)
    if provider == "local":
        return PurePosixPath(full).as_uri()
    return f"node://{handle.instance.name}/{full.lstrip('/')}"


def record_output(ctx: RunContext, handle: NodeHandle, new: NewOutput) -> bool:
    """Write the new output and the offsets in one fenced transaction. False when nothing new."""
    if new.empty:
        return False
    with ctx.write() as (session, run):
        # Only the lease holder advances the offsets, so they cannot have moved since we read;
        # check anyway, because storing from a stale offset would duplicate rows.
        if (run.metrics_offset, run.log_offset) != (new.metrics_from, new.log_from):
            log.warning("run %s: offsets moved since the read; reading again next pass", run.id)
            return False
        apply_lines(session, run, new.lines, lambda rel: checkpoint_uri(handle, rel, ctx.provider.name))
        if new.log_text:
            session.add(LogChunk(run_id=run.id, rank=0, text=new.log_text))
        run.metrics_offset = new.metrics_offset
        run.log_offset = new.log_offset
    return True


def keep_log(ctx: RunContext, rank: int, text: str, note: str) -> None:
    """Store `text` (a process's log, read off node `rank`) in the run's log, once: `note`, the
    event written with it in the same fenced transaction, is the record that it was stored, so a
    pass repeated after a crash (the run not failed yet) does not store it twice."""
    with ctx.write() as (session, run):
        told = session.scalar(
            select(RunEvent.id).where(RunEvent.run_id == run.id, RunEvent.kind == "data", RunEvent.message == note)
        )
        if told is not None:
            return
        if text.strip():
            # PostgreSQL text cannot hold NUL; a log is for people, so drop them
            session.add(LogChunk(run_id=run.id, rank=rank, text=text.replace("\x00", "")))
        add_event(session, run.id, "data", note)


#: how trainer.prepare's progress lines start (docs/trainer-contract.md); it prints one every 10 s
PREPARE_PROGRESS = "prepare: "


def prepare_progress(log_text: str) -> str | None:
    """The newest progress line of a trainer.prepare log, without its prefix; None if it has none."""
    for line in reversed(log_text.splitlines()):
        if line.startswith(PREPARE_PROGRESS) and line[len(PREPARE_PROGRESS) :].strip():
            return line[len(PREPARE_PROGRESS) :].strip()
    return None


def record_prepare_progress(session: Session, run_id: str, node_name: str, log_text: str) -> None:
    """The newest progress line of a node's preparation as a `prepare` event, unless it is the
    one recorded last for that node: the trainer's pace (a line every 10 s) sets the events' pace,
    however often the controller looks."""
    line = prepare_progress(log_text)
    if line is None:
        return
    message = f"{node_name}: {line}"
    last = session.scalar(
        select(RunEvent.message)
        .where(
            RunEvent.run_id == run_id,
            RunEvent.kind == "prepare",
            RunEvent.message.startswith(f"{node_name}: ", autoescape=True),
        )
        .order_by(RunEvent.id.desc())
        .limit(1)
    )
    if last != message:
        add_event(session, run_id, "prepare", message)


def apply_lines(session: Session, run: Run, lines: list[dict], uri_of: Callable[[str], str]) -> None:
    """Turn metrics lines into rows and keep the run's progress columns current."""
    points: list[dict] = []
    for m in lines:
        kind = m["kind"]
        step, tokens, time = _int(m.get("step")), _int(m.get("tokens")), _num(m.get("time")) or 0.0
        if kind == "start":
            # Kept whole (the micro-batch that really ran, flops per token, ...) for the throughput
            # record; a resume writes another line, but the first start stays the first start.
            first = (run.trainer_start or {}).get("first_time", m.get("time"))
            run.trainer_start = {**m, "first_time": first}  # a new dict: JSON columns track assignment
            run.world_size = _int(m.get("world_size"), run.world_size or 1)
            if m.get("target_tokens") is not None:
                run.target_tokens = _int(m.get("target_tokens"))
            resumed = m.get("resumed_from_step")
            if resumed is not None:
                # Steps after the checkpoint were trained before a failure and are trained again
                # now: the curve goes on from the checkpoint, not twice over the same steps.
                session.execute(
                    delete(MetricPoint).where(MetricPoint.run_id == run.id, MetricPoint.step > _int(resumed))
                )
                rollups.refresh_after_delete(session, run.id, _int(resumed) + 1)  # and their rollups
                run.step = _int(resumed)
            add_event(
                session,
                run.id,
                "info",
                f"trainer started: world size {run.world_size}, {_int(m.get('params')):,} "
                f"parameters, {run.target_tokens or 0:,} target tokens"
                + (f", resumed from step {resumed}" if resumed is not None else ""),
            )
        elif kind in ("train", "val"):
            point = _metric_point(run.id, kind, step, tokens, time, m)
            points.append(point)
            if kind == "train":
                run.step, run.tokens_done = step, tokens
                run.train_loss, run.tokens_per_s = point["train_loss"], point["tokens_per_s"]
            else:
                run.val_loss = point["val_loss"]
        elif kind == "checkpoint" and isinstance(m.get("path"), str):
            row = _checkpoint_row(session, run.id, step, tokens, m)
            row.uri, row.node_path = uri_of(m["path"]), m["path"]
            row.state, row.stored_at = CheckpointState.on_node.value, None
        elif kind == "checkpoint_stored" and isinstance(m.get("uri"), str):
            row = _checkpoint_row(session, run.id, step, tokens, m)
            row.uri, row.state, row.stored_at = m["uri"], CheckpointState.stored.value, utcnow()
            add_event(
                session,
                run.id,
                "checkpoint",
                f"checkpoint of step {step} stored at {m['uri']}"
                + (f" ({_num(m.get('seconds')):.1f} s)" if _num(m.get("seconds")) is not None else ""),
            )
        elif kind == "checkpoint_upload_failed":
            add_event(
                session,
                run.id,
                "checkpoint",
                f"uploading the checkpoint of step {step} failed: {str(m.get('error'))[:500]}",
            )
        elif kind in ("done", "stopped"):  # stopped: at the service's STOP (a budget), checkpoint stored
            run.step, run.tokens_done = max(run.step, step), max(run.tokens_done, tokens)
        # other kinds are the trainer's to add; the service ignores what it does not know
    if points:
        # the rollups of the buckets the points fall in, recomputed in this transaction (the
        # dashboard's long series are grouped from them: orchestrator.rollups)
        newest = rollups.newest_point_id(session, run.id)
        session.execute(insert(MetricPoint), points)
        rollups.refresh_after_insert(session, run.id, points, newest)


def _checkpoint_row(session: Session, run_id: str, step: int, tokens: int, m: dict) -> Checkpoint:
    """The run's row for a step, new or existing (a step saved again after a recovery)."""
    row = session.scalar(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == step))
    if row is None:
        row = Checkpoint(run_id=run_id, step=step, tokens=tokens, uri="", state=CheckpointState.on_node.value)
        session.add(row)
    row.tokens = tokens
    if _num(m.get("val_loss")) is not None:
        row.val_loss = _num(m.get("val_loss"))
    if m.get("bytes") is not None:
        row.bytes = _int(m.get("bytes"))
    return row
