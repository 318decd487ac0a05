"""`POST /runs` in one transaction: the Idempotency-Key, the run, and its response, rendered.

Atomic: the run's row, its first event, its key and the bytes of the response are made in one
transaction, and the response is rendered (JSON, exactly as it is sent) before the commit. So a
submit answers 201 with a run that `GET /runs/{id}` can read, or an error and no row: a value
that cannot be sent (one that slipped past the door) rolls the run back rather than answering 500
after creating a run that would answer 500 forever.

Idempotency, as Stripe's API has it. A submit may carry an `Idempotency-Key` header (1 to 255
characters; `trainyard submit` sends a fresh UUID per submit, and the same one again on its own
retries). Keys are per submitter (the token's name, or "local" on an open service) and are kept
`idempotency_key_ttl_s` (24 h). The same key with the same spec, as the service read it (key
order and spacing do not matter), gives back the same run: 201 again, with `Idempotent-Replayed:
true`. The same key with another spec is a 409, and makes nothing. Two requests with one key at
the same moment: the key's primary key lets one commit; the other fails at its insert or commit,
is tried once more, and replays the first. A request refused before it reaches here (401, 413,
422) stores no key: it can be sent again, corrected, under the same key.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from fastapi.responses import JSONResponse
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from orchestrator import runs
from orchestrator.api.database import Database
from orchestrator.api.views import run_detail
from orchestrator.db.models import IdempotencyKey, Run, utcnow
from orchestrator.errors import ConflictError
from orchestrator.spec import RunSpec

REPLAYED_HEADER = "Idempotent-Replayed"


def spec_sha256(spec: RunSpec) -> str:
    """The spec as the service read it, hashed: what "the same body" means for a key."""
    text = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _earlier(session: Session, submitter: str, key: str, digest: str, ttl_s: float) -> Run | None:
    """The run this key already made (None: a new key), after forgetting expired keys.
    ConflictError when the key was used with another spec."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - timedelta(seconds=ttl_s)))
    row = session.get(IdempotencyKey, (submitter, key))
    if row is None:
        return None
    if row.request_sha256 != digest:
        raise ConflictError(
            f"this Idempotency-Key was used for another spec (it made run {row.run_id}); "
            "send a new key with a new submit"
        )
    return runs.get_run(session, row.run_id)


def submit(session: Session, spec: RunSpec, submitter: str, key: str | None, ttl_s: float) -> JSONResponse:
    """The whole submit, in the caller's transaction (Database.write): the response to send."""
    digest = spec_sha256(spec) if key is not None else ""
    run = _earlier(session, submitter, key, digest, ttl_s) if key is not None else None
    replayed = run is not None
    if run is None:
        run = runs.create_run(session, spec, submitter)
        if key is not None:
            session.add(IdempotencyKey(submitter=submitter, key=key, request_sha256=digest, run_id=run.id))
            session.flush()  # a twin request that inserted the key first makes this fail, before the commit
    # rendered here, inside the transaction: a response that cannot be sent undoes the run
    body = run_detail(session, run).model_dump(mode="json")
    return JSONResponse(body, status_code=201, headers={REPLAYED_HEADER: "true"} if replayed else None)


async def submit_run(db: Database, spec: RunSpec, submitter: str, key: str | None, ttl_s: float) -> JSONResponse:
    """`submit` in one write transaction; with a key, once more if a twin request won the race."""
    try:
        return await db.write(submit, spec, submitter, key, ttl_s)
    except (IntegrityError, OperationalError):
        # PostgreSQL: the twin's key is committed (unique violation); SQLite: its commit made our
        # snapshot stale (database is locked). Either way it exists now: this replays it.
        if key is None:
            raise
        return await db.write(submit, spec, submitter, key, ttl_s)
