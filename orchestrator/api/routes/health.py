from __future__ import annotations

from fastapi import APIRouter, Request

from orchestrator.api.schemas import Health
from orchestrator.api.version import VERSION

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    # no database round trip: this answers "is the process serving", cheaply enough to poll
    return Health(status="ok", version=VERSION, database=request.app.state.engine.dialect.name)
