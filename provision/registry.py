"""Which provider serves a run spec's `compute.provider`, built from the service settings.

One factory per provider name. A provider module is imported only when a run asks for it, so the
service starts even where an optional provider's dependencies are missing. To add a provider,
write `provision/<name>.py` with a `Provider` subclass and add its factory to `_FACTORIES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from provision.base import Provider
from provision.errors import InvalidRequest

if TYPE_CHECKING:  # pragma: no cover - imports for type hints only
    from orchestrator.settings import Settings


def _local(settings: "Settings") -> Provider:
    from provision.local import LocalProvider

    return LocalProvider(settings.runs_dir, python=settings.trainer_python)


_FACTORIES: dict[str, Callable[[Any], Provider]] = {
    "local": _local,
}


def available_providers() -> list[str]:
    return sorted(_FACTORIES)


def get_provider(name: str, settings: "Settings") -> Provider:
    """A new provider client for `name`. Raises InvalidRequest for a provider this build lacks."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise InvalidRequest(
            f"provider {name!r} is not available in this service "
            f"(available: {', '.join(available_providers())})"
        )
    return factory(settings)
