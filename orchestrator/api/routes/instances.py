"""`GET /api/v1/instances`: every instance the renting providers show (Lambda, when configured):
who owns it (a run, "orphan" or "unknown"), its status, age, price and spend so far.

The provider calls block (one round trip each, with their own timeouts): they run on a thread;
the database is read once for all of them. A provider that cannot be asked is reported in
`providers` with its error, never as a failed request.
"""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request
from sqlalchemy.orm import Session

from orchestrator.api.deps import DbDep
from orchestrator.api.instance_schemas import InstanceList, InstancePublic, ProviderListing
from orchestrator.db.models import aware, utcnow
from orchestrator.instances import Listing, list_renting, owners, spend

router = APIRouter(tags=["instances"])


@router.get("/instances", response_model=InstanceList)
async def list_instances(request: Request, db: DbDep) -> InstanceList:
    """Every instance of every renting provider this service is configured for, newest first
    within each provider; a provider that failed is named in `providers` with its error."""
    listings = await anyio.to_thread.run_sync(list_renting, request.app.state.settings)
    return await db.read(_view, listings)


def _view(session: Session, listings: list[Listing]) -> InstanceList:
    now = utcnow()
    out: list[InstancePublic] = []
    for listing in listings:
        owner_of = owners(session, listing.provider, listing.instances)
        rows = []
        for inst in listing.instances:
            owner = owner_of[inst.id]
            since, cost = spend(owner, now)
            rows.append(
                InstancePublic(
                    provider=listing.provider,
                    id=inst.id,
                    name=inst.name,
                    instance_type=inst.instance_type,
                    region=inst.region or None,
                    status=inst.status.value,
                    owner=owner.label,
                    run_id=owner.run_id,
                    since=since,
                    age_s=(now - aware(since)).total_seconds() if since is not None else None,
                    # the price frozen at launch when trainyard has it, else the provider's now
                    price_cents_per_hour=owner.row.price_cents_per_hour
                    if owner.row is not None
                    else inst.price_cents_per_hour,
                    cost_cents=cost.cents if cost is not None else None,
                )
            )
        out.extend(sorted(rows, key=lambda r: (r.age_s is None, r.age_s or 0.0, r.name)))
    return InstanceList(
        providers=[
            ProviderListing(name=lst.provider, instances=None if lst.error else len(lst.instances), error=lst.error)
            for lst in listings
        ],
        instances=out,
    )
