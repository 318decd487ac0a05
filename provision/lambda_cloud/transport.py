"""HTTP plumbing under the Lambda client: auth, timeouts, retries, and error translation.

Why its own module: the endpoint methods (`client.py`) should read like the API reference, while
the rules that keep us safe live in one place:

- Every request has a timeout (connect and read), so no call blocks forever.
- 429 and 5xx are retried with capped, fully jittered exponential backoff (`RetryPolicy`, on
  tenacity, the same rule as the trainer's S3 transfers). A 429 means
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
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import tenacity
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


T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is repeated after 429, 5xx or a network failure.

    Capped exponential backoff with full jitter (tenacity's `wait_random_exponential`, so many
    clients do not retry in step): the n-th retry waits a random time up to
    `min(max_delay_s, base_delay_s * 2**(n-1))`. A `Retry-After` the server sent with the failure
    raises the wait to at least that (still capped by `max_delay_s`).
    """

    attempts: int = 5  # tries in total, the first included
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0

    def run(
        self,
        fn: Callable[[], T],
        *,
        retry_if: Callable[[BaseException], bool],
        sleep: Callable[[float], None],
        on_retry: Callable[[BaseException | None, int, float], None],
    ) -> T:
        """fn(), repeated while it raises what `retry_if` accepts, at most `attempts` tries in all;
        the last try's exception is raised as it is. `on_retry(exc, next_try, wait_s)` logs."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            assert state.outcome is not None and state.next_action is not None  # tenacity sets both first
            on_retry(state.outcome.exception(), state.attempt_number + 1, state.next_action.sleep)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.attempts)),
            wait=self._wait,
            retry=tenacity.retry_if_exception(retry_if),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(fn)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        wait = tenacity.wait_random_exponential(multiplier=self.base_delay_s, max=self.max_delay_s)(state)
        retry_after = getattr(state.outcome.exception() if state.outcome else None, "retry_after_s", None)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_delay_s))
        return wait


class _Transient(Exception):
    """One try failed in a way that is safe to repeat; `error` is what the caller sees if no try
    succeeds. Only `ApiTransport.call` raises and catches it."""

    def __init__(self, error: ProvisionError, retry_after_s: float | None = None):
        super().__init__(str(error))
        self.error = error
        self.retry_after_s = retry_after_s


class _KeyAuth(httpx.Auth):
    """`Authorization: Bearer <key>` on every request; the key stays a SecretStr until then."""

    def __init__(self, key: SecretStr):
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
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

        def one_try() -> Any:
            if before_each_try is not None:
                before_each_try()
            try:
                resp = self._http.request(method, path, json=json_body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing reached the server: always safe to try again.
                err = self._scrub(f"Lambda API {what}: cannot connect: {exc}")
                raise _Transient(ProviderServerError(err)) from None
            except httpx.TransportError as exc:
                err = self._scrub(f"Lambda API {what}: no response ({type(exc).__name__}: {exc})")
                if creates:
                    raise AmbiguousOutcome(err) from None
                raise _Transient(ProviderServerError(err)) from None
            if resp.status_code < 400:
                return self._data(resp, what)
            error = self._error(resp, what)
            if resp.status_code == 429:
                raise _Transient(error, _retry_after(resp))
            if resp.status_code >= 500 or error.code.startswith("provider/"):
                if creates:
                    raise AmbiguousOutcome(str(error)) from None
                raise _Transient(error)
            raise error

        def on_retry(exc: BaseException | None, next_try: int, wait_s: float) -> None:
            log.warning("%s; try %d of %d in %.2fs", exc, next_try, self.retry.attempts, wait_s)

        try:
            return self.retry.run(
                one_try, retry_if=lambda exc: isinstance(exc, _Transient), sleep=self._sleep, on_retry=on_retry
            )
        except _Transient as exc:
            raise exc.error from None

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
        exc.code = code
        exc.http_status = status
        exc.suggestion = self._scrub(suggestion)
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
