"""Leases: at most one worker acts on a run at a time, and a worker that lost its lease cannot write.

A lease is three columns on the run (owner, token, expiry). Taking one is a single compare-and-set
UPDATE whose WHERE clause says "free, expired, or already mine"; the row count tells who won. That
is atomic on PostgreSQL (row lock, the WHERE re-checked after a concurrent writer commits) and on
SQLite (one writer at a time), so the same code is correct on both.

Every write a worker makes about a run goes through `fenced`: its first statement is an UPDATE of
the run's own lease row guarded by the token (which also extends the lease). If the token changed
because another worker took over after our lease expired, the UPDATE matches nothing and
LeaseLostError is raised before anything is written. Because that first statement is a write, it
takes the row lock (PostgreSQL) or the database write lock (SQLite) for the rest of the
transaction, so no takeover can slip in between the check and the commit.

A lease ends sooner than its expiry in two cases (identity.py): its holder's heartbeat stopped
(the `workers` row expired: the process is dead or paused), and its holder's name was taken over
by a restarted process of the same worker, which frees the old process's leases at once. Either
way the next claim gets a new token, so the old process's leftover tasks are fenced out.

Times are the workers' clocks (UTC). Workers on one host, or hosts kept in sync by NTP, are fine;
the lease length (seconds) is far above any sane clock skew.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import TERMINAL_VALUES, Instance, Run, WorkerRecord, utcnow
from orchestrator.db.session import transaction
from orchestrator.errors import LeaseLostError

_TERMINAL = sorted(TERMINAL_VALUES)


def _expiry(lease_s: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) + timedelta(seconds=lease_s)


def is_free(model: Any, now: datetime) -> ColumnElement[bool]:
    """The lease on a row of `model` (a Run or a ComparisonRequest) is free, expired, or held by
    a worker whose heartbeat has expired (identity.py). A holder with no `workers` row (a name
    not registered, as in tests that lease by hand) keeps its lease until it expires."""
    holder_dead = exists().where(WorkerRecord.id == model.lease_owner, WorkerRecord.expires_at < now)
    return or_(model.lease_expires_at.is_(None), model.lease_expires_at < now, holder_dead)


def compare_and_set(
    session: Session, model: Any, row_id: str, condition: ColumnElement[bool], **values: object
) -> bool:
    """The one lease primitive: UPDATE the row SET `values` WHERE its id and `condition` match.
    True when it matched (we won); atomic on PostgreSQL and SQLite alike (see the module doc)."""
    result = session.execute(
        update(model).where(model.id == row_id, condition).values(**values).execution_options(synchronize_session=False)
    )
    # an UPDATE's result is a CursorResult (it has a rowcount); Session.execute is typed for any statement
    return cast(CursorResult[Any], result).rowcount == 1


def acquire(factory: sessionmaker[Session], run_id: str, owner: str, lease_s: float) -> str | None:
    """Take the run's lease if it is free, expired or already ours. Returns the new token or None."""
    now = utcnow()
    token = uuid.uuid4().hex
    with transaction(factory) as session:
        won = compare_and_set(
            session,
            Run,
            run_id,
            or_(is_free(Run, now), Run.lease_owner == owner),
            lease_owner=owner,
            lease_token=token,
            lease_expires_at=_expiry(lease_s, now),
        )
        return token if won else None


def renew(factory: sessionmaker[Session], run_id: str, token: str, lease_s: float) -> bool:
    """Extend a lease we hold. False means it was taken over: stop acting on the run."""
    with transaction(factory) as session:
        return _extend(session, run_id, token, lease_s)


def _extend(session: Session, run_id: str, token: str, lease_s: float) -> bool:
    """Push the lease's expiry out if `token` still holds it; the fencing check of every write."""
    return compare_and_set(session, Run, run_id, Run.lease_token == token, lease_expires_at=_expiry(lease_s))


def release(factory: sessionmaker[Session], run_id: str, token: str) -> None:
    """Give the lease back so another worker may pick the run up at once. No-op if not ours."""
    with transaction(factory) as session:
        compare_and_set(
            session, Run, run_id, Run.lease_token == token, lease_owner=None, lease_token=None, lease_expires_at=None
        )


@contextmanager
def fenced(factory: sessionmaker[Session], run_id: str, token: str, lease_s: float) -> Iterator[tuple[Session, Run]]:
    """A transaction that may write about `run_id` only while `token` still holds its lease.

    Yields (session, run). Raises LeaseLostError (and writes nothing) when the lease was lost.
    """
    with transaction(factory) as session:
        if not _extend(session, run_id, token, lease_s):
            raise LeaseLostError(f"run {run_id}: lease lost (another worker took it over)")
        run = session.get(Run, run_id, populate_existing=True)
        assert run is not None  # the UPDATE above just matched it
        yield session, run


def claimable_run_ids(factory: sessionmaker[Session], limit: int) -> list[str]:
    """Runs that need a worker and that no live lease covers, oldest first.

    A run needs a worker while it is not terminal, and also after it ended while any of its
    instances is not confirmed terminated (a crash between "failed" and "terminate" must still
    converge to nothing left running), unless its cleanup gave up on it (cleanup.py).
    """
    if limit <= 0:
        return []
    now = utcnow()
    # an instance whose cleanup gave up is the orphan sweep's (controller/cleanup.py)
    live_instance = exists().where(
        Instance.run_id == Run.id, Instance.terminated_at.is_(None), Instance.cleanup_gave_up_at.is_(None)
    )
    with factory() as session:
        rows = session.execute(
            select(Run.id)
            .where(
                or_(Run.status.not_in(_TERMINAL), and_(Run.status.in_(_TERMINAL), live_instance)),
                is_free(Run, now),
            )
            .order_by(Run.created_at, Run.id)
            .limit(limit)
        )
        return [r[0] for r in rows]
