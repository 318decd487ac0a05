"""`GET /api/v1/throughput`: the throughput records runs and probes left (what `trainyard plan`
estimates from), newest first."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.api.deps import DbDep
from orchestrator.api.throughput_schemas import ThroughputList, ThroughputPublic
from orchestrator.db.models import ThroughputRecord

router = APIRouter(tags=["throughput"])


def list_records(
    session: Session,
    instance_type: str | None,
    shape: str | None,
    run_id: str | None,
    source: str | None,
    limit: int,
) -> ThroughputList:
    query = select(ThroughputRecord)
    if instance_type is not None:
        query = query.where(ThroughputRecord.instance_type == instance_type)
    if shape is not None:
        query = query.where(ThroughputRecord.shape_key == shape)
    if run_id is not None:
        query = query.where(ThroughputRecord.run_id == run_id)
    if source is not None:
        query = query.where(ThroughputRecord.source == source)
    rows = session.scalars(query.order_by(ThroughputRecord.created_at.desc(), ThroughputRecord.id.desc()).limit(limit))
    return ThroughputList(records=[ThroughputPublic.model_validate(r) for r in rows])


@router.get("/throughput", response_model=ThroughputList)
async def get_throughput(
    db: DbDep,
    instance_type: Annotated[str | None, Query(description="only this instance type")] = None,
    shape: Annotated[str | None, Query(description="only this shape key (a plan's shape_key)")] = None,
    run_id: Annotated[str | None, Query(description="only the record of this run or probe")] = None,
    source: Annotated[Literal["run", "probe"] | None, Query(description="only runs' or probes' records")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ThroughputList:
    """Newest first: per record the type, GPU, nodes, shape, micro-batch that ran, steady tokens/s,
    MFU, launch to first step and evaluation time."""
    return await db.read(list_records, instance_type, shape, run_id, source, limit)
