"""A client for Lambda Cloud's public REST API (`/api/v1`), over httpx.

It covers what trainyard needs: instance types with prices and per-region capacity, launch, get,
list, terminate, and SSH keys. The same client talks to the real API and to the simulator
(`python -m provision.simulator`); only `base_url` differs.

What it guarantees (see `transport.py` for how):
- a timeout on every call; 429 and 5xx retried with capped, fully jittered exponential backoff;
- errors raised as `provision.errors` exceptions, never raw httpx ones;
- the API key never appears in a repr, a log line or an exception message;
- launches spaced at least `launch_interval_s` apart (Lambda allows one per 12 s), retries
  included, across threads sharing the client;
- launch is one instance per call (`quantity` 1). When a launch's outcome is unknown (a 5xx, or
  the response was lost), the client looks for an instance with the launch's `name` before trying
  again, so a retried launch never rents a second machine.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from pydantic import SecretStr

from provision.errors import InvalidRequest, ProviderServerError
from provision.lambda_cloud.models import InstanceTypeOffer, LambdaInstance, SSHKey
from provision.lambda_cloud.transport import AmbiguousOutcome, ApiTransport, RetryPolicy, log

DEFAULT_BASE_URL = "https://cloud.lambda.ai"
#: Lambda: "Requests to /instance-operations/launch are limited to one request per 12 seconds"
DEFAULT_LAUNCH_INTERVAL_S = 12.0
_GONE = ("terminating", "terminated", "preempted")


class LambdaClient:
    """Blocking Lambda Cloud API client. Thread-safe; close it (or use `with`) when done.

    Every method is one API round trip (plus retries), except `launch`, which may first wait for
    its launch slot and, after an ambiguous failure, lists instances before retrying.
    """

    def __init__(
        self,
        api_key: SecretStr | str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        launch_interval_s: float = DEFAULT_LAUNCH_INTERVAL_S,
        trust_env: bool | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if not key.get_secret_value().strip():
            raise InvalidRequest("Lambda API key is empty")
        self.retry = retry or RetryPolicy()
        self.launch_interval_s = launch_interval_s
        self._sleep = sleep
        self._launch_lock = threading.Lock()
        self._last_launch: float | None = None
        self._api = ApiTransport(
            key,
            base_url=base_url,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            retry=self.retry,
            trust_env=trust_env,
            sleep=sleep,
        )

    @property
    def base_url(self) -> str:
        return self._api.base_url

    def __repr__(self) -> str:
        return f"LambdaClient(base_url={self.base_url!r}, api_key=SecretStr('**********'))"

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> "LambdaClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- instance types ---------------------------------------------------------------------------
    def instance_types(self) -> dict[str, InstanceTypeOffer]:
        """Every type Lambda offers, keyed by name, with price and the regions that have capacity."""
        data = self._api.call("GET", "/api/v1/instance-types")
        if not isinstance(data, dict):
            raise ProviderServerError("Lambda API GET /api/v1/instance-types: data is not an object")
        return {name: InstanceTypeOffer.model_validate(item) for name, item in data.items()}

    # -- instances --------------------------------------------------------------------------------
    def list_instances(self) -> list[LambdaInstance]:
        data = self._api.call("GET", "/api/v1/instances")
        return [LambdaInstance.model_validate(item) for item in _as_list(data, "instances")]

    def get_instance(self, instance_id: str) -> LambdaInstance:
        """The instance; raises `NotFound` when Lambda does not know the id."""
        _check_id(instance_id)
        return LambdaInstance.model_validate(self._api.call("GET", f"/api/v1/instances/{instance_id}"))

    def launch(
        self,
        *,
        region: str,
        instance_type: str,
        ssh_key_name: str,
        name: str | None = None,
        file_system_names: list[str] | None = None,
    ) -> str:
        """Launch ONE instance and return its id. Not idempotent (see the module docstring)."""
        if name is not None and len(name) > 64:
            raise InvalidRequest(f"instance name {name!r} is longer than Lambda's 64 characters")
        body: dict[str, Any] = {
            "region_name": region,
            "instance_type_name": instance_type,
            "ssh_key_names": [ssh_key_name],
            "file_system_names": list(file_system_names or []),
            "quantity": 1,
        }
        if name is not None:
            body["name"] = name

        def launch_once() -> str:
            try:
                data = self._api.call(
                    "POST",
                    "/api/v1/instance-operations/launch",
                    json_body=body,
                    creates=True,
                    before_each_try=self._wait_for_launch_slot,
                )
            except AmbiguousOutcome as exc:
                found = self._live_instance_named(name) if name else None
                if found is not None:
                    log.warning("%s; but instance %s named %r exists, so it launched", exc, found.id, name)
                    return found.id
                raise
            ids = (data or {}).get("instance_ids") if isinstance(data, dict) else None
            if not ids:
                raise ProviderServerError("Lambda API launch: the response holds no instance id")
            return str(ids[0])

        def on_retry(exc: BaseException | None, _next_try: int, wait_s: float) -> None:
            log.warning("%s; no instance named %r, so launching again in %.2fs", exc, name, wait_s)

        # Only a named launch is sent again: without a name we cannot look whether the last one took.
        return self.retry.run(
            launch_once,
            retry_if=lambda exc: bool(name) and isinstance(exc, AmbiguousOutcome),
            sleep=self._sleep,
            on_retry=on_retry,
        )

    def terminate(self, instance_ids: list[str]) -> list[LambdaInstance]:
        """Ask Lambda to terminate the instances; returns them as Lambda reports them (terminating).

        Raises `NotFound` when any id is unknown (the provider makes this idempotent).
        """
        for instance_id in instance_ids:
            _check_id(instance_id)
        data = self._api.call(
            "POST", "/api/v1/instance-operations/terminate", json_body={"instance_ids": list(instance_ids)}
        )
        items = data.get("terminated_instances", []) if isinstance(data, dict) else []
        return [LambdaInstance.model_validate(item) for item in items]

    # -- SSH keys ---------------------------------------------------------------------------------
    def list_ssh_keys(self) -> list[SSHKey]:
        return [SSHKey.model_validate(item) for item in _as_list(self._api.call("GET", "/api/v1/ssh-keys"), "ssh-keys")]

    def add_ssh_key(self, name: str, public_key: str | None = None) -> SSHKey:
        """Register a public key under `name` (or let Lambda generate a pair when it is None).

        A generated key's `private_key` is returned once and never again: store it at once.
        """
        body: dict[str, Any] = {"name": name}
        if public_key is not None:
            body["public_key"] = public_key.strip()
        try:
            return SSHKey.model_validate(self._api.call("POST", "/api/v1/ssh-keys", json_body=body, creates=True))
        except AmbiguousOutcome:
            existing = [k for k in self.list_ssh_keys() if k.name == name]
            if existing and public_key is not None and existing[0].public_key.split()[:2] == public_key.split()[:2]:
                return existing[0]
            raise

    def delete_ssh_key(self, key_id: str) -> None:
        _check_id(key_id)
        self._api.call("DELETE", f"/api/v1/ssh-keys/{key_id}")

    # -- internals --------------------------------------------------------------------------------
    def _wait_for_launch_slot(self) -> None:
        """Block until `launch_interval_s` has passed since the last launch request we sent."""
        with self._launch_lock:
            if self._last_launch is not None:
                wait = self._last_launch + self.launch_interval_s - time.monotonic()
                if wait > 0:
                    self._sleep(wait)
            self._last_launch = time.monotonic()

    def _live_instance_named(self, name: str) -> LambdaInstance | None:
        for inst in self.list_instances():
            if inst.name == name and inst.status not in _GONE:
                return inst
        return None


def _as_list(data: Any, what: str) -> list:
    if not isinstance(data, list):
        raise ProviderServerError(f"Lambda API: {what} data is not a list")
    return data


def _check_id(value: str) -> None:
    # ids go into URL paths: refuse anything that could change the path
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise InvalidRequest(f"not a valid Lambda id: {value!r}")
