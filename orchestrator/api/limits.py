"""Limits at the HTTP door, one ASGI middleware in front of every route:

- a request body over MAX_BODY_BYTES gets 413 before the app sees any of it, whether the client
  said its length (Content-Length) or streams it in chunks without one (then it is counted as it
  arrives, and no more than the limit plus one chunk is ever held);
- the specs a request submits are checked against this service's limits
  (orchestrator.door.current_limits holds them while the request is handled).

Integer query and path parameters are bounded where the routes declare them, by MAX_INT.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.errors import error_body
from orchestrator.door import INT64_MAX, Limits, current_limits
from orchestrator.settings import Settings

#: the largest request body accepted (1 MiB): a spec is a few hundred bytes
MAX_BODY_BYTES = 1 << 20
#: the largest integer a query or path parameter may hold (`offset`, `after_id`, ...): past it
#: a database's 64-bit INTEGER overflows, so the answer is a 422 naming the parameter, not a 500
MAX_INT = INT64_MAX
#: a checkpoint's step in a path (/runs/{run_id}/checkpoints/{step})
StepParam = Annotated[int, Path(ge=0, le=MAX_INT)]


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings, max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.limits = Limits.from_settings(settings)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        # The whole body is read here, so a chunked one over the limit is refused before the app
        # has parsed (or acted on) any of it; what is read is handed on unchanged.
        read: list[Message] = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":  # the client went away
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            # then the client's own messages again (a streaming response waits for its disconnect)
            return read.pop(0) if read else await receive()

        token = current_limits.set(self.limits)
        try:
            await self.app(scope, replay, send)
        finally:
            current_limits.reset(token)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is over {self.max_body_bytes:,} bytes"
        await JSONResponse(error_body(message), status_code=413)(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # the server refuses a malformed length itself
    return 0
