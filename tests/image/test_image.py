"""The service image (docker/service.Dockerfile) as README.md's "Deployment" tells a user to run
it: built with podman on a stand-in for python:3.11-slim (scripts/oci-standin.sh), its database
in a volume (SQLite) or on the host's PostgreSQL, its first API token made by a one-off container.

What is shown: the image starts with its own command and address (0.0.0.0:8000) once a token
exists in its volume, and its health check reports healthy; it runs as a user other than root;
it holds only the sources the allowlist in .dockerignore lets in; against an empty PostgreSQL
database it migrates the schema as it starts and keeps the password out of its logs and image.
"""

from __future__ import annotations

import secrets

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from orchestrator_helpers import free_port
from podman_helpers import IMAGE_UID, image_text

FIRST_TOKEN = ("trainyard", "token", "create", "--name", "admin", "--scope", "admin")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def inside_get(container, path: str, token: str | None = None) -> str:
    """The HTTP status of GET `path` on the service in `container`, asked from inside it."""
    headers = repr(bearer(token) if token else {})
    code = (
        "import urllib.request as u, urllib.error as e\n"
        f"r = u.Request('http://127.0.0.1:8000{path}', headers={headers})\n"
        "try: print(u.urlopen(r, timeout=5).status)\n"
        "except e.HTTPError as x: print(x.code)"
    )
    done = container.exec("python", "-c", code)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_on_sqlite_in_a_volume_the_image_serves_once_a_token_exists_as_a_non_root_user(image, made):
    # README's first step: the first API token, by a one-off container on the volume (the image
    # listens on 0.0.0.0, which `serve` refuses while there is no token). Network "none": the
    # containers have their own loopback only, so 0.0.0.0 exposes nothing here
    data = [(made.volume().name, "/data", "")]
    first = made.new(image, mounts=data, network="none", command=FIRST_TOKEN).run_to_end()
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert token and token not in first.stderr  # printed once, alone on stdout

    service = made.new(image, mounts=data, network="none").start()
    service.wait_healthy()
    assert service.health() == "healthy"
    # the token made in the volume is the service's: the API answers it, and only it
    assert inside_get(service, "/api/v1/runs", token) == "200"
    assert inside_get(service, "/api/v1/runs") == "401"

    assert service.users() == ("trainyard", {IMAGE_UID})  # not root, inside or on the host
    # the database is in the volume, written by that user
    assert service.exec("test", "-O", "/data/trainyard.db").returncode == 0
    # only the sources: no .venv, .git, tests, data, checkpoints, caches or local secrets
    listed = service.exec("ls", "-A", "/app")
    assert listed.stdout.split() == ["README.md", "alembic", "orchestrator", "provision", "pyproject.toml", "trainer"]


def test_on_postgresql_the_image_migrates_the_schema_at_start_and_keeps_the_password_out_of_logs(
    image,
    pg_database,
    made,  # made after pg_database: its containers go before the database does
):
    password = "pw-" + secrets.token_hex(12)  # trust auth ignores it; it must still never be shown
    url = make_url(pg_database).set(password=password).render_as_string(hide_password=False)
    port = free_port()
    env = {"TRAINYARD_DATABASE_URL": url, "TRAINYARD_HOST": "127.0.0.1", "TRAINYARD_PORT": str(port)}
    service = made.new(image, env=env).start()  # an empty database: the image's command migrates it
    service.wait_healthy()

    health = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=10).json()
    assert health["database"] == "postgresql"
    engine = create_engine(pg_database)
    try:
        with engine.connect() as conn:
            revision = conn.execute(text("select version_num from alembic_version")).scalar_one()
    finally:
        engine.dispose()
    said = service.logs()
    assert f"is at revision {revision}" in said and "trainyard serving on" in said
    assert password not in said
    assert password not in image_text(image)
