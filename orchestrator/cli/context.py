"""What the global options set (`--api-url`, `--debug`) and the client built from them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from orchestrator.cli.client import ApiClient
from orchestrator.settings import get_settings


@dataclass
class CliState:
    api_url: str | None = None


state = CliState()


def set_debug(on: bool) -> None:
    if on:
        os.environ["TRAINYARD_DEBUG"] = "1"


def api_url() -> str:
    return state.api_url or get_settings().api_url


def client() -> ApiClient:
    return ApiClient(api_url(), get_settings().api_timeout_s)
