"""The HTTP edge of the exception tree: a TrainyardError becomes its `http_status` with the body
`{"detail": {"message": ..., "field": ...}}`; anything unexpected becomes a 500 whose body says
nothing about internals (the traceback goes to the service log only).

Request validation keeps FastAPI's standard 422 body, whose `loc` names the field
(e.g. `["body", "budget", "max_usd"]`).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from orchestrator.errors import TrainyardError

log = logging.getLogger("trainyard.api")


def error_body(message: str, field: str | None = None) -> dict:
    return {"detail": {"message": message, "field": field}}


async def _trainyard_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TrainyardError)
    return JSONResponse(status_code=exc.http_status, content=error_body(str(exc), getattr(exc, "field", None)))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(status_code=500, content=error_body("internal error; see the service log"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TrainyardError, _trainyard_error)
    app.add_exception_handler(Exception, _unexpected_error)
