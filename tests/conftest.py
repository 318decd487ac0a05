"""Shared fixtures: databases. Every database test runs on SQLite AND PostgreSQL.

PostgreSQL is the one at 127.0.0.1:5432 (trust auth) on the dev and CI machines; each test
session gets its own freshly created database so runs never see each other's rows.
"""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("TRAINYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_available() -> bool:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_server_url():
    """URL of an empty PostgreSQL database made for this test session (dropped at the end)."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}; CI must test against it")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make() -> str:
        name = f"trainyard_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


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
