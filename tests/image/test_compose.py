"""docker/compose.yaml, read by podman-compose (`config`: the file as compose resolves it) and held
against the service image it builds: it parses, and it means what it says.

Only the file is checked here: its postgres:16 service cannot run on these machines, which cannot
pull from image registries (README.md, "Deployment", says what was run and what was not).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from sqlalchemy.engine import make_url

from podman_helpers import REPO, podman

COMPOSE = REPO / "docker" / "compose.yaml"
PODMAN_COMPOSE = shutil.which("podman-compose", path=str(Path(sys.executable).parent)) or "podman-compose"


def resolved(**env: str) -> dict:
    """`podman-compose config` of docker/compose.yaml with `env` as the caller's environment
    (and nothing else of ours: no TRAINYARD_ setting of this process leaks in)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    done = subprocess.run(
        [PODMAN_COMPOSE, "-f", str(COMPOSE), "config"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def inspect(image: str) -> dict:
    return json.loads(podman("image", "inspect", image).stdout)[0]


def test_the_compose_file_runs_the_service_image_on_its_postgres_with_its_settings(image):
    password = "pw-" + secrets.token_hex(8)
    config = resolved(TRAINYARD_DB_PASSWORD=password, TRAINYARD_LAMBDA_API_KEY="lambda-key-from-the-shell")
    assert set(config["services"]) == {"postgres", "trainyard"}
    pg, svc = config["services"]["postgres"], config["services"]["trainyard"]

    # the service is this repository's image, built from the root with the tested Dockerfile
    assert Path(svc["build"]["context"]) == REPO
    assert (REPO / svc["build"]["dockerfile"]).resolve() == REPO / "docker" / "service.Dockerfile"

    # its database is the postgres service, with the password from the caller's environment
    db = make_url(svc["environment"]["TRAINYARD_DATABASE_URL"])
    assert (db.drivername, db.host, db.port) == ("postgresql+psycopg", "postgres", 5432)
    penv = pg["environment"]
    assert (db.username, db.password, db.database) == (penv["POSTGRES_USER"], password, penv["POSTGRES_DB"])
    # ... started only once PostgreSQL answers for that user and database
    assert svc["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert pg["healthcheck"]["test"] == ["CMD-SHELL", f"pg_isready -U {db.username} -d {db.database}"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "ports" not in pg  # PostgreSQL is reached by the service only

    # the secrets are passed through from the caller's environment, never written in the file
    passed = {k for k, v in svc["environment"].items() if v is None}
    assert {"TRAINYARD_LAMBDA_API_KEY", "TRAINYARD_OPENAI_API_KEY", "TRAINYARD_ARTIFACT_URI"} <= passed
    assert "lambda-key-from-the-shell" not in COMPOSE.read_text() and password not in COMPOSE.read_text()

    # the image's own settings: its data volume, its port (on this machine's loopback only) and
    # its health check, which compose keeps since the file sets none
    made = inspect(image)
    env = dict(item.split("=", 1) for item in made["Config"]["Env"])
    assert f"data:{env['TRAINYARD_DATA_DIR']}" in svc["volumes"]
    assert env["TRAINYARD_DATA_DIR"] in made["Config"]["Volumes"]
    assert svc["ports"] == [f"127.0.0.1:{env['TRAINYARD_PORT']}:{env['TRAINYARD_PORT']}"]
    assert f"{env['TRAINYARD_PORT']}/tcp" in made["Config"]["ExposedPorts"]
    assert "healthcheck" not in svc and made["Healthcheck"]["Test"][:2] == ["CMD", "python"]
    assert svc["restart"] == "unless-stopped" and svc["hostname"] == "trainyard"
    assert set(config["volumes"]) == {"pgdata", "data"}
