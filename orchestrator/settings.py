"""One settings object for the whole service, read from `TRAINYARD_*` environment variables.

The embedded defaults need no configuration at all: a SQLite database and a `file://` artifact
store in a per-user data directory. Secrets are `SecretStr`: they print as `**********` and are
never put in a response, an event or a log line.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "trainyard"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    #: SQLAlchemy URL; default: SQLite file in the data dir. PostgreSQL: postgresql+psycopg://...
    database_url: str | None = None
    #: where checkpoints and the shared data cache go (file:///... or s3://bucket/prefix);
    #: default: file:// in the data dir. A run's files live under runs/<run id>/, prepared data
    #: sets under data/<data set hash>/.
    artifact_uri: str | None = None
    #: an S3-compatible endpoint for s3:// stores (MinIO, R2, a test server); unset: AWS.
    #: The service's own S3 credentials come from boto3's usual chain (AWS_* variables, profile,
    #: instance role); nodes never get them (see orchestrator/artifacts.py)
    artifact_endpoint_url: str | None = None
    artifact_region: str = "us-east-1"
    #: lifetime of a node's run-scoped S3 credentials; they are renewed on the node when less
    #: than a third of it is left
    artifact_grant_s: int = 3600

    # the HTTP service
    host: str = "127.0.0.1"
    port: int = 8000
    #: names the service answers to (the Host header) besides localhost, 127.0.0.1, ::1 and the
    #: bind address; a request naming any other gets 400, so DNS rebinding cannot reach it.
    #: A JSON list: TRAINYARD_TRUSTED_HOSTS='["trainyard.example.com"]' (docs/security.md)
    trusted_hosts: list[str] = Field(default_factory=list)
    #: how long a dashboard sign-in lasts
    session_ttl_s: float = 12 * 3600.0
    #: where the CLI finds the service
    api_url: str = "http://127.0.0.1:8000"
    #: seconds the CLI waits for one HTTP answer
    api_timeout_s: float = 30.0
    #: how long a submit's Idempotency-Key gives back the run it made (api/idempotency.py)
    idempotency_key_ttl_s: float = Field(default=24 * 3600.0, gt=0)

    # the controller
    #: this worker's name, the owner its leases record; one live process per name
    #: (controller/identity.py). Unset: `<host>-<n>`, n the lowest no live process of this data dir
    #: holds, so a restarted `serve` or `worker` comes back under its name and takes its runs back
    #: at once. A process given a name a live one holds is refused.
    worker_id: str | None = None
    lease_s: float = 30.0
    #: how often a worker's heartbeat is written; 3 missed beats and it counts as dead: other
    #: workers take its runs then, without waiting for their leases to run out
    worker_heartbeat_s: float = 3.0
    reconcile_interval_s: float = 1.0
    #: runs one worker drives at once (an ended run whose cleanup is left takes none)
    max_concurrent_runs: int = 4
    #: an ended run's cleanup steps (terminating its instances, revoking its nodes' store
    #: access; controller/cleanup.py): tries of each, then it gives up with an event (an instance
    #: not confirmed terminated is left to the orphan sweep), with a backoff between tries that
    #: doubles from the base up to the max
    cleanup_attempts: int = Field(default=10, ge=1)
    cleanup_retry_base_s: float = Field(default=1.0, ge=0)
    cleanup_retry_max_s: float = Field(default=60.0, ge=0)
    #: the least time a budget stop is given (controller/budget.py): from asking the trainer to
    #: stop until its last checkpoint is stored, its test loss measured and its nodes terminated.
    #: The run's own measurements (upload, evaluation speed) raise it; they cannot lower it.
    budget_stop_lead_s: float = 60.0
    #: the Python that runs the trainer on the local provider (needs torch)
    trainer_python: str = Field(default_factory=lambda: sys.executable)

    # limits at the door: a new spec over one is refused, the field named (orchestrator/door.py)
    #: folders whose files a spec may name (data.source, evaluation.ift.data), symlinks and `..`
    #: resolved; empty: the data dir. A file:// artifact_uri may be under these or the data dir.
    #: A JSON list: TRAINYARD_DATA_ROOTS='["/data/corpora"]'
    data_roots: list[Path] = Field(default_factory=list)
    max_nodes: int = 64
    max_procs_per_node: int = 16
    #: any token count: training.max_tokens and eval_tokens, data.max_tokens, test_max_tokens
    max_tokens: int = 10**12
    #: any size: seq_len, micro_batch, grad_accum, the IFT batch_size, model.overrides dimensions
    max_size: int = 1 << 20

    # providers and outside services (secrets)
    lambda_api_key: SecretStr | None = None
    lambda_api_url: str = "https://cloud.lambda.ai"
    #: the name under which the public half of `ssh_private_key_file` is registered with Lambda
    lambda_ssh_key_name: str | None = None
    #: the port of the instances' sshd (22 on Lambda; the simulator's machines use another)
    lambda_ssh_port: int = 22
    #: Lambda allows one launch request per 12 s
    lambda_launch_interval_s: float = 12.0
    #: tries per API call (the first included) on 429, 5xx and network errors, with backoff
    lambda_retry_attempts: int = 5
    lambda_retry_base_delay_s: float = 1.0
    lambda_retry_max_delay_s: float = 30.0
    #: length of one billing increment: Lambda bills by the started minute. Only a simulator
    #: with a compressed clock sets another value.
    billing_minute_s: float = 60.0
    #: how often placement reads capacity again while no type and region has any, and how long
    #: it waits before asking a provider again after a call failed (a 5xx, a timeout)
    placement_poll_s: float = 15.0
    #: how often the controller lists the instances of every provider that rents machines, to
    #: terminate orphans: named like trainyard's (ty-...) but owned by no live run
    #: (controller/orphans.py); 0 turns the sweep off
    orphan_sweep_interval_s: float = 300.0
    #: how long an orphan is left alone after it was first seen (a run or an operator may still
    #: claim it) before it is terminated and booked
    orphan_grace_s: float = 600.0

    # SSH to rented nodes (providers lambda and ssh)
    ssh_private_key_file: Path | None = None
    ssh_user: str = "ubuntu"
    ssh_connect_timeout_s: float = 10.0
    #: pinned host keys (trust on first use, a changed key refused); default: in the data dir
    known_hosts_file: Path | None = None
    #: the `ssh` provider's machines (YAML; see provision/ssh_hosts.py)
    ssh_hosts_file: Path | None = None

    # what runs on a rented node
    #: the node's interpreter whose environment has torch (Lambda's image: /usr/bin/python3)
    node_python: str = "/usr/bin/python3"
    #: a folder holding the node's torch when it is outside `node_python`'s site-packages
    node_torch_site_packages: str | None = None
    #: network interface for gloo/NCCL (GLOO_SOCKET_IFNAME); unset: their own choice.
    #: The simulator's machines are this one, so it needs `lo`.
    node_socket_ifname: str | None = None
    #: extra environment for the trainer on every node, e.g. {"OMP_NUM_THREADS": "1"}
    node_env: dict[str, str] = Field(default_factory=dict)
    #: folder under the node user's home holding the venv, data and run directories
    node_root: str = "trainyard"
    #: torchrun's rendezvous port on node 0 (each run adds an offset from its id, so runs
    #: sharing machines never meet in one rendezvous)
    node_master_port: int = 29500
    #: give up on an instance that is not active this long after its launch
    node_boot_timeout_s: float = 1800.0
    #: how often a booting instance is asked whether it is active (its billing starts then)
    node_active_poll_s: float = 5.0
    #: how long one bootstrap attempt waits for a node's SSH to answer
    node_ssh_timeout_s: float = 300.0
    #: where the trainer wheel is built and kept; default: ~/.cache/trainyard/wheels
    wheel_cache_dir: Path | None = None
    openai_api_key: SecretStr | None = None
    judge_base_url: str | None = None
    judge_model: str = "gpt-4o-mini"
    #: the judge's price in US cents per million input / output tokens (default: gpt-4o-mini's)
    judge_input_cents_per_mtok: float = 15.0
    judge_output_cents_per_mtok: float = 60.0
    #: seconds one judge call may take; the openai client's own retries on timeouts, 429 and 5xx
    judge_timeout_s: float = 120.0
    judge_max_retries: int = 2
    #: tries per judgement (the first included) when the answer is malformed; then it is missing
    judge_attempts: int = 3
    #: judge calls in flight at once
    judge_concurrency: int = 4

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'trainyard.db'}"

    @property
    def resolved_artifact_uri(self) -> str:
        return self.artifact_uri or (self.data_dir / "artifacts").resolve().as_uri()

    @property
    def resolved_known_hosts_file(self) -> Path:
        return self.known_hosts_file or self.data_dir / "known_hosts"

    @property
    def runs_dir(self) -> Path:
        """Where the local provider keeps each run's working directory."""
        return self.data_dir / "runs"


@lru_cache
def get_settings() -> Settings:
    return Settings()
