from __future__ import annotations

from fastapi import APIRouter, Request

from orchestrator.api.schemas import Health
from orchestrator.api.version import VERSION

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(request: Request) -> Health:
    dialect = request.app.state.engine.dialect.name
    return Health(status="ok", version=VERSION, database=dialect)
