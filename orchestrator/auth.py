"""Who may call the API (docs/security.md, "Who may call the API"): tokens, their scopes, the
dashboard's sessions, and the loopback rule.

- A token is `ty_` and 43 URL-safe characters (256 random bits). Only the SHA-256 of it is kept:
  a copy of the database lets nobody call the API. Enough for a secret this long; a slow hash is
  for passwords people choose.
- Scopes are ordered: read < submit < admin. A caller may do what its scope or a lower one may.
- A session (the dashboard's sign-in) is a random id in a cookie, stored hashed, that acts as its
  token until it expires; revoking the token ends it too.
- With no token at all the service is open, as "local", with every scope, but only while it
  listens on loopback (`is_loopback_host`): `serve` refuses any other address without a token.

Functions take a Session and are plain synchronous SQLAlchemy: the API runs them through
`Database.read/write`, `trainyard token` runs them directly on the service's database.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Row, bindparam, delete, exists, select
from sqlalchemy.orm import Session

from orchestrator.db.models import ApiSession, ApiToken, utcnow
from orchestrator.errors import ConflictError, NotFoundError, TrainyardError


class Scope(str, enum.Enum):
    read = "read"
    submit = "submit"
    admin = "admin"

    def allows(self, needed: Scope) -> bool:
        return _RANK[self] >= _RANK[needed]


_RANK = {Scope.read: 0, Scope.submit: 1, Scope.admin: 2}

#: who submitted a run while the service had no tokens (open, on loopback only)
OPEN_CALLER = "local"
#: a token's name: what runs record as their submitter; never reused
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
TOKEN_PREFIX = "ty_"


class InvalidTokenError(TrainyardError):
    """Signing in with a token that is unknown or revoked."""

    http_status = 401


class InvalidTokenNameError(TrainyardError):
    http_status = 422
    field = "name"


@dataclass(frozen=True)
class Caller:
    """Who is calling: `name` is what a run they submit records; `via`: token, session or open."""

    name: str
    scope: Scope
    via: str


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def is_loopback_host(host: str) -> bool:
    """Whether listening on `host` reaches this machine only: a loopback address, or a name whose
    every address is one (`localhost`). A wildcard (0.0.0.0, ::) or a name that does not resolve
    is not."""
    host = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


# -- tokens ----------------------------------------------------------------------------------------
def create_token(session: Session, name: str, scope: Scope) -> tuple[ApiToken, str]:
    """Record a new token; returns it and its secret, which is shown once and kept nowhere.
    ConflictError when the name is (or was) another token's."""
    if not TOKEN_NAME.match(name):
        raise InvalidTokenNameError(
            f"token name {name!r}: use 1-100 letters, digits and ._@- (a letter or digit first)"
        )
    if name == OPEN_CALLER:
        raise InvalidTokenNameError(f"token name {OPEN_CALLER!r} is what runs record without a token; choose another")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise ConflictError(f"a token named {name!r} exists or existed; names are never reused: choose another")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, scope=scope.value, secret_sha256=secret_hash(secret), created_at=utcnow())
    session.add(token)
    session.flush()
    return token, secret


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)))


def revoke_token(session: Session, name: str) -> ApiToken:
    """Revoke the token and end its sessions at once; revoking a revoked token changes nothing."""
    token = session.scalar(select(ApiToken).where(ApiToken.name == name).with_for_update())
    if token is None:
        raise NotFoundError(f"no token named {name!r}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    session.execute(delete(ApiSession).where(ApiSession.token_id == token.id))
    return token


_tokens = ApiToken.__table__
_ANY_ACTIVE = select(exists().where(_tokens.c.revoked_at.is_(None)))
_BY_SECRET = select(_tokens.c.id, _tokens.c.name, _tokens.c.scope, _tokens.c.secret_sha256).where(
    _tokens.c.secret_sha256 == bindparam("digest"), _tokens.c.revoked_at.is_(None)
)


def any_active_token(session: Session) -> bool:
    return bool(session.execute(_ANY_ACTIVE).scalar())


def _token_row(session: Session, secret: str) -> Row | None:
    digest = secret_hash(secret)
    row = session.connection().execute(_BY_SECRET, {"digest": digest}).one_or_none()
    # the lookup found it by its hash; compared again in constant time all the same
    return row if row is not None and hmac.compare_digest(row.secret_sha256, digest) else None


def caller_for_token(session: Session, secret: str) -> Caller | None:
    """The caller a token names; None when it is unknown or revoked."""
    row = _token_row(session, secret)
    return None if row is None else Caller(row.name, Scope(row.scope), "token")


# -- sessions --------------------------------------------------------------------------------------
_sessions = ApiSession.__table__
_BY_SESSION = (
    select(_tokens.c.name, _tokens.c.scope)
    .join(_sessions, _sessions.c.token_id == _tokens.c.id)
    .where(
        _sessions.c.id_sha256 == bindparam("digest"),
        _sessions.c.expires_at > bindparam("now"),
        _tokens.c.revoked_at.is_(None),
    )
)


def start_session(session: Session, secret: str, ttl_s: float) -> tuple[str, datetime]:
    """Sign in with a token: a new session id (for the cookie) and when it expires;
    InvalidTokenError when the token is not valid. Sessions that expired are removed on the way."""
    row = _token_row(session, secret)
    if row is None:
        raise InvalidTokenError("the token is not valid (unknown or revoked)")
    now = utcnow()
    session.execute(delete(ApiSession).where(ApiSession.expires_at <= now))
    session_id = secrets.token_urlsafe(32)
    expires = now + timedelta(seconds=ttl_s)
    session.add(ApiSession(id_sha256=secret_hash(session_id), token_id=row.id, created_at=now, expires_at=expires))
    session.flush()
    return session_id, expires


def caller_for_session(session: Session, session_id: str) -> Caller | None:
    row = session.connection().execute(_BY_SESSION, {"digest": secret_hash(session_id), "now": utcnow()}).one_or_none()
    return None if row is None else Caller(row.name, Scope(row.scope), "session")


def end_session(session: Session, session_id: str) -> None:
    session.execute(delete(ApiSession).where(ApiSession.id_sha256 == secret_hash(session_id)))
