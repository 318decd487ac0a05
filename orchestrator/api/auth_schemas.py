"""What the sign-in and token endpoints accept and return (orchestrator/auth.py). A token's
secret appears in exactly one response: the one that created it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.schemas import UtcDatetime
from orchestrator.auth import TOKEN_NAME, Scope


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=200)


class CallerPublic(BaseModel):
    #: the token's name ("local": the service has no tokens and is open on loopback)
    name: str
    scope: Scope
    #: token, session (the dashboard's sign-in) or open
    via: str


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOKEN_NAME.pattern, description="letters, digits and ._@-; never reused")
    scope: Scope


class TokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    scope: Scope
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None


class TokenCreated(TokenPublic):
    #: the secret, shown this once: only its SHA-256 is kept
    token: str


class TokenList(BaseModel):
    tokens: list[TokenPublic]
