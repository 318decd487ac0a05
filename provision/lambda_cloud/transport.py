"""HTTP plumbing under the Lambda client: auth, timeouts, retries, and error translation.

Why its own module: the endpoint methods (`client.py`) should read like the API reference, while
the rules that keep us safe live in one place:

- Every request has a timeout (connect and read), so no call blocks forever.
- 429 and 5xx are retried with capped, jittered exponential backoff (`RetryPolicy`). A 429 means
  the request was refused, so it is always safe to repeat. A 5xx or a lost response after the
  request was sent is *ambiguous* for a call that creates something (launch, add key): it may have
  happened. Such calls are not repeated blindly; `AmbiguousOutcome` tells the caller to look first.
- Lambda's error envelope `{"error": {code, message, suggestion}}` becomes a `provision.errors`
  exception carrying `code`, `http_status` and `suggestion` attributes.
- The API key is a `SecretStr`, sent by an `httpx.Auth` that never prints it. Text that goes into
  exceptions or logs is scrubbed of the key as well, in case a server ever echoes it back.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from provision.errors import (
    InsufficientCapacity,
    InvalidCredentials,
    InvalidRequest,
    NotFound,
    ProviderServerError,
    ProvisionError,
    QuotaExceeded,
    RateLimited,
)

log = logging.getLogger("provision.lambda_cloud")

#: error code -> exception class; codes not listed fall back on the HTTP status
_CODE_ERRORS: dict[str, type[ProvisionError]] = {
    "instance-operations/launch/insufficient-capacity": InsufficientCapacity,
    "global/quota-exceeded": QuotaExceeded,
    "global/invalid-api-key": InvalidCredentials,
    "global/account-inactive": InvalidCredentials,
    "global/invalid-address": InvalidCredentials,
    "global/forbidden": InvalidCredentials,
    "global/object-does-not-exist": NotFound,
    "global/not-found": NotFound,
    "global/invalid-parameters": InvalidRequest,
    "global/duplicate": InvalidRequest,
    "global/conflict": InvalidRequest,
    "instance-operations/launch/file-system-in-wrong-region": InvalidRequest,
}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is repeated after 429, 5xx or a network failure.

    The n-th retry waits `min(max_delay_s, base_delay_s * 2**(n-1))`, of which the `jitter`
    fraction is drawn at random (so many clients do not retry in step). A `Retry-After` header, when
    the server sends one, raises the wait to at least that (still capped by `max_delay_s`).
    """

    attempts: int = 5  # tries in total, the first included
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    jitter: float = 0.5

    def delay(self, retry_number: int, retry_after_s: float | None = None) -> float:
        wait = min(self.max_delay_s, self.base_delay_s * (2 ** max(0, retry_number - 1)))
        wait = wait * (1.0 - self.jitter) + wait * self.jitter * random.random()
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.max_delay_s))
        return wait


class _KeyAuth(httpx.Auth):
    """`Authorization: Bearer <key>` on every request; the key stays a SecretStr until then."""

    def __init__(self, key: SecretStr):
        self._key = key

    def auth_flow(self, request: httpx.Request):
        request.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        yield request

    def __repr__(self) -> str:
        return "_KeyAuth(key=**********)"


class AmbiguousOutcome(ProviderServerError):
    """A request that creates something was sent, but we do not know whether it took effect."""


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiTransport:
    """Sends one API call with auth, timeout, retries, and error translation. Thread-safe."""

    def __init__(
        self,
        api_key: SecretStr,
        *,
        base_url: str,
        timeout_s: float,
        connect_timeout_s: float,
        retry: RetryPolicy,
        trust_env: bool | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._key = api_key
        self.retry = retry
        self._sleep = sleep
        self.base_url = base_url.rstrip("/")
        # Proxy settings from the environment never apply to a loopback simulator.
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=_KeyAuth(api_key),
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            headers={"Accept": "application/json", "User-Agent": "trainyard-provision/0.1"},
            follow_redirects=False,
            trust_env=(not _is_loopback(self.base_url)) if trust_env is None else trust_env,
        )

    def close(self) -> None:
        self._http.close()

    # -- the one entry point ----------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        creates: bool = False,
        before_each_try: Callable[[], None] | None = None,
    ) -> Any:
        """Send the request and return the envelope's `data`.

        `creates`: the call makes something (launch, add key), so a 5xx or a lost response is
        raised as `AmbiguousOutcome` instead of being repeated. `before_each_try` runs before every
        try (the launch spacing hooks in here, so retries keep the spacing too).
        """
        what = f"{method} {path}"
        last: ProvisionError | None = None
        for attempt in range(1, max(1, self.retry.attempts) + 1):
            if before_each_try is not None:
                before_each_try()
            retry_after: float | None = None
            try:
                resp = self._http.request(method, path, json=json_body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing reached the server: always safe to try again.
                last = ProviderServerError(self._scrub(f"Lambda API {what}: cannot connect: {exc}"))
            except httpx.TransportError as exc:
                err = self._scrub(f"Lambda API {what}: no response ({type(exc).__name__}: {exc})")
                if creates:
                    raise AmbiguousOutcome(err) from None
                last = ProviderServerError(err)
            else:
                if resp.status_code < 400:
                    return self._data(resp, what)
                error = self._error(resp, what)
                if resp.status_code == 429:
                    retry_after = _retry_after(resp)
                elif resp.status_code >= 500 or error.code.startswith("provider/"):
                    if creates:
                        raise AmbiguousOutcome(str(error)) from None
                else:
                    raise error
                last = error
            if attempt < self.retry.attempts:
                wait = self.retry.delay(attempt, retry_after)
                log.warning("%s; try %d of %d in %.2fs", last, attempt + 1, self.retry.attempts, wait)
                self._sleep(wait)
        assert last is not None
        raise last

    # -- helpers ----------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        key = self._key.get_secret_value()
        return text.replace(key, "**********") if key else text

    def _data(self, resp: httpx.Response, what: str) -> Any:
        try:
            body = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ProviderServerError(
                self._scrub(f"Lambda API {what}: HTTP {resp.status_code} with a non-JSON body")
            ) from None
        if not isinstance(body, dict) or "data" not in body:
            raise ProviderServerError(f"Lambda API {what}: response without a 'data' envelope")
        return body["data"]

    def _error(self, resp: httpx.Response, what: str) -> ProvisionError:
        code, message, suggestion = "", "", ""
        try:
            err = resp.json().get("error") or {}
            code = str(err.get("code") or "")
            message = str(err.get("message") or "")
            suggestion = str(err.get("suggestion") or "")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            message = resp.text[:200].strip()
        status = resp.status_code
        cls = _CODE_ERRORS.get(code) or _status_error(status, code)
        text = f"Lambda API {what}: HTTP {status}"
        if code:
            text += f" {code}"
        if message:
            text += f": {message}"
        if suggestion:
            text += f" ({suggestion})"
        exc = cls(self._scrub(text))
        exc.code = code  # type: ignore[attr-defined]
        exc.http_status = status  # type: ignore[attr-defined]
        exc.suggestion = self._scrub(suggestion)  # type: ignore[attr-defined]
        return exc

    def __repr__(self) -> str:
        return f"ApiTransport(base_url={self.base_url!r}, api_key=SecretStr('**********'))"


def _status_error(status: int, code: str) -> type[ProvisionError]:
    if status == 429:
        return RateLimited
    if status >= 500 or code.startswith("provider/"):
        return ProviderServerError
    if status in (401, 403):
        return InvalidCredentials
    if status == 404:
        return NotFound
    return InvalidRequest


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
