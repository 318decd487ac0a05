from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from orchestrator.api.schemas import Health
from orchestrator.api.version import VERSION
from orchestrator.errors import DatabaseUnreachableError, DatabaseUnwritableError

router = APIRouter(tags=["health"])

#: a write that changes nothing: the database must accept a write (SQLite takes its write lock,
#: PostgreSQL checks the transaction may write), yet no row matches. A read could not tell: a
#: read-only SQLite file or a PostgreSQL standby serves reads as usual.
_WRITE_PROBE = text("UPDATE alembic_version SET version_num = version_num WHERE 1 = 0")


def _probe_write(session: Session) -> None:
    session.execute(_WRITE_PROBE)


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    # "is the process serving, and can it record anything": one statement that writes nothing
    # (well under a millisecond), cheap enough to poll. A database that refuses writes answers
    # 503 with one line saying so (api/errors.py), so a supervisor or `trainyard` sees it at once.
    try:
        await request.app.state.database.write(_probe_write)
    except DBAPIError as exc:
        unreachable = exc.connection_invalidated or _refused(exc)
        if DatabaseUnwritableError.from_exception(exc) is not None or not unreachable:
            raise  # read-only: api/errors.py's 503; anything else: a 500 to look into
        said = " ".join(str(getattr(exc, "orig", exc)).split("\n", 1)[0].split())
        raise DatabaseUnreachableError(f"the database is unreachable ({said})") from None
    return Health(status="ok", version=VERSION, database=request.app.state.engine.dialect.name)


def _refused(exc: DBAPIError) -> bool:
    """A failed connect: SQLAlchemy raises it as an OperationalError with no statement run."""
    return type(exc).__name__ == "OperationalError" and "connect" in str(exc.orig).lower()
