"""A database that refuses writes is reported, not hidden (issue 14, item 4): /health answers 503
saying so, a write through the API is a 503 with that one line, `trainyard submit` prints it,
and the worker logs one line when writes start failing and one when they work again, not a
traceback every pass.

How a database is made read-only here, as root too (CI runs the tests as root, and chmod stops
nothing for root):
- SQLite: the service's database URL opens the file read-only (`sqlite:///file:<path>?mode=ro&uri=true`),
  which is what SQLite does by itself with a file it may not write: every write fails with
  "attempt to write a readonly database";
- PostgreSQL: the database's `default_transaction_read_only` is on (as on a hot standby, or
  frozen by an operator): every write fails with "cannot execute ... in a read-only transaction".
The worker's test turns writes off and on again on its own connections, with SQLite's `PRAGMA
query_only` and PostgreSQL's `default_transaction_read_only`, which refuse writes with those
same errors.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, event, text

from orchestrator.api.app import create_app
from orchestrator.cli.client import error_message
from orchestrator.controller import Worker
from orchestrator.db.models import RunStatus
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.runs import request_cancel
from orchestrator.settings import Settings
from orchestrator_helpers import cli_env, run_of, serving, submit_run, tiny_spec, trainyard

READ_ONLY = "the database is read-only"


@pytest.fixture
def read_only_url(db_url: str) -> str:
    """The migrated database `db_url` as the service sees it once it refuses writes."""
    if db_url.startswith("sqlite:///"):
        return "sqlite:///file:" + db_url.removeprefix("sqlite:///") + "?mode=ro&uri=true"
    name = db_url.rsplit("/", 1)[1]
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # from the next connection on; the test session drops it
        conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
    admin.dispose()
    return db_url


def test_health_the_api_and_the_cli_say_the_database_is_read_only_in_one_line(read_only_url, tmp_path):
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec("refused")))
    settings = Settings(data_dir=tmp_path / "data", database_url=read_only_url)
    with serving(create_app(settings)) as url, httpx.Client(base_url=url + "/api/v1", timeout=30) as api:
        health = api.get("/health")
        assert health.status_code == 503
        assert error_message(health).startswith(READ_ONLY)

        submitted = api.post("/runs", json=tiny_spec("refused"))
        assert submitted.status_code == 503
        reason = error_message(submitted)  # the database's own words in brackets: UPDATE or INSERT
        assert reason.startswith(READ_ONLY) and reason.endswith("nothing can be recorded until it is writable again")
        assert api.get("/runs").status_code == 200  # reads still work

        cli = trainyard("submit", str(spec_file), env=cli_env(api_url=url))
    # the plan's estimate comes first (a read), then the refusal: one line, no traceback
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    (said,) = [line for line in cli.stderr.splitlines() if "error" in line]
    assert said == cli.stderr.strip().splitlines()[-1]
    assert said.startswith(f"error: {READ_ONLY} (") and said.endswith(reason.split(")", 1)[1])


def test_health_says_in_one_line_that_the_database_is_unreachable(tmp_path):
    # nothing listens on port 1: the PostgreSQL the settings name is down
    settings = Settings(data_dir=tmp_path / "data", database_url="postgresql+psycopg://postgres@127.0.0.1:1/test")
    with serving(create_app(settings)) as url, httpx.Client(base_url=url + "/api/v1", timeout=30) as api:
        health = api.get("/health")
        assert health.status_code == 503
        assert error_message(health).startswith("the database is unreachable (") and "\n" not in error_message(health)


def test_the_worker_logs_one_line_when_writes_fail_and_one_when_they_work_again(db_url, tmp_path, caplog):
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    run_id = submit_run(factory, **tiny_spec("waits"))
    with transaction(factory) as s:
        request_cancel(s, run_id)  # what the worker does once it can write: end it, nothing started

    refusing = True

    @event.listens_for(engine, "connect")
    def _refuse_writes(dbapi_connection, _record):
        if refusing:
            cursor = dbapi_connection.cursor()
            if db_url.startswith("sqlite"):
                cursor.execute("PRAGMA query_only = ON")
            else:
                cursor.execute("SET default_transaction_read_only = on")
                dbapi_connection.commit()
            cursor.close()

    engine.dispose()  # every connection from now on refuses writes
    settings = Settings(
        data_dir=tmp_path / "data", database_url=db_url, worker_id="worker-ro", reconcile_interval_s=0.05
    )
    caplog.set_level(logging.INFO)
    worker = Worker(settings, factory)  # it cannot register its name yet: its first pass tries
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(2.0)  # passes at 0, 0.1, 0.3, 0.7, 1.5 s: backing off
        assert run_of(factory, run_id).status == RunStatus.pending.value
        refusing = False
        engine.dispose()
        deadline = time.monotonic() + 30
        while run_of(factory, run_id).status != RunStatus.cancelled.value:
            assert time.monotonic() < deadline, "the worker did not get on once the database took writes"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
        engine.dispose()

    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("trainyard")]
    assert [r for r in caplog.records if r.exc_info] == []
    refused = [line for line in lines if READ_ONLY in line[1]]
    assert len(refused) == 1 and refused[0][0] == "ERROR", lines
    assert refused[0][1].startswith(f"worker worker-ro: {READ_ONLY} (")
    assert ("WARNING", "worker worker-ro: the database takes writes again") in lines
