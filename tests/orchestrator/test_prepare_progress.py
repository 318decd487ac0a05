"""A data preparation's progress as run events: the lines trainer.prepare really prints, read off
a node's prepare.log the way the bootstrapping step reads them, become `prepare` events, one per
new line and per node, however often the controller looks.

Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import select

from orchestrator.controller.ingest import prepare_progress, record_prepare_progress
from orchestrator.db.models import RunEvent
from orchestrator.db.session import transaction
from orchestrator_helpers import submit_run
from trainer.prepare import prepare


def _events(factory, run_id: str) -> list[str]:
    with factory() as s:
        rows = s.scalars(select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.kind == "prepare"))
        return [e.message for e in sorted(rows, key=lambda e: e.id)]


def test_progress_lines_of_a_real_preparation_become_run_events_once_each(factory, tmp_path):
    (tmp_path / "src").mkdir()
    for i in range(6):
        (tmp_path / "src" / f"{i}.txt").write_text(f"Text {i} about the yard and its trains. " * 200)
    lines: list[str] = []
    prepare(str(tmp_path / "src"), tmp_path / "out", workers=2, log=lines.append, progress_every_s=0)
    *running, done = lines
    # prepare.log as a node holds it: progress on stderr, the JSON summary on stdout after it
    log = "\n".join(lines) + '\n{"out": "data", "cache": "off"}\n'
    assert prepare_progress(log) == done.removeprefix("prepare: ")
    assert prepare_progress('{"cache": "off"}\nTraceback...\n') is None

    run_id = submit_run(factory)
    for _ in range(3):  # the controller looks again and again while the line stays the newest
        with transaction(factory) as s:
            record_prepare_progress(s, run_id, "ty-r-0", "\n".join(running[:2]))
    with transaction(factory) as s:
        record_prepare_progress(s, run_id, "ty-r-1", "\n".join(running[:2]))  # another node: its own
        record_prepare_progress(s, run_id, "ty-r-0", log)
    assert _events(factory, run_id) == [
        f"ty-r-0: {running[1].removeprefix('prepare: ')}",
        f"ty-r-1: {running[1].removeprefix('prepare: ')}",
        f"ty-r-0: {done.removeprefix('prepare: ')}",
    ]
    assert _events(factory, run_id)[-1].startswith("ty-r-0: done: 6 documents, ")
    assert "documents, " in running[1] and "tokens/s, " in running[1] and "%" in running[1]
