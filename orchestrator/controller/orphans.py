"""The orphan sweep: no machine named like trainyard's bills without a live run owning it.

Every `orphan_sweep_interval_s` (0: never) a worker lists the instances of each provider that
rents machines (orchestrator/instances.py says which, and why not `local` or `ssh`). An instance
whose name starts `ty-` and that no live run owns (orchestrator.instances.Owner: its run ended, or
the database does not know the run, and no recorded instance row that is not terminated holds it)
is an orphan:

1. first seen (billing: not booting): recorded (an OrphanInstance row; a warning, and an event on
   its run when the run is known). Nothing is done yet: an operator, or a run, may still claim it;
2. once `orphan_grace_s` has passed since it was first seen: terminated (idempotent; asked again
   each sweep until the provider shows it going);
3. once the provider shows it gone (or no longer lists it): booked, a cost entry of kind "orphan"
   on its run (or on no run when the run is unknown), priced from when it was first seen until
   the terminate request: a lower bound (it billed unseen before; see instances.orphan_cost).

An instance whose name does not start `ty-` is never touched, and neither is one a recorded
instance row holds (that run's `cleanup` terminates it, retrying each pass: the sweep never races
it), until that run's cleanup gives up on it (controller/cleanup.py marks the row
`cleanup_gave_up_at`): then the sweep asks the provider to terminate it on every sweep (no grace:
its run already wanted it gone) and, once the provider shows it gone or lists it no more, marks
the row terminated and books it on its run by the rule of every instance (not as an orphan). An instance a failed adoption missed when its run ended (lifecycle.adopt_unrecorded) is found
here by its name, terminated and booked on its run: that is what makes ending a run safe while
the provider fails.

Several workers may sweep at once: the row is unique per (provider, instance id), so only one
records it; the terminate request is idempotent; and booking is a guarded UPDATE (`terminated_at`
still unset), so only one books it. The sweep runs on a thread of its own: a provider that is slow
or down never holds up the worker's passes.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.controller.context import log
from orchestrator.controller.lifecycle import book_instance
from orchestrator.controller.policy import one_line
from orchestrator.db.models import CostEntry, Instance, OrphanInstance, aware, utcnow
from orchestrator.db.session import transaction
from orchestrator.instances import Owner, orphan_cost, owners, renting_providers
from orchestrator.runs import INSTANCE_PREFIX, add_event
from orchestrator.settings import Settings
from provision.base import Instance as ProviderInstance
from provision.base import InstanceStatus, Provider
from provision.errors import ProvisionError
from provision.registry import get_provider


class OrphanSweep:
    """The worker's sweep. `tick` (on the worker's thread, every pass) starts a sweep on a thread
    when one is due; `sweep` does one at once (what the thread runs; tests call it directly)."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session], providers: dict[str, Provider]):
        self.settings = settings
        self.factory = factory
        #: the worker's providers by name: ones missing are built here, on the worker's thread
        self.providers = providers
        self._next = 0.0  # monotonic time of the next sweep; the first is at once
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """Start a sweep on its thread if one is due and none is running."""
        interval = self.settings.orphan_sweep_interval_s
        if interval <= 0 or time.monotonic() < self._next:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._next = time.monotonic() + interval
        providers = self._renting()
        if providers:
            self._thread = threading.Thread(target=self.sweep, args=(providers,), name="trainyard-orphans", daemon=True)
            self._thread.start()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for a sweep in flight (tests)."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _renting(self) -> list[Provider]:
        out = []
        for name in renting_providers(self.settings):
            provider = self.providers.get(name)
            if provider is None:
                try:
                    provider = self.providers[name] = get_provider(name, self.settings)
                except ProvisionError as exc:
                    log.warning("orphan sweep: cannot use provider %s: %s", name, one_line(exc))
                    continue
            out.append(provider)
        return out

    # -- one sweep --------------------------------------------------------------------------------
    def sweep(self, providers: list[Provider]) -> None:
        for provider in providers:
            try:
                self.sweep_provider(provider)
            except Exception:  # noqa: BLE001 - the database may be briefly away; the next sweep retries
                log.exception("orphan sweep of provider %s failed", provider.name)

    def sweep_provider(self, provider: Provider) -> None:
        try:
            listed = provider.list()
        except ProvisionError as exc:
            log.warning("orphan sweep: cannot list the instances of %s: %s", provider.name, one_line(exc))
            return
        now = utcnow()
        ours = [i for i in listed if i.name.startswith(INSTANCE_PREFIX)]  # never any other
        with self.factory() as session:
            owner_of = owners(session, provider.name, ours)
            unbooked = session.scalars(
                select(OrphanInstance).where(
                    OrphanInstance.provider == provider.name, OrphanInstance.cost_entry_id.is_(None)
                )
            ).all()
            given_up = session.scalars(
                select(Instance).where(
                    Instance.provider == provider.name,
                    Instance.cleanup_gave_up_at.is_not(None),
                    Instance.terminated_at.is_(None),
                )
            ).all()
        for inst in ours:
            self._one(provider, inst, owner_of[inst.id])
        shown = {i.id: i for i in listed}
        for row in unbooked:
            if row.provider_instance_id not in shown:  # the provider has forgotten it: gone
                self._book(row.id, now)
        for instance in given_up:
            self._given_up(provider, instance, shown.get(str(instance.provider_instance_id)))

    def _one(self, provider: Provider, inst: ProviderInstance, owner: Owner) -> None:
        row = owner.orphan
        if row is not None and row.cost_entry_id is not None:
            return  # booked: done
        if owner.owned:
            if row is not None:
                self._release(row)
            return
        if inst.status.is_gone:
            if row is not None:
                self._book(row.id, utcnow())
            return
        if row is None:
            if inst.status in (InstanceStatus.terminating, InstanceStatus.booting):
                # terminating: someone ended it, it no longer bills; booting: it does not bill
                # yet, so it is first seen when it does (what makes the booked cost a lower bound)
                return
            row = self._first_sight(provider, inst, owner)
            if row is None:
                return  # another worker saw it first; it acts on it too
        if row.terminate_requested_at is None and (utcnow() - aware(row.first_seen_at)).total_seconds() >= (
            self.settings.orphan_grace_s
        ):
            self._terminate(provider, row)

    def _first_sight(self, provider: Provider, inst: ProviderInstance, owner: Owner) -> OrphanInstance | None:
        known = owner.run_id if owner.run_status is not None else None  # the run, if the database has it
        row = OrphanInstance(
            provider=provider.name,
            provider_instance_id=inst.id,
            name=inst.name,
            instance_type=inst.instance_type,
            region=inst.region,
            price_cents_per_hour=inst.price_cents_per_hour,
            billing_minute_s=self.settings.billing_minute_s,
            run_id=known,
            first_seen_at=utcnow(),
        )
        why = f"run {known} has ended" if known else "no run of this database has its name"
        grace = self.settings.orphan_grace_s
        try:
            with transaction(self.factory) as session:
                session.add(row)
                session.flush()  # the unique index: a second worker fails here
                if known:
                    add_event(
                        session,
                        known,
                        "orphan",
                        f"instance {inst.name} ({inst.instance_type}, {inst.price_cents_per_hour} c/h) is "
                        f"{inst.status.value} but owned by no live run; terminating it in {grace:g} s",
                    )
        except IntegrityError:
            return None
        log.warning(
            "orphan sweep: %s instance %s (%s, %s, %s c/h) is %s and owned by no live run (%s); "
            "terminating it after %g s",
            provider.name,
            inst.name,
            inst.id,
            inst.instance_type,
            inst.price_cents_per_hour,
            inst.status.value,
            why,
            grace,
        )
        return row

    def _terminate(self, provider: Provider, row: OrphanInstance) -> None:
        asked = utcnow()  # just before the request, as for a run's instances (lifecycle.py)
        try:
            provider.terminate([row.provider_instance_id])
        except ProvisionError as exc:
            log.warning("orphan sweep: terminating %s failed, retrying next sweep: %s", row.name, one_line(exc))
            return
        with transaction(self.factory) as session:
            won = _guarded(
                session,
                update(OrphanInstance)
                .where(OrphanInstance.id == row.id, OrphanInstance.terminate_requested_at.is_(None))
                .values(terminate_requested_at=asked),
            )
            if won and row.run_id:
                add_event(session, row.run_id, "orphan", f"orphan instance {row.name} is being terminated")
        if won:
            log.warning("orphan sweep: terminating orphan instance %s (%s)", row.name, row.provider_instance_id)

    def _book(self, row_id: int, now: datetime) -> None:
        with transaction(self.factory) as session:
            if not _guarded(
                session,
                update(OrphanInstance)
                .where(OrphanInstance.id == row_id, OrphanInstance.terminated_at.is_(None))
                .values(terminated_at=now),
            ):
                return  # another worker booked it
            row = session.get(OrphanInstance, row_id, populate_existing=True)
            assert row is not None  # the UPDATE above just matched it
            cost = orphan_cost(row, now)
            entry = CostEntry(
                run_id=row.run_id,
                kind="orphan",
                cents=cost.cents,
                quantity=float(cost.minutes),
                unit="minute",
                description=f"orphan {row.name} ({row.instance_type}, {row.region or 'no region'}) at "
                f"{row.price_cents_per_hour} c/h, from when it was first seen (a lower bound)",
            )
            session.add(entry)
            session.flush()
            row.cost_entry_id = entry.id
            if row.run_id:
                add_event(
                    session,
                    row.run_id,
                    "orphan",
                    f"orphan instance {row.name} terminated ({cost.minutes} billed minutes, at least)",
                )
        log.warning(
            "orphan sweep: orphan instance %s is gone; booked %d minutes (%.2f cents) on %s",
            row.name,
            cost.minutes,
            cost.cents,
            f"run {row.run_id}" if row.run_id else "no run",
        )

    def _given_up(self, provider: Provider, row: Instance, inst: ProviderInstance | None) -> None:
        """An instance its run's cleanup gave up on: terminate it until the provider shows it
        gone (or no longer lists it), then mark it terminated and book it on its run."""
        if inst is not None and not inst.status.is_gone:
            asked = utcnow()
            try:
                provider.terminate([str(row.provider_instance_id)])
            except ProvisionError as exc:
                log.warning("orphan sweep: terminating %s failed, retrying next sweep: %s", row.name, one_line(exc))
                return
            with transaction(self.factory) as session:
                _guarded(
                    session,
                    update(Instance)
                    .where(Instance.id == row.id, Instance.terminate_requested_at.is_(None))
                    .values(terminate_requested_at=asked),
                )
            return
        now = utcnow()
        with transaction(self.factory) as session:
            if not _guarded(
                session,
                update(Instance)
                .where(Instance.id == row.id, Instance.terminated_at.is_(None))
                .values(terminated_at=now, status="terminated"),
            ):
                return  # another worker closed it
            closed = session.get(Instance, row.id, populate_existing=True)
            assert closed is not None  # the UPDATE above just matched it
            minutes = book_instance(session, closed, now)
            add_event(
                session,
                closed.run_id,
                "orphan",
                f"instance {closed.name} terminated by the orphan sweep after the run's cleanup gave up on it "
                f"({minutes} billed minutes)",
            )
        log.warning("orphan sweep: %s, given up by run %s's cleanup, is gone; booked it", row.name, row.run_id)

    def _release(self, row: OrphanInstance) -> None:
        """A run holds it after all (recorded since it was first seen): not an orphan, unless we
        already asked to terminate it (then it is booked as one when gone)."""
        with transaction(self.factory) as session:
            _guarded(
                session,
                delete(OrphanInstance).where(
                    OrphanInstance.id == row.id,
                    OrphanInstance.terminate_requested_at.is_(None),
                    OrphanInstance.cost_entry_id.is_(None),
                ),
            )


def _guarded(session: Session, statement: Any) -> bool:
    """Run an UPDATE or DELETE whose WHERE is its guard; True when it matched (we won)."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount == 1
