"""Fixtures of the service image's tests (README.md, "Deployment").

- `image`: docker/service.Dockerfile built once per session with podman (tests/image/podman_helpers.py),
  after scripts/oci-standin.sh made sure podman and the stand-in for its base image are there
  (scripts/test.sh has them made in the background beforehand). Where they cannot be installed
  the tests skip (fail under CI, whose scripts/test.sh installs them); where podman cannot run a
  container at all they skip, saying podman's error.
- `made`: `made.new(image, ...)` makes a `Container` (not started), `made.volume()` a volume; all
  are removed at the end of the test.
- `pg_database`: a fresh database of this test's own on the PostgreSQL at 127.0.0.1:5432 (trust
  auth; TRAINYARD_TEST_PG_URL), dropped at the end.

The Lambda run's helpers (specs, the simulator's admin API, the `Service` it extends) are the
orchestrator tests' own: tests/orchestrator is put on sys.path for `orchestrator_helpers`.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "orchestrator"))

from podman_helpers import IMAGE_TAG, Made, build, install_problem, run_problem

PG_ADMIN_URL = os.environ.get("TRAINYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def image() -> str:
    problem = install_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}; CI must test the service image (scripts/test.sh installs podman)")
        pytest.skip(problem)
    problem = run_problem()
    if problem:
        pytest.skip(problem)
    build(IMAGE_TAG)
    return IMAGE_TAG


@pytest.fixture
def made():
    things = Made()
    yield things
    things.remove_all()


@pytest.fixture
def pg_database():
    """(admin engine, URL of a new empty database): the URL has no password (trust auth)."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means no server to test against
        admin.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}; CI must test against it ({exc})")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    name = f"trainyard_image_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
