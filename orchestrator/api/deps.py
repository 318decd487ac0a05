"""Dependencies the routes declare with `Annotated`: the database (see database.py for why routes
get a `Database` rather than a session)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from orchestrator.api.database import Database


# `async def`: FastAPI would run a plain `def` dependency in the thread pool, a hop for nothing.
async def _database(request: Request) -> Database:
    return request.app.state.database


DbDep = Annotated[Database, Depends(_database)]
