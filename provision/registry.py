"""Which provider serves a run spec's `compute.provider`, built from the service settings.

One factory per provider name. A provider module is imported only when a run asks for it, so the
service starts even where an optional provider's dependencies are missing. To add a provider,
write `provision/<name>.py` with a `Provider` subclass and add its factory to `_FACTORIES`.

A factory never touches the network: a provider that cannot be built (a setting missing, a file
unreadable) fails at once with one line naming the `TRAINYARD_*` variable to set, and a provider
that is built but cannot reach its API fails later, per call, with retryable errors.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.base import Instance, InstanceType, Provider
from provision.errors import InvalidRequest, ProvisionError
from provision.node import Node

if TYPE_CHECKING:  # pragma: no cover - imports for type hints only
    from orchestrator.settings import Settings
    from provision.transport.connection import SshTimeouts


def _local(settings: "Settings") -> Provider:
    from provision.local import LocalProvider

    return LocalProvider(settings.runs_dir, python=settings.trainer_python)


def _require(provider: str, **values: Any) -> None:
    """Raise naming every missing setting (as its environment variable) at once."""
    missing = [
        f"TRAINYARD_{name.upper()}"
        for name, value in values.items()
        if value is None
        or (hasattr(value, "get_secret_value") and not value.get_secret_value().strip())
        or (isinstance(value, str) and not value.strip())
    ]
    if missing:
        raise InvalidRequest(f"provider {provider} needs {' and '.join(missing)}")


def _key_file(settings: "Settings") -> Path:
    if settings.ssh_private_key_file is None:
        raise InvalidRequest("provider needs TRAINYARD_SSH_PRIVATE_KEY_FILE")
    path = Path(settings.ssh_private_key_file).expanduser()
    if not path.is_file():
        raise InvalidRequest(f"TRAINYARD_SSH_PRIVATE_KEY_FILE {path} is not a file")
    return path


def _ssh_timeouts(settings: "Settings") -> SshTimeouts:
    from provision.transport.connection import SshTimeouts

    return SshTimeouts(connect_s=settings.ssh_connect_timeout_s)


def _lambda(settings: "Settings") -> Provider:
    _require(
        "lambda",
        lambda_api_key=settings.lambda_api_key,
        lambda_ssh_key_name=settings.lambda_ssh_key_name,
        ssh_private_key_file=settings.ssh_private_key_file,
    )
    from provision.lambda_cloud import LambdaClient, LambdaProvider, RetryPolicy
    from provision.transport.known_hosts import PinnedHostKeys

    key_file = _key_file(settings)
    api_key, ssh_key_name = settings.lambda_api_key, settings.lambda_ssh_key_name
    assert api_key is not None and ssh_key_name is not None  # checked by _require
    client = LambdaClient(
        api_key,
        base_url=settings.lambda_api_url,
        retry=RetryPolicy(
            attempts=settings.lambda_retry_attempts,
            base_delay_s=settings.lambda_retry_base_delay_s,
            max_delay_s=settings.lambda_retry_max_delay_s,
        ),
        launch_interval_s=settings.lambda_launch_interval_s,
    )
    return LambdaProvider(
        client,
        ssh_key_name=ssh_key_name,
        private_key_file=key_file,
        known_hosts=PinnedHostKeys(settings.resolved_known_hosts_file),
        ssh_user=settings.ssh_user,
        ssh_port=settings.lambda_ssh_port,
        ssh_timeouts=_ssh_timeouts(settings),
    )


def _ssh(settings: "Settings") -> Provider:
    _require("ssh", ssh_hosts_file=settings.ssh_hosts_file)
    from pydantic import ValidationError

    from provision.ssh_hosts import SshProvider, load_hosts
    from provision.transport.known_hosts import PinnedHostKeys

    assert settings.ssh_hosts_file is not None  # checked by _require
    path = Path(settings.ssh_hosts_file).expanduser()
    try:
        hosts = load_hosts(path)
    except (OSError, ValueError, ValidationError) as exc:  # yaml and json errors are ValueErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidRequest(f"TRAINYARD_SSH_HOSTS_FILE {path} cannot be used: {first}") from None
    return SshProvider(
        hosts,
        state_file=settings.data_dir / "ssh-claims.json",
        known_hosts=PinnedHostKeys(settings.resolved_known_hosts_file),
        ssh_timeouts=_ssh_timeouts(settings),
    )


_FACTORIES: dict[str, Callable[[Settings], Provider]] = {
    "local": _local,
    "lambda": _lambda,
    "ssh": _ssh,
}


def available_providers() -> list[str]:
    return sorted(_FACTORIES)


def get_provider(name: str, settings: "Settings") -> Provider:
    """A new provider client for `name`. Raises InvalidRequest for a provider this build lacks,
    or one whose settings are missing (naming them)."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise InvalidRequest(
            f"provider {name!r} is not available in this service (available: {', '.join(available_providers())})"
        )
    return factory(settings)


class UnavailableProvider(Provider):
    """Stands in for a provider that could not be built (`get_provider` refused it): every call
    raises that refusal, so a run that names it can still be ended and its instances, if it has
    any, stay recorded until the provider is configured again."""

    needs_bootstrap = False

    def __init__(self, name: str, refusal: ProvisionError):
        self.name = name
        self.refusal = refusal

    def instance_types(self) -> list[InstanceType]:
        raise self.refusal

    def launch(self, *, name: str, instance_type: str, region: str) -> Instance:
        raise self.refusal

    def get(self, instance_id: str) -> Instance | None:
        raise self.refusal

    def list(self) -> builtins.list[Instance]:
        raise self.refusal

    def terminate(self, instance_ids: builtins.list[str]) -> None:
        raise self.refusal

    def node(self, instance: Instance) -> Node:
        raise self.refusal
