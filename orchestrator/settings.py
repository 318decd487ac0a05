"""One settings object for the whole service, read from `TRAINYARD_*` environment variables.

The embedded defaults need no configuration at all: a SQLite database and a `file://` artifact
store in a per-user data directory. Secrets are `SecretStr`: they print as `**********` and are
never put in a response, an event or a log line.
"""

from __future__ import annotations

import os
import socket
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
    #: where checkpoints go; default: file:// in the data dir
    artifact_uri: str | None = None

    # the HTTP service
    host: str = "127.0.0.1"
    port: int = 8000
    #: where the CLI finds the service
    api_url: str = "http://127.0.0.1:8000"
    #: seconds the CLI waits for one HTTP answer
    api_timeout_s: float = 30.0

    # the controller
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    lease_s: float = 30.0
    reconcile_interval_s: float = 1.0
    #: runs one worker drives at once
    max_concurrent_runs: int = 4
    #: the Python that runs the trainer on the local provider (needs torch)
    trainer_python: str = Field(default_factory=lambda: sys.executable)

    # providers and outside services (secrets)
    lambda_api_key: SecretStr | None = None
    lambda_api_url: str = "https://cloud.lambda.ai"
    openai_api_key: SecretStr | None = None
    judge_base_url: str | None = None
    judge_model: str = "gpt-4o-mini"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'trainyard.db'}"

    @property
    def resolved_artifact_uri(self) -> str:
        return self.artifact_uri or (self.data_dir / "artifacts").resolve().as_uri()

    @property
    def runs_dir(self) -> Path:
        """Where the local provider keeps each run's working directory."""
        return self.data_dir / "runs"


@lru_cache
def get_settings() -> Settings:
    return Settings()
