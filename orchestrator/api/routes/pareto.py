"""`GET /pareto`: test loss against US$ over every finished run, the frontier marked."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api import dashboard_schemas as ds
from orchestrator.api import dashboard_views
from orchestrator.api.deps import DbDep

router = APIRouter(prefix="/pareto", tags=["runs"])


@router.get("", response_model=ds.Pareto)
async def get_pareto(db: DbDep) -> ds.Pareto:
    """Every succeeded or stopped run with a test loss: its cost (US$) and test loss, and whether
    it is on the Pareto frontier (no other run at least as cheap and as good, better in one)."""
    return await db.read(dashboard_views.pareto)
