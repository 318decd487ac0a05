"""The exception tree of `provision/`. The service translates these at its edge (to run failure
reasons and HTTP statuses); nothing above `provision/` should see a raw httpx or paramiko error."""


class ProvisionError(Exception):
    """Base of every error a provider or a node raises."""

    #: may the same call succeed if tried again later?
    retryable: bool = False
    #: what the provider's API answered, when the error is its answer (Lambda: `error.code`, e.g.
    #: "global/quota-exceeded", the HTTP status and `error.suggestion`)
    code: str = ""
    http_status: int | None = None
    suggestion: str = ""


class InsufficientCapacity(ProvisionError):
    """The requested instance type has no capacity in that region right now."""

    retryable = True


class QuotaExceeded(ProvisionError):
    """The account may not launch more of this type."""


class InvalidCredentials(ProvisionError):
    """The API key was refused."""


class NotFound(ProvisionError):
    """The instance (or other object) does not exist."""


class RateLimited(ProvisionError):
    """Too many requests; retried with backoff by the client before surfacing."""

    retryable = True


class ProviderServerError(ProvisionError):
    """The provider failed on its side (5xx) after our retries."""

    retryable = True


class InvalidRequest(ProvisionError):
    """The provider rejected the request as malformed (a bug or a bad spec)."""


class NodeError(ProvisionError):
    """A command or transfer on a node failed."""


class NodeUnreachable(NodeError):
    """The node did not answer over SSH before the deadline."""

    retryable = True


class HostKeyMismatch(NodeError):
    """The node presented a different SSH host key than the one pinned for its address."""


class PlacementFailed(ProvisionError):
    """No instance type in the spec had capacity in any allowed region before placement's deadline.

    The message names the types and regions tried. Nothing was launched.
    """
