"""Lambda's error envelope, and the errors the simulated cloud raises with Lambda's codes.

Every error the simulator answers is `{"error": {"code", "message", "suggestion"?}}` with the
code, HTTP status and default texts of Lambda's OpenAPI spec (`lambda-cloud-openapi.json` beside
this module): clients are told to branch on `code`, so the codes are what must be faithful.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error as Lambda returns it: HTTP status plus `{"error": {code, message, suggestion}}`."""

    def __init__(
        self, status: int, code: str, message: str, suggestion: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.suggestion = status, code, message, suggestion
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err = {"code": self.code, "message": self.message}
        if self.suggestion:
            err["suggestion"] = self.suggestion
        return {"error": err}


def not_found(what: str = "Specified instance does not exist.") -> ApiError:
    """404 `global/object-does-not-exist`: an id in the path or body that the account lacks."""
    return ApiError(404, "global/object-does-not-exist", what)


def launch_resource_missing(what: str, suggestion: str) -> ApiError:
    """A launch names something that does not exist (Lambda requires a suggestion on this one)."""
    return ApiError(404, "global/object-does-not-exist", what, suggestion)


def route_not_found() -> ApiError:
    """404 `global/not-found`: no such route, or an SSH key id the account lacks."""
    return ApiError(404, "global/not-found", "The requested resource was not found.")


def invalid(message: str = "Invalid request data.", suggestion: str | None = None) -> ApiError:
    return ApiError(400, "global/invalid-parameters", message, suggestion)


def conflict(suggestion: str) -> ApiError:
    return ApiError(409, "global/conflict", "The request conflicts with the current state of the resource.", suggestion)


def quota_exceeded(suggestion: str = "Contact Support to increase your quota.") -> ApiError:
    return ApiError(400, "global/quota-exceeded", "Quota exceeded.", suggestion)


def internal_error(status: int = 500) -> ApiError:
    return ApiError(
        status,
        "global/internal-error",
        "An internal server error occurred.",
        "Try again later. Contact Support if the problem persists.",
    )
