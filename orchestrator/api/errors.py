"""The HTTP edge of the exception tree, and the one shape of every error body (docs/architecture.md):

    {"detail": {"message": "one line for a person",
                "field":   "budget.max_usd",          the (first) field at fault, or null
                "errors":  [{"field": "budget.max_usd", "message": "..."}, ...]}}   every mistake

- a TrainyardError becomes its `http_status` (a spec with several mistakes lists each in `errors`);
- a database that refuses writes (the driver's read-only error) is a DatabaseUnwritableError: 503;
- request validation is a 422 that names every field it refused: a body's fields by their path in
  the spec (`budget.max_usd`), a query, path or header parameter by its name (`limit`,
  `Idempotency-Key`);
- Starlette's own HTTP errors (no such route: 404; a method the path does not take: 405, with an
  `Allow` header listing every method it does take) keep their status, in the same shape;
- anything unexpected is a 500 whose body says nothing about internals (the traceback goes to the
  service log only).
The middlewares at the door (api/hosts.py 400, api/auth.py 401/403, api/limits.py 413) build
theirs with `error_body`. `ErrorBody` is the shape as a schema: api/openapi.py documents it for
every error status of every operation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from orchestrator.errors import DatabaseUnwritableError, TrainyardError
from trainer.schema import field_path

log = logging.getLogger("trainyard.api")


class FieldError(BaseModel):
    #: the field's path in the request body (`training.lr`), or the parameter's name; null: the
    #: request as a whole
    field: str | None
    message: str


class ErrorDetail(BaseModel):
    #: one line that says what went wrong (several mistakes: counted, then each of them)
    message: str
    #: the first field at fault, or null
    field: str | None
    #: every mistake, one each (one entry for an error that is not about the input's fields)
    errors: list[FieldError]


class ErrorBody(BaseModel):
    """The body of every error response."""

    detail: ErrorDetail


def error_body(message: str, field: str | None = None, errors: Sequence[tuple[str | None, str]] = ()) -> dict:
    """The error shape; `errors`: every (field, message), when there is more than the one."""
    listed = [{"field": f, "message": m} for f, m in errors] or [{"field": field, "message": message}]
    return {"detail": {"message": message, "field": field, "errors": listed}}


def _several(problems: list[tuple[str | None, str]], what: str) -> str:
    lines = [f"{f}: {m}" if f else m for f, m in problems]
    return lines[0] if len(lines) == 1 else f"{len(lines)} mistakes in the {what}: " + "; ".join(lines)


def _where(loc: Sequence[Any]) -> str | None:
    """The field a validation error's location names: the body's path, or the parameter."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return field_path(parts) or None


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems: list[tuple[str | None, str]] = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":  # the location is a character offset, not a field
            problems.append((None, f"the body is not valid JSON: {error.get('msg', 'invalid')}"))
        else:
            problems.append((_where(error.get("loc", ())), str(error.get("msg", "invalid"))))
    problems = problems or [(None, "the request is not valid")]
    return JSONResponse(status_code=422, content=error_body(_several(problems, "request"), problems[0][0], problems))


async def _trainyard_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TrainyardError)
    field = getattr(exc, "field", None)
    # a spec with several mistakes (orchestrator.spec.SpecMistakes) lists each of them
    problems = list(getattr(exc, "field_errors", ()))
    return JSONResponse(status_code=exc.http_status, content=error_body(str(exc), field, problems))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    message = exc.detail if isinstance(exc.detail, str) else f"HTTP {exc.status_code}"
    if exc.status_code == 404 and message == "Not Found":
        message = f"nothing at {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not a method of {request.url.path} (it takes {headers['Allow']})"
    return JSONResponse(status_code=exc.status_code, content=error_body(message), headers=headers or None)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at the request's path (Starlette's 405 names only the first
    route that matched the path, and a path often has several: GET and POST /runs). Each method
    is routed afresh, as a request of its own would be."""
    path = request.url.path
    return [
        method
        for method in _METHODS
        if any(
            route.matches({"type": "http", "path": path, "root_path": "", "method": method, "headers": []})[0]
            is Match.FULL
            for route in request.app.router.routes
        )
    ]


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(status_code=500, content=error_body("internal error; see the service log"))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    # a database that refuses writes is the operator's to fix, not a bug: a 503 that says so
    unwritable = DatabaseUnwritableError.from_exception(exc)
    if unwritable is None:
        raise exc  # on to the 500 of any unexpected error
    log.warning("%s %s: %s", request.method, request.url.path, unwritable)
    return await _trainyard_error(request, unwritable)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(TrainyardError, _trainyard_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
