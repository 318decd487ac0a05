"""`/tokens`: list, create and revoke API tokens (scope admin, api/auth.py). The same as
`trainyard token` on the service's machine; a new token's secret is in the creating response only."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from orchestrator import auth
from orchestrator.api.auth_schemas import TokenCreate, TokenCreated, TokenList, TokenPublic
from orchestrator.api.deps import DbDep

router = APIRouter(prefix="/tokens", tags=["auth"])


@router.get("", response_model=TokenList)
async def list_tokens(db: DbDep) -> TokenList:
    """Every token, revoked ones too (names are never reused), oldest first; never a secret."""
    return await db.read(_list)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    responses={409: {"description": "the name is, or was, another token's"}},
)
async def create_token(body: TokenCreate, db: DbDep) -> TokenCreated:
    return await db.write(_create, body)


@router.delete("/{name}", response_model=TokenPublic, responses={404: {"description": "no token of this name"}})
async def revoke_token(name: str, db: DbDep) -> TokenPublic:
    """Revoke at once: its next request gets 401, its dashboard sessions end."""
    return await db.write(_revoke, name)


def _list(session: Session) -> TokenList:
    return TokenList(tokens=[TokenPublic.model_validate(t) for t in auth.list_tokens(session)])


def _create(session: Session, body: TokenCreate) -> TokenCreated:
    token, secret = auth.create_token(session, body.name, body.scope)
    return TokenCreated(**TokenPublic.model_validate(token).model_dump(), token=secret)


def _revoke(session: Session, name: str) -> TokenPublic:
    return TokenPublic.model_validate(auth.revoke_token(session, name))
