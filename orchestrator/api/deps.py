"""Dependencies the routes declare with `Annotated`: the database (see database.py for why routes
get a `Database` rather than a session), the settings, and who is calling (api/auth.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from orchestrator.api.database import Database
from orchestrator.auth import Caller
from orchestrator.settings import Settings


# `async def`: FastAPI would run a plain `def` dependency in the thread pool, a hop for nothing.
async def _database(request: Request) -> Database:
    return request.app.state.database


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _caller(request: Request) -> Caller:
    # AuthMiddleware sets it on every request that needs a scope, which is every one using this
    return request.state.caller


DbDep = Annotated[Database, Depends(_database)]
SettingsDep = Annotated[Settings, Depends(_settings)]
CallerDep = Annotated[Caller, Depends(_caller)]
