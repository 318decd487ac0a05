"""`trainyard token create|list|revoke`: the API's tokens (docs/security.md). Like `trainyard db
upgrade`, these run on the service's machine and write to its database directly (the settings
say which), so the first token needs no token to make. A new token is printed once, alone on
stdout (`> file` keeps it); only its SHA-256 is stored.

Over the API, an admin token does the same: `/api/v1/tokens`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from sqlalchemy.orm import Session

from orchestrator import auth
from orchestrator.cli.errors import BAD_INPUT, CliError, cli_errors
from orchestrator.cli.output import (
    Col,
    Format,
    FormatOpt,
    fitted_table,
    message,
    print_json,
    show_table,
    terminal_width,
    when,
)
from orchestrator.db.models import ApiToken, aware
from orchestrator.db.session import make_sessionmaker, transaction
from orchestrator.settings import get_settings

token_app = typer.Typer(
    help="API tokens (run on the service's machine: they write to its database).", no_args_is_help=True
)

T = TypeVar("T")
_COLS = (Col("NAME", keep=True), Col("SCOPE"), Col("CREATED", rank=2), Col("REVOKED", rank=1))


def _in_database(fn: Callable[[Session], T]) -> T:
    from orchestrator.cli.server import checked_engine

    engine = checked_engine(get_settings())
    try:
        with transaction(make_sessionmaker(engine)) as session:
            return fn(session)
    except auth.InvalidTokenNameError as exc:
        raise CliError(str(exc), BAD_INPUT) from exc
    finally:
        engine.dispose()


def _public(token: ApiToken) -> dict:
    """As `GET /api/v1/tokens` shows it: ISO 8601 UTC times."""
    created, revoked = aware(token.created_at), aware(token.revoked_at)
    return {
        "name": token.name,
        "scope": token.scope,
        "created_at": created.isoformat(),
        "revoked_at": revoked.isoformat() if revoked else None,
    }


@token_app.command("create")
@cli_errors
def create(
    name: Annotated[str, typer.Option("--name", help="what runs record as their submitter; never reused")],
    scope: Annotated[auth.Scope, typer.Option("--scope", help="read < submit < admin")] = auth.Scope.read,
    fmt: FormatOpt = Format.table,
) -> None:
    """Create a token and print it, this once."""

    def make(session: Session) -> tuple[dict, str]:
        token, secret = auth.create_token(session, name, scope)
        return _public(token), secret

    public, secret = _in_database(make)
    if fmt is Format.json:
        print_json({**public, "token": secret})
    else:
        print(secret)
    message(
        f"created token {name!r} (scope {scope.value}); it is shown only now. The CLI reads it from "
        f"$TRAINYARD_TOKEN or ~/.config/trainyard/token (mode 600); the dashboard signs in with it"
    )


@token_app.command("list")
@cli_errors
def list_(fmt: FormatOpt = Format.table) -> None:
    """Every token (revoked ones too: names are never reused); never a secret."""
    tokens = _in_database(lambda s: [_public(t) for t in auth.list_tokens(s)])
    if fmt is Format.json:
        print_json({"tokens": tokens})
        return
    if not tokens:
        message("no tokens: the service is open on loopback only (`trainyard token create` makes one)")
        return
    rows = [(t["name"], t["scope"], when(t["created_at"]), when(t["revoked_at"])) for t in tokens]
    show_table(fitted_table(_COLS, rows, width=terminal_width()))


@token_app.command("revoke")
@cli_errors
def revoke(name: Annotated[str, typer.Argument(help="the token's name")], fmt: FormatOpt = Format.table) -> None:
    """Revoke a token at once: its next request gets 401, its dashboard sign-ins end."""
    public = _in_database(lambda s: _public(auth.revoke_token(s, name)))
    if fmt is Format.json:
        print_json(public)
    message(f"revoked token {name!r}; its dashboard sign-ins ended")
