"""The door of the service (docs/security.md): one ASGI middleware decides, for every request and
before any routing or body parsing, who is calling and whether they may.

What a request needs is `required_scope(method, path)`, the one table of it: reading (GET, HEAD,
OPTIONS) needs `read`, anything else `submit`, token management `admin`; open to anyone are only
the health check, signing in and out, and the sign-in page with the dashboard's static assets.

Who is calling: an `Authorization: Bearer <token>` header, else the dashboard's session cookie,
else, when the service has no tokens at all and listens on loopback only, "local" with every
scope. A refused API request gets 401 (who are you?) or 403 (not with this scope); a page of
the dashboard is sent to the sign-in page instead. The caller is left in `request.state.caller`
(`deps.CallerDep`) for the routes that record it.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import starlette.types as asgi
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.requests import Request
from starlette.responses import Response

from orchestrator import auth
from orchestrator.api.database import Database
from orchestrator.api.errors import error_body

API = "/api/v1"
SESSION_PATH = f"{API}/auth/session"
TOKENS_PATH = f"{API}/tokens"
SIGNIN_PAGE = "/signin"
SESSION_COOKIE = "trainyard_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: open to anyone: nothing here reveals anything or changes anything
_PUBLIC_PATHS = frozenset({f"{API}/health", SIGNIN_PAGE, "/favicon.ico"})
#: the dashboard's scripts and styles (no data in them), which the sign-in page needs
_PUBLIC_PREFIX = "/ui/"


def required_scope(method: str, path: str) -> auth.Scope | None:
    """The scope a request needs; None: open to anyone."""
    if path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIX):
        return None
    if path == SESSION_PATH and method in ("POST", "DELETE"):  # signing in and out
        return None
    if path == TOKENS_PATH or path.startswith(TOKENS_PATH + "/"):
        return auth.Scope.admin
    return auth.Scope.read if method in SAFE_METHODS else auth.Scope.submit


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class AuthMiddleware:
    """`require_tokens`: the service listens beyond loopback, so it is never open, even if every
    token has been revoked (then nobody gets in until `trainyard token create`)."""

    def __init__(self, app: asgi.ASGIApp, database: Database, require_tokens: bool):
        self.app, self.database, self.require_tokens = app, database, require_tokens

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        needed = required_scope(request.method, request.url.path)
        if needed is not None:
            try:
                caller = await self._caller(request)
                if not caller.scope.allows(needed):
                    raise _Refused(
                        403, f"token {caller.name!r} has scope {caller.scope.value}; this needs {needed.value}"
                    )
                if caller.via == "session" and request.method not in SAFE_METHODS and not _same_origin(request):
                    # the cookie is SameSite=Lax already; a changing request must also come from our own pages
                    raise _Refused(403, "a signed-in change must come from the dashboard's own pages (Origin)")
            except _Refused as refused:
                await _refusal(request, refused)(scope, receive, send)
                return
            scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)

    async def _caller(self, request: Request) -> auth.Caller:
        header = request.headers.get("authorization")
        if header is not None:
            kind, _, secret = header.partition(" ")
            if kind.lower() != "bearer" or not secret.strip():
                raise _Refused(401, "the Authorization header must be `Bearer <token>`")
            caller = await self.database.read(auth.caller_for_token, secret.strip())
            if caller is None:
                raise _Refused(401, "the token is not valid (unknown or revoked)")
            return caller
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            caller = await self.database.read(auth.caller_for_session, session_id)
            if caller is not None:
                return caller
        if not self.require_tokens and not await self.database.read(auth.any_active_token):
            return auth.Caller(auth.OPEN_CALLER, auth.Scope.admin, "open")
        if session_id:
            raise _Refused(401, "the sign-in has expired or its token was revoked; sign in again")
        raise _Refused(401, "this service needs a token: send `Authorization: Bearer <token>` (docs/security.md)")


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    return bool(origin and host) and urlsplit(origin).netloc.lower() == str(host).lower()


def _refusal(request: Request, refused: _Refused) -> Response:
    path = request.url.path
    if refused.status == 401 and request.method == "GET" and not path.startswith(API + "/") and path != "/openapi.json":
        # a page of the dashboard: sign in, then come back here
        back = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{SIGNIN_PAGE}?next={quote(back, safe='')}", status_code=303)
    headers = {"WWW-Authenticate": 'Bearer realm="trainyard"'} if refused.status == 401 else None
    return JSONResponse(error_body(str(refused)), status_code=refused.status, headers=headers)
