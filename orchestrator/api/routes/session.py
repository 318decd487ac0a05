"""`/auth/session`: the dashboard signs in with a token and gets a session cookie (HttpOnly,
SameSite=Lax, Secure over https, expiring with `settings.session_ttl_s`); `GET` says who is
calling, `DELETE` signs out. Signing in and out are open to anyone (api/auth.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status

from orchestrator import auth
from orchestrator.api.auth import SESSION_COOKIE
from orchestrator.api.auth_schemas import CallerPublic, SignIn
from orchestrator.api.deps import CallerDep, DbDep, SettingsDep

router = APIRouter(prefix="/auth/session", tags=["auth"])

_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"description": "the token is not valid"}}


@router.post("", status_code=status.HTTP_204_NO_CONTENT, responses=_UNAUTHORIZED)
async def sign_in(body: SignIn, request: Request, db: DbDep, settings: SettingsDep) -> Response:
    """Trade a token for a session cookie (the dashboard's sign-in page)."""
    session_id, _expires = await db.write(auth.start_session, body.token, settings.session_ttl_s)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(settings.session_ttl_s),
        path="/",
        httponly=True,
        # Lax, not Strict: a link to a run from a chat still opens it signed in; a cross-site POST
        # carries no cookie, and api/auth.py also wants our own Origin on every signed-in change
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("", response_model=CallerPublic)
async def who_am_i(caller: CallerDep) -> CallerPublic:
    return CallerPublic(name=caller.name, scope=caller.scope, via=caller.via)


@router.delete("", status_code=status.HTTP_204_NO_CONTENT)
async def sign_out(request: Request, db: DbDep) -> Response:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        await db.write(auth.end_session, session_id)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response
