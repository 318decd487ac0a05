"""`GET /api/v1/instance-types`: what a provider offers now (type, GPUs, price, regions with capacity).

A plain `def` route: the provider call is blocking network I/O (one API round trip, with its own
timeout), so FastAPI runs it in its thread pool instead of on the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from orchestrator.api.schemas import InstanceTypeList, InstanceTypePublic
from orchestrator.errors import InvalidSpecError, TrainyardError
from orchestrator.settings import Settings
from orchestrator.spec import PROVIDERS
from provision.base import InstanceType
from provision.errors import InvalidCredentials, InvalidRequest, ProvisionError
from provision.registry import get_provider

router = APIRouter(tags=["instance types"])


class ProviderUnavailableError(TrainyardError):
    """The provider could not be asked (unreachable, refused our key, failed on its side)."""

    http_status = 502


def provider_instance_types(provider: str, settings: Settings) -> list[InstanceType]:
    """What `provider` offers now (one blocking round trip). InvalidSpecError (422) for a provider
    this service lacks or has no settings for; ProviderUnavailableError (502) when it cannot be
    asked. Shared with `POST /plans`."""
    if provider not in PROVIDERS:
        raise InvalidSpecError(f"provider: must be one of {', '.join(PROVIDERS)}", field="provider")
    try:
        built = get_provider(provider, settings)
    except InvalidRequest as exc:  # a setting is missing: the message names the variable
        raise InvalidSpecError(str(exc), field="provider") from exc
    try:
        return built.instance_types()
    except InvalidCredentials as exc:
        raise ProviderUnavailableError(f"provider {provider} refused the API key: {exc}") from exc
    except ProvisionError as exc:
        raise ProviderUnavailableError(f"provider {provider} could not list instance types: {exc}") from exc
    finally:
        built.close()


@router.get("/instance-types", response_model=InstanceTypeList)
def list_instance_types(
    request: Request,
    provider: Annotated[str, Query(description="local, lambda or ssh")] = "lambda",
) -> InstanceTypeList:
    types = provider_instance_types(provider, request.app.state.settings)
    return InstanceTypeList(
        provider=provider,
        instance_types=[
            InstanceTypePublic(
                name=t.name,
                description=t.description,
                gpus=t.gpus,
                gpu_description=t.gpu_description,
                price_cents_per_hour=t.price_cents_per_hour,
                regions_with_capacity=list(t.regions_with_capacity),
            )
            for t in sorted(types, key=lambda t: (t.price_cents_per_hour, t.name))
        ],
    )
