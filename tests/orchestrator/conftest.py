"""Fixtures shared by the orchestrator's tests; the helpers that are not fixtures are in
orchestrator_helpers.py.

- Databases: every database test runs on SQLite AND PostgreSQL (`db_url`, migrated to head;
  `empty_db_url`, no tables yet), and `factory` is a session factory on it. `sqlite_url` is a
  migrated SQLite database only, for tests that run the trainer (a module that overrides
  `db_url` with it runs its database tests on SQLite only). PostgreSQL is the one at
  127.0.0.1:5432 (trust auth; TRAINYARD_TEST_PG_URL) on the dev and CI machines; each test
  session creates its own databases, so runs never see each other's rows.
- `settings`: a worker's, on `db_url` (modules that need other settings define their own);
  `client`: the REST API on `settings`, in process.
- `fake`: an OpenAI-compatible judge on loopback that scores answers by their content.
- `make_service`: `trainyard serve` subprocesses on `sqlite_url` (stopped, and every trainer they
  left killed, at the end); `lsim`: one Lambda simulator for a module.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, text

from openai_fake import FakeOpenAIServer
from orchestrator_helpers import (
    LAMBDA_MINUTE_S,
    PG_ADMIN_URL,
    Service,
    content_judge,
    create_pg_database,
    drop_pg_database,
    kill_processes_mentioning,
    local_client,
    sessions,
)


def _pg_available() -> bool:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure means no server: the PostgreSQL variants are skipped
        return False


@pytest.fixture(scope="session")
def pg_server_url():
    """URL of an empty PostgreSQL database made for this test session (dropped at the end)."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}; CI must test against it")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    made: list[str] = []

    def make() -> str:
        made.append(create_pg_database("trainyard_test"))
        return made[-1]

    yield make
    for url in made:
        drop_pg_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path):
    """An empty database of each kind (no tables yet)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'trainyard.db'}"
    return request.getfixturevalue("pg_server_url")()


@pytest.fixture
def db_url(empty_db_url):
    """A database of each kind, migrated to head."""
    from orchestrator.db.migrations import upgrade

    upgrade(empty_db_url)
    return empty_db_url


def _sessions_on(url: str):
    f = sessions(url)
    yield f
    f.kw["bind"].dispose()


@pytest.fixture
def factory(db_url):
    yield from _sessions_on(db_url)


@pytest.fixture
def settings(db_url, tmp_path):
    from orchestrator.settings import Settings

    return Settings(
        data_dir=tmp_path / "data", database_url=db_url, worker_id="worker-a", lease_s=30, reconcile_interval_s=0.1
    )


@pytest.fixture
def client(settings):
    from orchestrator.api.app import create_app

    with local_client(create_app(settings)) as c:
        yield c


@pytest.fixture
def fake():
    with FakeOpenAIServer() as f:
        f.reply = content_judge
        yield f


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    from orchestrator.db.migrations import upgrade

    url = f"sqlite:///{tmp_path / 'trainyard.db'}"
    upgrade(url)
    return url


@pytest.fixture
def make_service(sqlite_url, tmp_path):
    """`make_service(**env)`: a Service (not started) on `sqlite_url` with the data dir
    tmp_path/data; `command=("worker",)` for a bare worker."""
    made: list[Service] = []

    def make(**env: str) -> Service:
        svc = Service(tmp_path / "data", sqlite_url, **env)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.close()
    kill_processes_mentioning(str(tmp_path / "data" / "runs"))  # never leave a trainer behind


@pytest.fixture(scope="module")
def lsim(tmp_path_factory):
    """The Lambda simulator (real sshd machines on 127.0.0.x) for one module, with a 20 s minute."""
    from provision.simulator import SimulatorServer
    from simhelpers import free_ssh_port, require_sshd, sim_config

    sshd = require_sshd()
    port = free_ssh_port()
    assert port is not None, "no free port for the simulated machines' sshd"
    server = SimulatorServer(
        sim_config(
            tmp_path_factory.mktemp("lsim"),
            sshd,
            port,
            boot_s=0.5,
            terminate_s=0.3,
            linger_s=600,
            minute_s=LAMBDA_MINUTE_S,
            quota=8,
        )
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key_file(lsim, tmp_path_factory):
    """An SSH key registered with the module's simulator (fleet_helpers.KEY_NAME): its private key file."""
    from fleet_helpers import register_key

    return register_key(lsim, tmp_path_factory.mktemp("keys"))


@pytest.fixture
def sim_factory(sqlite_url):
    """Sessions on a fresh SQLite database, for a worker in this process on the simulator."""
    yield from _sessions_on(sqlite_url)


@pytest.fixture
def sim_reset(lsim):
    """Faults and capacity as the catalog has them after the test; nothing left running."""
    import time

    from fleet_helpers import terminate_all

    cloud = lsim.cloud
    yield cloud
    with cloud.lock:
        cloud.faults.server_errors.clear()
        cloud.faults.no_capacity.clear()
    terminate_all(lsim)
    time.sleep(0.5)  # terminated machines give their capacity back
    with cloud.lock:
        cloud.capacity = {
            (t, r): n for t, item in cloud.catalog.instance_types.items() for r, n in item.capacity.items()
        }
