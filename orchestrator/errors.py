"""The exception tree of the service, translated once at each edge:
error -> HTTP status (api/errors.py) -> CLI exit code and one-line message (cli/)."""


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


class LeaseLostError(TrainyardError):
    """Another worker took over this run; the current worker must stop acting on it."""
