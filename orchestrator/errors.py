"""The exception tree of the service, translated once at each edge:
error -> HTTP status (api/errors.py) -> CLI exit code and one-line message (cli/)."""

from __future__ import annotations


class TrainyardError(Exception):
    """Base of every error the service raises on purpose."""

    http_status = 500


class NotFoundError(TrainyardError):
    http_status = 404


class ConflictError(TrainyardError):
    """The request does not fit the object's current state (e.g. cancel a finished run)."""

    http_status = 409


class InvalidSpecError(TrainyardError):
    """A run spec that cannot be accepted; `field` names the offending field."""

    http_status = 422

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class SchemaOutOfDateError(TrainyardError):
    """The database is not at the migrations' head; `trainyard db upgrade` fixes it."""


class DatabaseUnreachableError(TrainyardError):
    """The service cannot connect to its database (PostgreSQL down, a wrong host or port): the
    health check says so in one line instead of a bare 500."""

    http_status = 503


class LeaseLostError(TrainyardError):
    """Another worker took over this run; the current worker must stop acting on it."""


class DatabaseUnwritableError(TrainyardError):
    """The database refuses writes: a read-only SQLite file, directory or mount, a SQLite opened
    `?mode=ro`, a PostgreSQL standby or `default_transaction_read_only`. Nothing can be recorded
    (no run submitted, no lease taken) until an operator makes it writable; reads still work."""

    http_status = 503

    #: SQLite's "attempt to write a readonly database" (every SQLITE_READONLY_* variant)
    _SQLITE_ERROR = "SQLITE_READONLY"
    #: PostgreSQL's read_only_sql_transaction ("cannot execute UPDATE in a read-only transaction")
    _POSTGRES_SQLSTATE = "25006"

    @classmethod
    def from_exception(cls, exc: BaseException) -> DatabaseUnwritableError | None:
        """The error `exc` means, when it (or the driver error SQLAlchemy wrapped in it) is a
        refused write; None for any other error. Duck-typed, so this module imports no driver."""
        if isinstance(exc, cls):
            return exc
        driver = getattr(exc, "orig", None) or exc
        refused = (
            str(getattr(driver, "sqlite_errorname", "")).startswith(cls._SQLITE_ERROR)
            or (getattr(driver, "sqlstate", None) or getattr(driver, "pgcode", None)) == cls._POSTGRES_SQLSTATE
        )
        if not refused:
            return None
        said = " ".join(str(driver).split("\n", 1)[0].split())
        return cls(f"the database is read-only ({said}): nothing can be recorded until it is writable again")
