"""The controller's worker: claims runs under leases and reconciles each one, pass after pass.

`trainyard serve` runs one Worker in a thread next to the API; `trainyard worker` runs one alone;
any number may run against one PostgreSQL database (or one SQLite file). Each pass:

1. renew the leases it holds (a lease it lost is dropped: another worker owns that run now);
2. claim more runs, oldest first, up to `max_concurrent_runs`, each by an atomic compare-and-set;
3. reconcile each held run (steps.reconcile), and release the lease of a run that needs nothing
   more (ended, and every instance confirmed terminated);
4. move comparisons on (comparing.py: judged here, on a thread of their own, once their baseline
   runs have succeeded);
5. every `orphan_sweep_interval_s`, sweep the renting providers for orphan instances (orphans.py,
   on a thread of its own).

Stopping a worker releases its leases but leaves trainers running: they are detached on their
nodes, and the next worker to claim the run carries on from what the node shows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from orchestrator.controller import lease
from orchestrator.controller.comparing import Comparisons
from orchestrator.controller.context import RunContext, load_run, log, spec_of
from orchestrator.controller.orphans import OrphanSweep
from orchestrator.controller.policy import Action, classify, one_line
from orchestrator.controller.steps import end_run, reconcile
from orchestrator.controller.tasks import TaskPool
from orchestrator.db.models import RunStatus
from orchestrator.errors import LeaseLostError
from orchestrator.runs import add_event
from orchestrator.settings import Settings
from provision.base import Instance as ProviderInstance
from provision.base import Provider
from provision.errors import ProvisionError
from provision.node import Node
from provision.registry import UnavailableProvider, get_provider
from provision.wheels import WheelCache

#: consecutive failed steps on one run (policy.Action.COUNT; RETRY errors mean "state unknown"
#: and are retried forever) before the worker fails the run
MAX_CONSECUTIVE_ERRORS = 10


@dataclass
class _Held:
    token: str
    errors: int = 0
    handles: dict[str, tuple[float, ProviderInstance, Node]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    store_access: dict = field(default_factory=dict)

    def disconnect(self) -> None:
        """Drop the node sessions, so the next pass asks the provider about every node again."""
        for _t, _inst, node in self.handles.values():
            node.close()
        self.handles.clear()


class Worker:
    """Drives runs through their lifecycle. Not thread-safe: one thread calls it."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], providers: dict[str, Provider] | None = None
    ):
        self.settings = settings
        self.factory = session_factory
        self.owner = settings.worker_id
        #: providers by name; given ones are used as they are, others built from the settings
        self.providers: dict[str, Provider] = dict(providers or {})
        self._held: dict[str, _Held] = {}
        #: threads for placement and bootstrap (placement.py, bootstrapping.py), so a pass never blocks on them
        self.tasks = TaskPool()
        self.wheels = WheelCache(settings.wheel_cache_dir)
        self.comparisons = Comparisons(settings, session_factory, self.owner)
        self.orphans = OrphanSweep(settings, session_factory, self.providers)

    @property
    def held_runs(self) -> list[str]:
        return list(self._held)

    # -- the loop ---------------------------------------------------------------------------------
    def run_forever(self, stop: threading.Event) -> None:
        """Reconcile every `reconcile_interval_s` until `stop` is set; then release the leases."""
        log.info("worker %s started", self.owner)
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    self.reconcile_once()
                except Exception:  # noqa: BLE001 - the database may be briefly away; the next pass retries
                    log.exception("worker %s: reconcile pass failed", self.owner)
                stop.wait(max(0.0, self.settings.reconcile_interval_s - (time.monotonic() - started)))
        finally:
            self.close()
            log.info("worker %s stopped", self.owner)

    def close(self) -> None:
        """Release every lease (so others can take the runs at once) and the provider clients."""
        self.tasks.close()
        self.comparisons.close()
        for run_id, held in list(self._held.items()):
            held.disconnect()
            try:
                lease.release(self.factory, run_id, held.token)
            except Exception:  # noqa: BLE001 - the lease expires by itself
                log.warning("worker %s: could not release the lease on %s", self.owner, run_id)
        self._held.clear()
        for provider in self.providers.values():
            provider.close()

    def reconcile_once(self) -> None:
        """One pass: renew, claim, reconcile each held run."""
        self._renew()
        self._claim()
        for run_id in list(self._held):
            self._reconcile(run_id)
        self.comparisons.reconcile_once()
        self.orphans.tick()

    # -- leases -----------------------------------------------------------------------------------
    def _renew(self) -> None:
        for run_id, held in list(self._held.items()):
            if not lease.renew(self.factory, run_id, held.token, self.settings.lease_s):
                log.warning("worker %s: lost the lease on run %s", self.owner, run_id)
                self._drop(run_id)

    def _claim(self) -> None:
        room = self.settings.max_concurrent_runs - len(self._held)
        if room <= 0:
            return
        # ask for more than there is room for: others may win some of them
        for run_id in lease.claimable_run_ids(self.factory, room * 2 + len(self._held)):
            if len(self._held) >= self.settings.max_concurrent_runs:
                break
            if run_id in self._held:
                continue
            token = lease.acquire(self.factory, run_id, self.owner, self.settings.lease_s)
            if token is None:
                continue
            log.info("worker %s: claimed run %s", self.owner, run_id)
            self._held[run_id] = _Held(token)
            try:
                # who drove a run, and when it changed hands, is what an operator asks first
                with lease.fenced(self.factory, run_id, token, self.settings.lease_s) as (s, _r):
                    add_event(s, run_id, "worker", f"worker {self.owner} took the run")
            except LeaseLostError:
                self._drop(run_id)

    def _drop(self, run_id: str) -> None:
        """Stop working on a run (its lease lost or released): its tasks and sessions end."""
        held = self._held.pop(run_id, None)
        self.tasks.cancel(run_id, wait_s=0)
        if held is not None:
            held.disconnect()

    # -- one run ----------------------------------------------------------------------------------
    def _reconcile(self, run_id: str) -> None:
        held = self._held[run_id]
        try:
            ctx = self._context(run_id, held)
            done = True if ctx is None else reconcile(ctx)
            held.errors = 0
        except Exception as exc:  # noqa: BLE001 - policy.classify decides what any error means
            if isinstance(exc, ProvisionError):
                # a node or the provider failed us: ask the provider afresh about every node next
                # pass, so a node that died is seen as such at once (not when the cache expires)
                held.disconnect()
            action = classify(exc)
            if action is Action.LEASE_LOST:
                log.warning("worker %s: lost the lease on run %s mid-step", self.owner, run_id)
                self._drop(run_id)
            elif action is Action.RETRY:  # state unknown: do nothing destructive, look again next pass
                log.warning("run %s: %s; retrying next pass", run_id, one_line(exc))
            else:  # steps.reconcile acted on RECOVER and FAIL itself; what reaches here counts
                self._count_error(run_id, held, exc)
            return
        if done:
            lease.release(self.factory, run_id, held.token)
            self._drop(run_id)

    def _count_error(self, run_id: str, held: _Held, exc: Exception) -> None:
        """A step failed in a way retrying may not fix; fail the run if it keeps happening."""
        held.errors += 1
        log.warning(
            "run %s: step failed (%d in a row): %s",
            run_id,
            held.errors,
            one_line(exc),
            exc_info=not isinstance(exc, ProvisionError),
        )
        if held.errors >= MAX_CONSECUTIVE_ERRORS:
            self._give_up(run_id, held, exc)

    def _context(self, run_id: str, held: _Held) -> RunContext | None:
        """The run's context, or None when the run is gone. A run whose provider this service
        cannot build (a spec naming one it was not configured for) is ended: through end_run, with
        a provider that can only refuse, so instances it may hold stay recorded and claimable."""
        run = load_run(self.factory, run_id)
        if run is None:
            return None
        name = spec_of(run).compute.provider
        provider = self.providers.get(name)
        if provider is None:
            try:
                provider = get_provider(name, self.settings)
            except ProvisionError as exc:
                if not RunStatus(run.status).is_terminal:
                    end_run(
                        self._make_context(run_id, held, UnavailableProvider(name, exc)),
                        run,
                        RunStatus.failed,
                        one_line(exc),
                    )
                return None
            self.providers[name] = provider
        return self._make_context(run_id, held, provider)

    def _make_context(self, run_id: str, held: _Held, provider: Provider) -> RunContext:
        return RunContext(
            run_id,
            held.token,
            self.settings,
            self.factory,
            provider,
            held.handles,
            tasks=self.tasks,
            wheels=self.wheels,
            attempts=held.attempts,
            store_access=held.store_access,
        )

    def _give_up(self, run_id: str, held: _Held, exc: Exception) -> None:
        reason = f"controller error after {held.errors} attempts: {one_line(exc)}"
        try:
            ctx = self._context(run_id, held)
            run = load_run(self.factory, run_id)
            if ctx is not None and run is not None and not RunStatus(run.status).is_terminal:
                try:
                    end_run(ctx, run, RunStatus.failed, reason)
                except LeaseLostError:
                    raise
                except Exception as again:  # noqa: BLE001 - the provider or a step failed again
                    # record the failure without asking the provider: its instances stay recorded
                    # and live, so the ended run stays claimable and `cleanup` terminates them
                    log.warning("run %s: ending it failed (%s); recording the failure alone", run_id, one_line(again))
                    refusing = UnavailableProvider(ctx.provider.name, ProvisionError(one_line(again)))
                    end_run(self._make_context(run_id, held, refusing), run, RunStatus.failed, reason)
        except LeaseLostError:
            self._drop(run_id)
        except Exception:  # noqa: BLE001 - logged with its traceback; a later pass tries again
            log.exception("run %s: could not record the failure", run_id)
