# The trainyard service: REST API, dashboard and controller (`trainyard serve`).
# No torch here: the service never imports it; nodes run the trainer with their own torch. So the
# `local` provider (the trainer on this machine) cannot train in this image: use `lambda` or `ssh`.
#   docker build -f docker/service.Dockerfile -t trainyard .      (from the repository root)
#   podman build --format docker -f docker/service.Dockerfile -t trainyard .   (docker format keeps
#   the HEALTHCHECK; podman's default OCI format drops it)
# What goes into the build context: .dockerignore at the repository root (an allowlist).
# Deployment (PostgreSQL, secrets, the volume, the first API token): README.md, "Deployment".

# The service's dependencies, read from pyproject.toml in a stage of their own: the layer that
# installs them is then rebuilt only when this list changes, not on every edit of pyproject.toml
FROM python:3.11-slim AS requirements
COPY pyproject.toml /
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/pyproject.toml', 'rb'))['project']['dependencies']))" \
    > /requirements.txt

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRAINYARD_HOST=0.0.0.0 \
    TRAINYARD_PORT=8000 \
    TRAINYARD_DATA_DIR=/data

# ssh client: not used by the service (the controller speaks SSH through Fabric/paramiko); it is
# here for operators debugging a node from the container. `apt-get clean`: no package caches left
# in the layer, whether or not the base image is configured to drop them (~80 MB otherwise)
RUN apt-get update && apt-get install -y --no-install-recommends openssh-client \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The dependencies first, so a change to the code rebuilds only the layers below. setuptools and
# wheel are installed for the controller too: it builds the trainer wheel for every node it
# bootstraps (provision/wheels.py), with these, offline.
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN pip install "setuptools>=68" wheel -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY pyproject.toml README.md ./
COPY alembic ./alembic
COPY orchestrator ./orchestrator
COPY provision ./provision
# the trainer: the controller builds a wheel of trainer/ (with pyproject.toml) for every node it
# bootstraps, and the service imports trainer.artifacts (the artifact store; loads no torch)
COPY trainer ./trainer
# the command and the health check (docker/start.py, docker/healthcheck.py)
COPY docker/start.py docker/healthcheck.py /usr/local/lib/trainyard/
# editable, so alembic/ and trainer/ stay beside the packages, where orchestrator.db.migrations
# and provision.bootstrap (the node wheel) find them; no build isolation: nothing to download.
# compileall: the sources' bytecode, which the service's user could not write at each start
RUN pip install --no-deps --no-build-isolation -e . \
    && python -m compileall -q /app /usr/local/lib/trainyard \
    && useradd --create-home --uid 1000 trainyard \
    && mkdir -p /data && chown trainyard /data

USER trainyard
VOLUME ["/data"]
EXPOSE 8000
# GET /api/v1/health on TRAINYARD_PORT (open without a token)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/lib/trainyard/healthcheck.py"]

# `trainyard db upgrade`, then `trainyard serve`, in one process: `serve` refuses an out-of-date
# PostgreSQL schema, so the upgrade runs first. Another command runs instead when given, e.g.
# `trainyard token create --name admin --scope admin` (README.md, "Deployment")
CMD ["python", "/usr/local/lib/trainyard/start.py"]
