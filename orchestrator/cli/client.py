"""The REST API client the CLI uses; HTTP failures become CliErrors with the right exit code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from orchestrator.cli.errors import BAD_INPUT, CONFLICT, FAILURE, NOT_FOUND, UNREACHABLE, CliError, mistakes
from trainer.schema import field_path

_EXIT_BY_STATUS = {400: BAD_INPUT, 422: BAD_INPUT, 404: NOT_FOUND, 409: CONFLICT}


def error_message(response: httpx.Response) -> str:
    """One line from an error response: our `{detail: {message}}` or FastAPI's 422 list (every
    error of it, `field: message; ...`)."""
    message, details = error_lines(response)
    return "; ".join(details) if details else message


def error_lines(response: httpx.Response) -> tuple[str, list[str]]:
    """The `error:` line for an error response and the lines under it: FastAPI's 422 lists every
    field it refused, and each of them is shown, with its path."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict) and detail.get("message"):
        return str(detail["message"]), []
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        problems = []
        for d in detail:
            loc = list(d.get("loc", []))
            if loc and loc[0] in ("body", "query", "path"):
                loc = loc[1:]
            field = field_path(loc)
            problems.append(f"{field}: {d.get('msg', 'invalid')}" if field else str(d.get("msg", "invalid")))
        return mistakes(problems)
    return f"HTTP {response.status_code} from {response.request.method} {response.request.url.path}", []


class ApiClient:
    def __init__(self, base_url: str, timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url + "/api/v1", timeout=timeout_s)

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
            message, details = error_lines(response)
            raise CliError(message, _EXIT_BY_STATUS.get(response.status_code, FAILURE), details)
        return response.json()

    def health(self) -> dict:
        return self._call("GET", "/health")

    def submit(self, spec: dict) -> dict:
        return self._call("POST", "/runs", json=spec)

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

    def checkpoint(self, run_id: str, step: int) -> dict:
        return self._call("GET", f"/runs/{quote(run_id, safe='')}/checkpoints/{step}")

    def download(
        self, run_id: str, step: int, name: str, write: Callable[[bytes], None], timeout_s: float = 300.0
    ) -> None:
        """Stream one file of a stored checkpoint into `write(chunk)`."""
        path = f"/runs/{quote(run_id, safe='')}/checkpoints/{step}/files/{quote(name, safe='')}"
        try:
            with self._http.stream("GET", path, timeout=timeout_s) as response:
                if response.is_error:
                    response.read()
                    raise CliError(error_message(response), _EXIT_BY_STATUS.get(response.status_code, FAILURE))
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
