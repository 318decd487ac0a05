"""Every machine a provider shows, and who owns it: shared by the orphan sweep
(controller/orphans.py) and `GET /api/v1/instances` (`trainyard instances`).

Only providers that rent machines by the hour are asked (`RENTING`): `lambda`, once its API key is
set. Not `local`: its "instances" are processes on this machine, under run directories, not named
machines that bill. Not `ssh`: those are the user's own hosts, which trainyard only borrows; what
to do with them is never decided from a name.

Who owns a listed instance, in this order:
- a recorded instance row (same provider and provider instance id): that row's run; while the row
  is not terminated, the run's own cleanup terminates it, so the sweep never races it;
- a name of trainyard's form (`ty-<run>-<rank>`, orchestrator.runs.instance_name) whose run is live
  (not terminal): that run (being placed, or launched and not recorded yet: placement and
  `end_run` find it by its name);
- any other name starting `ty-`: an orphan (its run ended, or this database does not know it);
- any other name: not trainyard's ("unknown"); never touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.costs import InstanceCost, instance_cost
from orchestrator.db.models import Instance, OrphanInstance, Run, RunStatus
from orchestrator.runs import INSTANCE_PREFIX, run_id_of_instance
from provision.base import Instance as ProviderInstance
from provision.errors import ProvisionError
from provision.registry import get_provider

if TYPE_CHECKING:  # pragma: no cover - type hints only
    from orchestrator.settings import Settings

#: the providers that rent machines: the ones the sweep and `trainyard instances` ask
RENTING = ("lambda",)


def renting_providers(settings: Settings) -> list[str]:
    """The renting providers this service is configured for (Lambda: its API key is set)."""
    key = settings.lambda_api_key
    return ["lambda"] if key is not None and key.get_secret_value().strip() else []


@dataclass(frozen=True)
class Owner:
    """Who owns one listed instance (see the module doc)."""

    #: the run its name points to (None: not a name of trainyard's form)
    run_id: str | None
    #: that run's status; None when the database does not know the run
    run_status: str | None
    #: the recorded instance row of this provider instance, if any
    row: Instance | None
    #: its orphan record, if the sweep has seen it
    orphan: OrphanInstance | None
    #: its name starts with trainyard's prefix
    ours: bool

    @property
    def run_is_live(self) -> bool:
        return self.run_status is not None and not RunStatus(self.run_status).is_terminal

    @property
    def owned(self) -> bool:
        """A live run or a not-yet-terminated row holds it: the sweep leaves it alone."""
        return (self.row is not None and self.row.terminated_at is None) or self.run_is_live

    @property
    def label(self) -> str:
        """The owning run's id, "orphan" (trainyard's name, no live owner) or "unknown"."""
        if self.row is not None:
            return self.row.run_id
        if self.run_is_live and self.run_id is not None:
            return self.run_id
        return "orphan" if self.ours else "unknown"


def owners(session: Session, provider: str, listed: Iterable[ProviderInstance]) -> dict[str, Owner]:
    """Who owns each of `provider`'s listed instances, by provider instance id (three queries)."""
    listed = list(listed)
    ids = [i.id for i in listed]
    run_ids = {i.name: run_id_of_instance(i.name) for i in listed}
    rows: dict[str, Instance] = {}
    orphans: dict[str, OrphanInstance] = {}
    statuses: dict[str, str] = {}
    if ids:
        # newest last, so a provider id recorded twice (never, but) maps to its latest row
        for row in session.scalars(
            select(Instance)
            .where(Instance.provider == provider, Instance.provider_instance_id.in_(ids))
            .order_by(Instance.id)
        ):
            rows[str(row.provider_instance_id)] = row
        for orphan in session.scalars(
            select(OrphanInstance).where(
                OrphanInstance.provider == provider, OrphanInstance.provider_instance_id.in_(ids)
            )
        ):
            orphans[orphan.provider_instance_id] = orphan
    wanted = {r for r in run_ids.values() if r is not None}
    if wanted:
        statuses = {rid: st for rid, st in session.execute(select(Run.id, Run.status).where(Run.id.in_(wanted)))}
    out = {}
    for inst in listed:
        run_id = run_ids[inst.name]
        out[inst.id] = Owner(
            run_id=run_id,
            run_status=statuses.get(run_id) if run_id is not None else None,
            row=rows.get(inst.id),
            orphan=orphans.get(inst.id),
            ours=inst.name.startswith(INSTANCE_PREFIX),
        )
    return out


@dataclass
class _OrphanBill:
    """An orphan as `instance_cost` reads an instance: billed from when it was first seen."""

    active_at: datetime | None
    terminate_requested_at: datetime | None
    terminated_at: datetime | None
    price_cents_per_hour: int
    billing_minute_s: float


def orphan_cost(row: OrphanInstance, now: datetime) -> InstanceCost:
    """What an orphan has cost up to `now`, by the rule of every instance (costs.instance_cost),
    from when the sweep first saw it: the earliest moment we know it billed, so a lower bound (it
    may have run, unseen, since up to a sweep interval before, or for long if it is older than
    the service's records)."""
    return instance_cost(
        _OrphanBill(
            row.first_seen_at,
            row.terminate_requested_at,
            row.terminated_at,
            row.price_cents_per_hour,
            row.billing_minute_s,
        ),
        now,
    )


def spend(owner: Owner, now: datetime) -> tuple[datetime | None, InstanceCost | None]:
    """(since when we know the instance, what it has cost so far) for a listed instance; both
    None when trainyard has no record of it (not its own, or not recorded yet)."""
    if owner.row is not None:
        return owner.row.launched_at, instance_cost(owner.row, now)
    if owner.orphan is not None:
        return owner.orphan.first_seen_at, orphan_cost(owner.orphan, now)
    return None, None


@dataclass
class Listing:
    """One provider's instances as it showed them, or why it could not be asked."""

    provider: str
    instances: list[ProviderInstance] = field(default_factory=list)
    error: str | None = None


def list_renting(settings: Settings) -> list[Listing]:
    """Every renting provider's instances (one blocking round trip each). A provider that cannot
    be built or asked is reported in its Listing, never raised."""
    out = []
    for name in renting_providers(settings):
        try:
            provider = get_provider(name, settings)
        except ProvisionError as exc:
            out.append(Listing(name, error=_first_line(exc)))
            continue
        try:
            out.append(Listing(name, provider.list()))
        except ProvisionError as exc:
            out.append(Listing(name, error=_first_line(exc)))
        finally:
            provider.close()
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
