"""Routers of `/api/v1`; thin: parse the request, call runs.py / views.py, return a schema.
Who may call which is decided in one place for all of them: api/auth.py's `required_scope`."""

from fastapi import APIRouter

from orchestrator.api.routes import (
    checkpoints,
    comparisons,
    health,
    instance_types,
    instances,
    pareto,
    plans,
    probes,
    runs,
    session,
    throughput,
    tokens,
)

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(health.router)
api_router.include_router(runs.router)
api_router.include_router(checkpoints.router)
api_router.include_router(instance_types.router)
api_router.include_router(instances.router)
api_router.include_router(plans.router)
api_router.include_router(probes.router)
api_router.include_router(throughput.router)
api_router.include_router(comparisons.router)
api_router.include_router(comparisons.answers_router)
api_router.include_router(pareto.router)
api_router.include_router(session.router)
api_router.include_router(tokens.router)
