# The trainyard service: REST API, dashboard and controller (`trainyard serve`).
# No torch here: the service never imports it; nodes run the trainer with their own torch. So the
# `local` provider (the trainer on this machine) cannot train in this image: use `lambda` or `ssh`.
#   docker build -f docker/service.Dockerfile -t trainyard .      (from the repository root)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRAINYARD_HOST=0.0.0.0 \
    TRAINYARD_PORT=8000 \
    TRAINYARD_DATA_DIR=/data

# ssh client: not used by the service (the controller speaks SSH through Fabric/paramiko); it is
# here for operators debugging a node from the container
RUN apt-get update && apt-get install -y --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY alembic ./alembic
COPY orchestrator ./orchestrator
COPY provision ./provision
# the trainer: the controller builds a wheel of trainer/ (with pyproject.toml) for every node it
# bootstraps, and the service imports trainer.artifacts (the artifact store; loads no torch)
COPY trainer ./trainer
# editable, so alembic/ and trainer/ stay beside the packages, where orchestrator.db.migrations
# and provision.bootstrap (the node wheel) find them
RUN pip install -e . \
    && useradd --create-home --uid 1000 trainyard \
    && mkdir -p /data && chown trainyard /data

USER trainyard
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:8000/api/v1/health', timeout=2).status_code != 200)"

# migrate, then serve: `serve` refuses an out-of-date schema, so the upgrade runs first
CMD ["sh", "-c", "trainyard db upgrade && exec trainyard serve"]
