"""What `GET /api/v1/instances` returns: every instance the renting providers show, with who owns
it and what it has cost so far (orchestrator/instances.py decides both)."""

from __future__ import annotations

from pydantic import BaseModel

from orchestrator.api.schemas import UtcDatetime


class InstancePublic(BaseModel):
    provider: str
    #: the provider's id of the instance
    id: str
    name: str
    instance_type: str
    region: str | None
    #: as the provider shows it now: booting, active, unhealthy, terminating, terminated, preempted
    status: str
    #: the owning run's id; "orphan" (named like trainyard's, owned by no live run: the orphan
    #: sweep terminates it) or "unknown" (not trainyard's: never touched)
    owner: str
    #: the run its name points to, when it is named like trainyard's
    run_id: str | None
    #: since when trainyard knows it: its launch (a run's instance) or when the orphan sweep first
    #: saw it; null when trainyard has no record of it
    since: UtcDatetime | None
    age_s: float | None
    price_cents_per_hour: int
    #: what it has cost so far, by the rule of every instance (orchestrator.costs.instance_cost);
    #: for an orphan, from when it was first seen (a lower bound); null when unknown
    cost_cents: float | None


class ProviderListing(BaseModel):
    name: str
    #: how many instances it showed; null when it could not be asked
    instances: int | None
    #: why it could not be asked (one line), or null
    error: str | None


class InstanceList(BaseModel):
    #: the renting providers this service is configured for, each asked once
    providers: list[ProviderListing]
    instances: list[InstancePublic]
