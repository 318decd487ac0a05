"""The REST API client the CLI uses; HTTP failures become CliErrors with the right exit code.
It sends the user's API token (cli/credentials.py) when there is one."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from orchestrator.cli import credentials
from orchestrator.cli.errors import (
    BAD_INPUT,
    CONFLICT,
    FAILURE,
    NOT_AUTHORIZED,
    NOT_FOUND,
    UNREACHABLE,
    CliError,
    mistakes,
)

#: waits before `submit` sends a run again whose answer was lost (the last try is not waited on)
SUBMIT_RETRY_WAITS_S = (0.5, 2.0)
_EXIT_BY_STATUS = {
    400: BAD_INPUT,
    422: BAD_INPUT,
    404: NOT_FOUND,
    409: CONFLICT,
    401: NOT_AUTHORIZED,
    403: NOT_AUTHORIZED,
}


def error_message(response: httpx.Response) -> str:
    """One line from an error response: its message, or every mistake it lists (`field: message; ...`)."""
    message, details = error_lines(response)
    return "; ".join(details) if details else message


def error_lines(response: httpx.Response) -> tuple[str, list[str]]:
    """The `error:` line for an error response and the lines under it. Every error body has one
    shape (orchestrator/api/errors.py): `detail.message`, and `detail.errors` with each mistake;
    several are counted, then shown one per line, each with its field path."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict) and detail.get("message"):
        errors = [e for e in detail.get("errors") or () if isinstance(e, dict)]
        if len(errors) > 1:
            return mistakes(
                [f"{e['field']}: {e.get('message')}" if e.get("field") else str(e.get("message")) for e in errors]
            )
        return str(detail["message"]), []
    return f"HTTP {response.status_code} from {response.request.method} {response.request.url.path}", []


def _token_hint(sent: bool) -> str:
    """What a 401 tells the user about the token the CLI sent (never the token itself)."""
    if os.environ.get(credentials.ENV, "").strip():
        return f"the CLI sent ${credentials.ENV}"
    if sent:
        return f"the CLI sent the token in {credentials.token_file()}"
    return f"the CLI sent none: set {credentials.ENV} or write it to {credentials.token_file()}"


class ApiClient:
    """`token`: the API token to send; by default the user's (cli/credentials.py), if any."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, token: str | None = None):
        self.base_url = base_url.rstrip("/")
        token = token or credentials.find_token()
        self._sends_token = token is not None
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._http = httpx.Client(base_url=self.base_url + "/api/v1", timeout=timeout_s, headers=headers)

    def _refusal(self, response: httpx.Response) -> CliError:
        message, details = error_lines(response)
        if response.status_code == 401:
            message = f"{message} ({_token_hint(self._sends_token)})"
        return CliError(message, _EXIT_BY_STATUS.get(response.status_code, FAILURE), details)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise CliError(
                f"cannot reach the trainyard service at {self.base_url} ({exc}); start it with "
                f"`trainyard serve`, or point --api-url / TRAINYARD_API_URL at a running one",
                UNREACHABLE,
            ) from exc
        except httpx.TimeoutException as exc:
            raise CliError(f"the trainyard service at {self.base_url} did not answer in time", UNREACHABLE) from exc
        except httpx.HTTPError as exc:
            raise CliError(f"talking to {self.base_url} failed: {exc}", UNREACHABLE) from exc
        if response.is_error:
            raise self._refusal(response)
        return response.json()

    def health(self) -> dict:
        return self._call("GET", "/health")

    def submit(self, spec: dict) -> dict:
        """Submit a run under one fresh Idempotency-Key, sent again with the same key when the
        answer was lost (a timeout, a dropped connection: the service may have made the run),
        so a retry gives back that run and never makes a second one (api/submits.py)."""
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        for wait_s in SUBMIT_RETRY_WAITS_S:
            try:
                return self._call("POST", "/runs", json=spec, headers=headers)
            except CliError as exc:
                # not sent at all (nothing listens): no run can exist, and retrying only delays the error
                if exc.exit_code != UNREACHABLE or isinstance(
                    exc.__cause__, (httpx.ConnectError, httpx.ConnectTimeout)
                ):
                    raise
                time.sleep(wait_s)
        return self._call("POST", "/runs", json=spec, headers=headers)

    def list_runs(self, statuses: list[str], limit: int, offset: int) -> dict:
        return self._call("GET", "/runs", params={"status": statuses, "limit": limit, "offset": offset})

    def get_run(self, run_id: str) -> dict:
        return self._call("GET", f"/runs/{quote(run_id, safe='')}")

    def cancel(self, run_id: str) -> dict:
        return self._call("POST", f"/runs/{quote(run_id, safe='')}/cancel")

    def events(self, run_id: str, after_id: int = 0) -> dict:
        return self._call("GET", f"/runs/{quote(run_id, safe='')}/events", params={"after_id": after_id})

    def logs(self, run_id: str, after_id: int = 0, tail: int | None = None) -> dict:
        params: dict[str, Any] = {"after_id": after_id}
        if tail:
            params["tail"] = tail
        return self._call("GET", f"/runs/{quote(run_id, safe='')}/logs", params=params)

    def checkpoints(self, run_id: str) -> dict:
        return self._call("GET", f"/runs/{quote(run_id, safe='')}/checkpoints")

    def checkpoint(self, run_id: str, step: int, kind: str = "train") -> dict:
        return self._call("GET", f"/runs/{quote(run_id, safe='')}/checkpoints/{step}", params={"kind": kind})

    def download(
        self,
        run_id: str,
        step: int,
        name: str,
        write: Callable[[bytes], None],
        timeout_s: float = 300.0,
        kind: str = "train",
    ) -> None:
        """Stream one file of a stored checkpoint (`kind` train or ift) into `write(chunk)`."""
        path = f"/runs/{quote(run_id, safe='')}/checkpoints/{step}/files/{quote(name, safe='')}"
        try:
            with self._http.stream("GET", path, params={"kind": kind}, timeout=timeout_s) as response:
                if response.is_error:
                    response.read()
                    raise self._refusal(response)
                for chunk in response.iter_bytes(1 << 20):
                    write(chunk)
        except httpx.HTTPError as exc:
            raise CliError(f"downloading {name} from {self.base_url} failed: {exc}", UNREACHABLE) from exc

    def instance_types(self, provider: str) -> dict:
        return self._call("GET", "/instance-types", params={"provider": provider})

    def instances(self) -> dict:
        """Every instance the renting providers show, with owner, age, price and spend."""
        return self._call("GET", "/instances")

    def plan(self, spec: str | dict, provider: str | None = None) -> dict:
        """`spec`: the YAML text of a spec, or a spec as JSON."""
        return self._call("POST", "/plans", json={"spec": spec, "provider": provider})

    def start_probe(self, body: dict) -> dict:
        """`body`: spec (YAML text or JSON), instance_type, max_usd, max_minutes."""
        return self._call("POST", "/plans/probes", json=body)

    def get_probe(self, run_id: str) -> dict:
        return self._call("GET", f"/plans/probes/{quote(run_id, safe='')}")

    def throughput(self, **filters: str | int | None) -> dict:
        """Throughput records, newest first; `filters`: instance_type, shape, run_id, source, limit."""
        return self._call("GET", "/throughput", params={k: v for k, v in filters.items() if v is not None})

    def compare(self, body: dict) -> dict:
        return self._call("POST", "/comparisons", json=body)

    def get_comparison(self, comparison_id: str) -> dict:
        return self._call("GET", f"/comparisons/{quote(comparison_id, safe='')}")

    def list_comparisons(self, limit: int, offset: int) -> dict:
        """Comparisons, newest first, each with its table."""
        return self._call("GET", "/comparisons", params={"limit": limit, "offset": offset})

    def evaluations(self, run_id: str) -> list[dict]:
        """The run's evaluations (test loss, IFT), oldest first, each with its checkpoint's step."""
        return self._call("GET", f"/runs/{quote(run_id, safe='')}/evaluations")
