"""`POST /api/v1/plans`: what a run spec would take and cost on each instance type, before any
money is spent. No side effects: it asks the provider for its types (one round trip, on a
thread: it blocks) and reads the throughput records of the spec's shape (one query); the
estimate itself is orchestrator.planning's pure functions.

`trainyard plan` shows the answer, `trainyard submit` checks the budget against it, and the
controller makes the same plan for `compute.instance_type: auto`.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request

from orchestrator.api.deps import DbDep
from orchestrator.api.plan_schemas import PlanChoice, PlanCreate, PlanPublic, PlanRowPublic
from orchestrator.api.routes.instance_types import provider_instance_types
from orchestrator.planning.lookup import records_of_shape
from orchestrator.planning.plan import make_plan, workload_of
from orchestrator.planning.rows import Plan, choose
from orchestrator.spec import RunSpec, parse_spec_yaml, validate_spec

router = APIRouter(tags=["plans"])


@router.post(
    "/plans",
    response_model=PlanPublic,
    responses={
        422: {"description": "the spec is invalid (the field is named), or the provider is unknown or unconfigured"},
        502: {"description": "the provider could not be asked for its instance types"},
    },
)
async def make_a_plan(body: PlanCreate, request: Request, db: DbDep) -> PlanPublic:
    """One row per instance type: GPUs, price, capacity now, micro-batch, tokens/s, MFU, wall
    time (setup, training, evaluation), US$ with a band, where the throughput comes from, and
    the cheapest, fastest and Pareto-frontier rows marked."""
    spec = _spec(body.spec)
    work = workload_of(spec)  # an impossible model is a 422 before the provider is asked
    provider = body.provider or spec.compute.provider
    types = await anyio.to_thread.run_sync(provider_instance_types, provider, request.app.state.settings)
    records = await db.read(records_of_shape, work.shape.key)
    return plan_public(make_plan(spec, provider, types, records), spec)


def _spec(raw: str | dict[str, Any]) -> RunSpec:
    return parse_spec_yaml(raw) if isinstance(raw, str) else validate_spec(raw)


def plan_public(plan: Plan, spec: RunSpec) -> PlanPublic:
    choice = choose(plan, spec.compute.instance_type, spec.compute.objective)
    return PlanPublic(
        provider=plan.provider,
        spec_name=plan.spec_name,
        shape_key=plan.shape_key,
        shape=plan.shape,
        params=plan.params,
        flops_per_token=plan.flops_per_token,
        train_tokens=plan.train_tokens,
        max_usd=plan.max_usd,
        max_hours=plan.max_hours,
        records=plan.records,
        instance_type=spec.compute.instance_type,
        objective=spec.compute.objective,
        chosen=PlanChoice(instance_type=choice.row.instance_type if choice.row else None, reason=choice.reason),
        rows=[PlanRowPublic.model_validate(r) for r in plan.rows],
    )
