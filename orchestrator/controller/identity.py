"""Who a worker is: a name that outlives its process, held by one live process at a time.

The name is what a run's lease records as its owner (lease.py). The process holding it has a row
in `workers` with a token of its own and a heartbeat, renewed every settings.worker_heartbeat_s;
the row expires MISSED_BEATS beats after the last one.

- A restart takes its runs back at once. `serve` or `worker` started again on the same data dir
  comes back under the same name (settings.worker_id, or by default `<host>-<n>`, the lowest n no
  live process there holds) and takes the name over without waiting: a file lock in the data dir,
  held for the process's life and let go by the OS when it dies (kill -9 included), proves the
  predecessor is gone. Taking a name over frees the leases it held, so the first pass claims them
  again, each under a new token: anything the old process left behind is fenced out.
- A dead worker's runs are taken sooner. Once its heartbeat has expired, the leases it holds count
  as free (lease.is_free), however long they still had to run.
- Never two live processes under one name. The file lock refuses a second one on the same data
  dir (a default name moves on to the next n); the heartbeat refuses one on another host or data
  dir while the holder's is fresh (ConflictError: give it another name).
- A process paused past its heartbeat (SIGSTOP) whose name was taken over elsewhere finds its
  token gone at its next beat: `lost` is set, and the worker stops.

The heartbeat says "the process is alive", the lease "its passes are getting on": a pass blocked
longer than the lease still loses the run, heartbeat or not.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from datetime import timedelta

from filelock import FileLock, Timeout
from sqlalchemy import delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.controller.lease import compare_and_set
from orchestrator.db.models import ComparisonRequest, Run, WorkerRecord, aware, utcnow
from orchestrator.db.session import transaction
from orchestrator.errors import ConflictError, DatabaseUnwritableError
from orchestrator.settings import Settings

#: heartbeats a worker may miss before it counts as dead
MISSED_BEATS = 3
#: default names tried on one data dir (`<host>-0` ... ): far more workers than one machine runs
_DEFAULT_SLOTS = 1000


class Identity:
    """This process's worker name. `take` it, then `beat` (thread-safe) until `retire`."""

    def __init__(self, name: str, home: str, beat_s: float, lock: FileLock):
        self.name = name
        self.home = home
        self.beat_s = beat_s
        self.token = uuid.uuid4().hex
        #: the name is ours in the database (False while the database refused the write)
        self.registered = False
        #: another process took the name over: this one must stop acting under it
        self.lost = False
        self._file_lock = lock
        self._beat_lock = threading.Lock()
        self._next_beat = 0.0

    @classmethod
    def take(cls, settings: Settings, factory: sessionmaker[Session]) -> Identity:
        """The name this process works under, its file lock held and, unless the database refuses
        writes (then `beat` registers it later), registered. Raises ConflictError when the name
        set in settings.worker_id is held by a live process."""
        home = f"{socket.gethostname()}:{settings.data_dir.resolve()}"
        folder = settings.data_dir / "workers"
        folder.mkdir(parents=True, exist_ok=True)
        given = settings.worker_id
        names = [given] if given else (f"{socket.gethostname()}-{n}" for n in range(_DEFAULT_SLOTS))
        for name in names:
            lock = FileLock(folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.lock", thread_local=False)
            try:
                lock.acquire(blocking=False)
            except Timeout:
                if given:
                    raise ConflictError(
                        f"worker {name} is already running on this data dir ({settings.data_dir}); "
                        f"give this one another name (TRAINYARD_WORKER_ID)"
                    ) from None
                continue
            identity = cls(name, home, settings.worker_heartbeat_s, lock)
            try:
                identity.beat(factory)
            except DatabaseUnwritableError:
                return identity  # registered by a later beat, once the database takes writes
            except ConflictError:
                lock.release()
                if given:
                    raise
                continue
            except BaseException:
                lock.release()
                raise
            return identity
        raise ConflictError(f"no free worker name on {home}: {_DEFAULT_SLOTS} live workers use this data dir")

    def beat(self, factory: sessionmaker[Session], *, when_due: bool = False) -> None:
        """Renew the heartbeat (the first one registers the name); with `when_due`, only once
        settings.worker_heartbeat_s has passed since the last. Thread-safe. Sets `lost` when
        another process took the name over. Raises DatabaseUnwritableError when the database
        refuses the write, and ConflictError when registering finds the name held by a live
        process elsewhere."""
        with self._beat_lock:
            if self.lost or (when_due and time.monotonic() < self._next_beat):
                return
            try:
                if self.registered:
                    self.lost = not self._renew(factory)
                else:
                    self._register(factory)
                    self.registered = True
            except Exception as exc:
                unwritable = DatabaseUnwritableError.from_exception(exc)
                if unwritable is not None:
                    self.beat_soon()
                    raise unwritable from exc
                raise
            self._next_beat = time.monotonic() + self.beat_s

    def beat_soon(self) -> None:
        """Make the next `beat(when_due=True)` write: after a refused write, the next pass's first
        statement is then a write, and a pass that gets through proves writes work again."""
        self._next_beat = 0.0

    def retire(self, factory: sessionmaker[Session]) -> None:
        """Give the name up (a clean stop; the leases were released before): the row goes, and
        the file lock is let go."""
        try:
            with transaction(factory) as session:
                session.execute(
                    delete(WorkerRecord).where(WorkerRecord.id == self.name, WorkerRecord.token == self.token)
                )
        finally:
            self._file_lock.release()

    # -- the database ------------------------------------------------------------------------------
    def _values(self) -> dict[str, object]:
        now = utcnow()
        return {"heartbeat_at": now, "expires_at": now + timedelta(seconds=MISSED_BEATS * self.beat_s)}

    def _renew(self, factory: sessionmaker[Session]) -> bool:
        with transaction(factory) as session:
            return compare_and_set(session, WorkerRecord, self.name, WorkerRecord.token == self.token, **self._values())

    def _register(self, factory: sessionmaker[Session]) -> None:
        """Take the name: free, expired (its holder is dead), or last held from this home (whose
        file lock we hold, so that holder is dead). The leases the name held are freed."""
        values = {"token": self.token, "home": self.home, "pid": os.getpid(), "started_at": utcnow(), **self._values()}
        now = values["heartbeat_at"]
        try:
            with transaction(factory) as session:
                taken = compare_and_set(
                    session,
                    WorkerRecord,
                    self.name,
                    or_(WorkerRecord.expires_at < now, WorkerRecord.home == self.home),
                    **values,
                )
                if not taken and session.get(WorkerRecord, self.name) is None:
                    session.add(WorkerRecord(id=self.name, **values))
                    session.flush()  # raises IntegrityError if another process inserted it first
                    taken = True
                if taken:
                    # the predecessor's leases: free now, claimed again under new tokens
                    for model in (Run, ComparisonRequest):
                        session.execute(
                            update(model)
                            .where(model.lease_owner == self.name)
                            .values(lease_owner=None, lease_token=None, lease_expires_at=None)
                            .execution_options(synchronize_session=False)
                        )
                    return
        except IntegrityError:
            pass  # another process registered the name a moment ago: it is live
        raise ConflictError(
            f"worker {self.name} is already running ({self._holder(factory)}); "
            f"give this one another name (TRAINYARD_WORKER_ID)"
        )

    def _holder(self, factory: sessionmaker[Session]) -> str:
        with factory() as session:
            row = session.get(WorkerRecord, self.name)
            if row is None:
                return "it just went away"
            ago = (utcnow() - aware(row.heartbeat_at)).total_seconds()
            return f"pid {row.pid} on {row.home}, last heartbeat {ago:.1f} s ago"
