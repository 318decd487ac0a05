"""The controller's worker: claims runs under leases and reconciles each one, pass after pass.

`trainyard serve` runs one Worker in a thread next to the API; `trainyard worker` runs one alone;
any number may run against one PostgreSQL database (or one SQLite file), each under a name of its
own (identity.py: a restart comes back under the same name and takes its runs back at once; a
heartbeat, on a thread of its own, tells the other workers it is alive). Each pass:

0. beat, when one is due (the first registers the name; a name taken over stops the worker);
1. renew the leases it holds (a lease it lost is dropped: another worker owns that run now);
2. claim more runs, oldest first, up to `max_concurrent_runs`, each by an atomic compare-and-set;
3. reconcile each held run (steps.reconcile), and release the lease of a run that needs nothing
   more (ended, and its cleanup done or given up: cleanup.py). An ended run being cleaned up
   takes no slot, so no number of them holds up new runs; a run whose steps keep failing is
   failed (`_give_up`), and one whose cleanup keeps failing is let go, however it fails;
4. move comparisons on (comparing.py: judged here, on a thread of their own, once their baseline
   runs have succeeded);
5. every `orphan_sweep_interval_s`, sweep the renting providers for orphan instances (orphans.py,
   on a thread of its own).

A database that refuses writes (read-only) fails every pass: that is logged in one line when it
starts and one when it ends, and passes back off up to UNWRITABLE_MAX_WAIT_S meanwhile.

Stopping a worker releases its leases but leaves trainers running: they are detached on their
nodes, and the next worker to claim the run carries on from what the node shows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from orchestrator.controller import cleanup, lease
from orchestrator.controller.comparing import Comparisons
from orchestrator.controller.context import RunContext, load_run, log
from orchestrator.controller.identity import Identity
from orchestrator.controller.orphans import OrphanSweep
from orchestrator.controller.policy import Action, classify, one_line
from orchestrator.controller.steps import end_run, reconcile
from orchestrator.controller.tasks import TaskPool
from orchestrator.db.models import Run, RunStatus
from orchestrator.errors import ConflictError, DatabaseUnwritableError, LeaseLostError
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
#: the longest wait between passes while the database refuses writes (doubling up to it)
UNWRITABLE_MAX_WAIT_S = 15.0


@dataclass
class _Held:
    token: str
    errors: int = 0
    handles: dict[str, tuple[float, ProviderInstance, Node]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    store_access: dict = field(default_factory=dict)
    cleanup: dict = field(default_factory=dict)
    #: the run has ended (as of the last pass): only its cleanup is left, and it takes no slot
    ended: bool = False

    def disconnect(self) -> None:
        """Drop the node sessions, so the next pass asks the provider about every node again."""
        for _t, _inst, node in self.handles.values():
            node.close()
        self.handles.clear()


@dataclass
class _WriteOutage:
    """While the database refuses writes: one line when it starts, one when it ends (the first
    pass that gets through), and passes backing off, doubling up to UNWRITABLE_MAX_WAIT_S."""

    owner: str
    interval_s: float
    refused: DatabaseUnwritableError | None = None
    #: until the next pass
    pause_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.pause_s = self.interval_s

    def failed(self, refused: DatabaseUnwritableError) -> None:
        if self.refused is None:
            log.error("worker %s: %s; trying again, up to every %.0f s", self.owner, refused, UNWRITABLE_MAX_WAIT_S)
            self.pause_s = self.interval_s
        self.refused = refused
        self.pause_s = min(UNWRITABLE_MAX_WAIT_S, self.pause_s * 2)

    def passed(self) -> None:
        if self.refused is not None:
            log.warning("worker %s: the database takes writes again", self.owner)
        self.refused, self.pause_s = None, self.interval_s


class Worker:
    """Drives runs through their lifecycle. Not thread-safe: one thread calls it."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], providers: dict[str, Provider] | None = None
    ):
        self.settings = settings
        self.factory = session_factory
        #: this process's worker name (raises ConflictError when a live process holds the name)
        self.identity = Identity.take(settings, session_factory)
        self.owner = self.identity.name
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
        """Reconcile every `reconcile_interval_s` until `stop` is set; then release the leases.
        Raises ConflictError when another process took this worker's name over."""
        log.info("worker %s started", self.owner)
        beating = threading.Thread(target=self._beat_forever, args=(stop,), name=f"{self.owner}-heartbeat", daemon=True)
        beating.start()
        outage = _WriteOutage(self.owner, self.settings.reconcile_interval_s)
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    self.reconcile_once()
                except Exception as exc:  # the database may be briefly away: the next pass retries
                    if self.identity.lost:
                        raise
                    refused = DatabaseUnwritableError.from_exception(exc)
                    if refused is None:
                        log.exception("worker %s: reconcile pass failed", self.owner)
                    else:
                        outage.failed(refused)
                        self.identity.beat_soon()  # the next pass starts with a write: it tells when they work
                else:
                    outage.passed()
                stop.wait(max(0.0, outage.pause_s - (time.monotonic() - started)))
        finally:
            stop.set()  # ends the heartbeat thread too, when the loop ended on an error
            beating.join(timeout=10)
            self.close()
            log.info("worker %s stopped", self.owner)

    def _beat_forever(self, stop: threading.Event) -> None:
        """The heartbeat on a thread of its own: a pass blocked on a slow node is not a dead worker."""
        while not stop.wait(self.settings.worker_heartbeat_s / 2):
            try:
                self.identity.beat(self.factory, when_due=True)
            except Exception:  # noqa: BLE001 - the pass meets the same error and reports it
                log.debug("worker %s: heartbeat failed", self.owner, exc_info=True)

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
        try:
            self.identity.retire(self.factory)
        except Exception:  # noqa: BLE001 - the heartbeat expires by itself
            log.warning("worker %s: could not retire its name", self.owner)
        for provider in self.providers.values():
            provider.close()

    def reconcile_once(self) -> None:
        """One pass: beat, renew, claim, reconcile each held run."""
        self._beat()
        self._renew()
        self._claim()
        for run_id in list(self._held):
            self._reconcile(run_id)
        self.comparisons.reconcile_once()
        self.orphans.tick()

    # -- leases -----------------------------------------------------------------------------------
    def _beat(self) -> None:
        self.identity.beat(self.factory, when_due=True)
        if self.identity.lost:
            # presumed dead (paused past the heartbeat) and the name taken over elsewhere: the new
            # holder freed our leases, so nothing held is ours; acting under the name would be two
            # processes in one name
            for run_id in list(self._held):
                self._drop(run_id)
            raise ConflictError(f"worker {self.owner}: another process took this worker's name over; stopping")

    def _renew(self) -> None:
        for run_id, held in list(self._held.items()):
            if not lease.renew(self.factory, run_id, held.token, self.settings.lease_s):
                log.warning("worker %s: lost the lease on run %s", self.owner, run_id)
                self._drop(run_id)

    def _claim(self) -> None:
        room = self.settings.max_concurrent_runs - sum(1 for held in self._held.values() if not held.ended)
        if room <= 0:
            return
        # ask for more than there is room for: others may win some of them
        for run_id in lease.claimable_run_ids(self.factory, room * 2 + len(self._held)):
            if room <= 0:
                break
            if run_id in self._held:
                continue
            token = lease.acquire(self.factory, run_id, self.owner, self.settings.lease_s)
            if token is None:
                continue
            log.info("worker %s: claimed run %s", self.owner, run_id)
            self._held[run_id] = _Held(token)
            room -= 1
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
        held.ended = RunStatus(run.status).is_terminal
        name = run.provider  # the spec's compute.provider, kept in a column: a spec that no longer
        provider = self.providers.get(name)  # reads (a bug, a hand-edited row) still ends cleanly
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
            cleanup=held.cleanup,
        )

    def _give_up(self, run_id: str, held: _Held, exc: Exception) -> None:
        """Steps of the run keep failing. A live run is failed; an ended one (its cleanup failing
        outside any one step) has what is left given up (cleanup.give_up_all) and is let go."""
        reason = f"controller error after {held.errors} attempts: {one_line(exc)}"
        try:
            run = load_run(self.factory, run_id)
            if run is None:
                self._drop(run_id)
            elif RunStatus(run.status).is_terminal:
                cleanup.give_up_all(self._refusing_context(run, held, reason), run, reason)
                lease.release(self.factory, run_id, held.token)
                self._drop(run_id)
            else:
                self._fail(run, held, reason)
        except LeaseLostError:
            self._drop(run_id)
        except Exception:  # noqa: BLE001 - logged with its traceback; a later pass tries again
            log.exception("run %s: could not record the failure", run_id)

    def _fail(self, run: Run, held: _Held, reason: str) -> None:
        try:
            ctx = self._context(run.id, held)
            if ctx is not None:
                end_run(ctx, run, RunStatus.failed, reason)
        except LeaseLostError:
            raise
        except Exception as again:  # noqa: BLE001 - the provider or a step failed again
            # record the failure without asking the provider: its instances stay recorded and
            # live, so the ended run stays claimable and its cleanup terminates them
            log.warning("run %s: ending it failed (%s); recording the failure alone", run.id, one_line(again))
            end_run(self._refusing_context(run, held, one_line(again)), run, RunStatus.failed, reason)

    def _refusing_context(self, run: Run, held: _Held, why: str) -> RunContext:
        """A context whose provider refuses every call: for writes that must not wait on it."""
        return self._make_context(run.id, held, UnavailableProvider(run.provider, ProvisionError(why)))
