"""`POST /api/v1/plans/probes`: measure a spec on one instance type with a short, capped training
(orchestrator.planning.probe derives its spec); `GET /api/v1/plans/probes/{run_id}`: the probe,
its throughput record once it ended, and its instance (terminated, booked).

A probe is an ordinary run with `purpose: probe`, created by the same `create_run` as any other:
the controller places, bootstraps, trains, terminates and books it like every run, and writes
its record (source `probe`) when it ends.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.api import views
from orchestrator.api.deps import CallerDep, DbDep
from orchestrator.api.routes.instance_types import provider_instance_types
from orchestrator.api.throughput_schemas import ProbeCreate, ProbeInstance, ProbePublic, ThroughputPublic
from orchestrator.db.models import CostEntry, Instance, Run, ThroughputRecord
from orchestrator.errors import NotFoundError
from orchestrator.planning.probe import probe_spec
from orchestrator.runs import create_run
from orchestrator.spec import RunSpec, parse_spec_yaml, validate_spec

router = APIRouter(prefix="/plans/probes", tags=["plans"])

PROBE = "probe"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ProbePublic,
    responses={
        422: {"description": "the spec is invalid, cannot be probed, or the type is not the provider's"},
        502: {"description": "the provider could not be asked for its instance types"},
    },
)
async def start_probe(body: ProbeCreate, request: Request, db: DbDep, caller: CallerDep) -> ProbePublic:
    """Submit a probe run: one node of the type, `micro_batch: auto`, a few dozen steps, no
    evaluation, capped by max_usd and max_minutes. Follow it with `GET /plans/probes/{run_id}`."""
    spec = parse_spec_yaml(body.spec) if isinstance(body.spec, str) else validate_spec(body.spec)
    provider = spec.compute.provider
    offered = await anyio.to_thread.run_sync(provider_instance_types, provider, request.app.state.settings)
    probe = probe_spec(spec, body.instance_type, offered, max_usd=body.max_usd, max_minutes=body.max_minutes)
    return await db.write(_create, probe, caller.name)


@router.get("/{run_id}", response_model=ProbePublic, responses={404: {"description": "no probe with this id"}})
async def get_probe(run_id: str, db: DbDep) -> ProbePublic:
    return await db.read(_read, run_id)


def _create(session: Session, spec: RunSpec, submitted_by: str) -> ProbePublic:
    run = create_run(session, spec, submitted_by)
    run.purpose = PROBE  # in the creating transaction: no worker ever sees it as a user's run
    session.flush()
    return probe_public(session, run)


def _read(session: Session, run_id: str) -> ProbePublic:
    run = session.get(Run, run_id)
    if run is None or run.purpose != PROBE:
        raise NotFoundError(f"no probe with id {run_id!r}")
    return probe_public(session, run)


def probe_public(session: Session, run: Run) -> ProbePublic:
    spec: dict[str, Any] = run.spec
    start: dict[str, Any] = run.trainer_start or {}
    record = session.scalar(select(ThroughputRecord).where(ThroughputRecord.run_id == run.id))
    rows = session.scalars(select(Instance).where(Instance.run_id == run.id).order_by(Instance.rank, Instance.id))
    booked = {
        e.instance_id: e.cents
        for e in session.scalars(select(CostEntry).where(CostEntry.run_id == run.id, CostEntry.kind == "instance"))
    }
    return ProbePublic(
        run=views.run_detail(session, run),
        instance_type=spec["compute"]["instance_type"],
        train_tokens=spec["training"]["max_tokens"],
        micro_batch=start.get("micro_batch"),
        steps=start.get("total_steps"),
        max_usd=spec["budget"]["max_usd"],
        max_hours=spec["budget"]["max_hours"],
        record=ThroughputPublic.model_validate(record) if record is not None else None,
        instances=[
            ProbeInstance(
                name=r.name,
                instance_type=r.instance_type,
                region=r.region,
                terminated=r.terminated_at is not None,
                cost_cents=booked.get(r.id),
            )
            for r in rows
        ],
    )
