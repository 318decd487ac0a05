"""The throughput records a plan reads: one query per plan for every record of the spec's shape
(any provider, any type: another type's MFU is evidence too), newest first, as plain values
(orchestrator.planning.rows.Observation), so the estimator itself never touches the database.

The table's index leads with instance_type, so this reads the shape's rows by a scan; at the
thousands of records a deployment gathers that is a few milliseconds (benchmarks/plan)."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from orchestrator.db.models import ThroughputRecord
from orchestrator.planning.rows import Observation

_t = ThroughputRecord.__table__

# Built once, Core not ORM: a plan reads up to thousands of rows, and ORM objects would cost more
# than the query (benchmarks/plan).
_OF_SHAPE = (
    select(
        _t.c.provider,
        _t.c.instance_type,
        _t.c.nodes,
        _t.c.gpus_per_node,
        _t.c.micro_batch,
        _t.c.tokens_per_s,
        _t.c.mfu,
        _t.c.launch_to_first_step_s,
        _t.c.eval_s,
        _t.c.created_at,
    )
    .where(_t.c.shape_key == bindparam("shape_key"))
    .order_by(_t.c.created_at.desc(), _t.c.id.desc())
)


def records_of_shape(session: Session, shape_key: str) -> list[Observation]:
    """Every record of the shape, newest first."""
    return [Observation(**row._asdict()) for row in session.connection().execute(_OF_SHAPE, {"shape_key": shape_key})]
