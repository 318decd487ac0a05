"""Throughput records: what a run that trained measured, written once, when it ends.

`measure` builds the record of a run that ends `succeeded` or `stopped` after training (a user's
run, or a probe of `trainyard plan --probe`); `steps.end_run` writes it in the transaction that
ends the run. What goes in:

- **tokens/s**: the steady state, all nodes together: the median of the run's `train` metric
  points' tokens/s, leaving out the warm-up (the first `WARMUP_POINTS` log points or the first
  `WARMUP_FRACTION` of them, whichever is more: allocator warm-up, cold caches, lazy CUDA
  kernels). The trainer already leaves evaluation and checkpoint time out of each point.
- **micro-batch**, FLOPs per token and parameters: from the trainer's `start` line
  (`Run.trainer_start`, kept by the controller's ingest), so `micro_batch: auto` records the
  value its search found.
- **MFU**: FLOPs per token x tokens/s / (nodes x GPUs per node x the GPU's dense bf16 peak, from
  trainer/gpus.json); null when the type's GPU is not in the table (a CPU type, `local`).
- **launch to first step**: the trainer's first start minus the run's `started_at` (when
  provisioning began): boot, bootstrap and data preparation together.
- **eval_s**: the `evaluating` stage's wall time, null when the run was not evaluated.

Type hints only from the controller (RunContext): the controller imports this module, never the
other way round (tests/test_import_rules.py).
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.db.models import Instance, MetricPoint, Run, RunEvent, RunStatus, ThroughputRecord, aware, utcnow
from orchestrator.planning.shape import shape_of
from orchestrator.spec import RunSpec
from provision.base import Provider
from trainer.architecture import count_params, flops_per_token, make_config
from trainer.gpus import GPU, gpu_for

if TYPE_CHECKING:  # pragma: no cover - type hints only
    from orchestrator.controller.context import RunContext

log = logging.getLogger("trainyard.controller")

#: a write that goes into the transaction that ends the run (orchestrator.controller.outcomes.Record)
Record = Callable[[Session, Run], None]
#: the endings a run is measured at: a graceful budget stop trained as far as it went, so its
#: throughput is as good as a finished run's; a failed or cancelled run may have been sick
RECORDED_ENDINGS = frozenset({RunStatus.succeeded, RunStatus.stopped})
WARMUP_POINTS = 2
WARMUP_FRACTION = 0.10
#: Lambda's type names: gpu_8x_h100_sxm5 (the fallback when the provider cannot be asked)
_LAMBDA_NAME = re.compile(r"gpu_(\d+)x_(.+)")


def steady_tokens_per_s(rates: Sequence[float | None]) -> float | None:
    """The median of the log points' tokens/s (in step order) after the warm-up; with too few
    points, of every point after the first; with one, that one. None when there is none."""
    values = [r for r in rates if r is not None and r > 0]
    if not values:
        return None
    skip = max(WARMUP_POINTS, math.ceil(len(values) * WARMUP_FRACTION))
    kept = values[skip:] if len(values) > skip else values[1:] or values
    return float(statistics.median(kept))


@dataclass(frozen=True)
class Hardware:
    gpu: GPU | None
    gpus_per_node: int


def hardware_of(provider: Provider, instance_type: str, procs_per_node: int) -> Hardware:
    """The type's GPU and GPUs per node: from the provider's catalog (one call), else from a
    Lambda-style name. A type without GPUs (a CPU type) or unknown counts its trainer processes,
    which is what ran; `local` is whatever this machine is, so its GPU is not known."""
    if provider.name == "local":
        return Hardware(None, procs_per_node)
    gpu: GPU | None = None
    gpus = 0
    try:
        offered = {t.name: t for t in provider.instance_types()}
    except Exception as exc:  # noqa: BLE001 - any failure: fall back on the name, below
        log.warning("instance types of %s not available for a throughput record: %s", provider.name, exc)
        offered = {}
    found = offered.get(instance_type)
    if found is not None:
        gpu, gpus = gpu_for(found.gpu_description), found.gpus
    elif (m := _LAMBDA_NAME.fullmatch(instance_type)) is not None:
        gpu, gpus = gpu_for(m[2].replace("_", " ")), int(m[1])
    return Hardware(gpu, gpus if gpus > 0 else procs_per_node)


def mfu_of(flops: float, tokens_per_s: float, nodes: int, hw: Hardware) -> float | None:
    if hw.gpu is None:
        return None
    return flops * tokens_per_s / (nodes * hw.gpus_per_node * hw.gpu.peak_bf16_flops)


@dataclass(frozen=True)
class _Read:
    """What the database holds of the run now (the caller's snapshot may predate the last metrics)."""

    rates: list[float | None]
    trainer_start: dict
    started_at_s: float | None
    eval_began_s: float | None
    instance_type: str | None


def _read(ctx: RunContext, run_id: str) -> _Read | None:
    with ctx.factory() as session:
        run = session.get(Run, run_id)
        if run is None:
            return None
        rates = session.scalars(
            select(MetricPoint.tokens_per_s)
            .where(MetricPoint.run_id == run_id, MetricPoint.kind == "train")
            .order_by(MetricPoint.step, MetricPoint.id)
        ).all()
        eval_began = session.scalar(
            select(func.min(RunEvent.time)).where(
                RunEvent.run_id == run_id,
                RunEvent.kind == "status",
                RunEvent.to_status == RunStatus.evaluating.value,
            )
        )
        # rank 0's type: the one the run really got (after fallbacks); every node has the same
        instance_type = session.scalar(
            select(Instance.instance_type).where(Instance.run_id == run_id).order_by(Instance.rank, Instance.id)
        )
        started = aware(run.started_at)
        return _Read(
            rates=list(rates),
            trainer_start=dict(run.trainer_start or {}),
            started_at_s=started.timestamp() if started is not None else None,
            eval_began_s=aware(eval_began).timestamp() if eval_began is not None else None,
            instance_type=instance_type,
        )


def measure(ctx: RunContext, run: Run) -> Record | None:
    """The write that adds the run's throughput record, or None when there is nothing to record
    (a pretrained model, no train points, no micro-batch known). Reads the database and may ask
    the provider for its types, so it runs outside any transaction. Never raises: a record is a
    by-product, never in the way of ending the run."""
    try:
        return _measure(ctx, run)
    except Exception:  # see the docstring; the log keeps the traceback
        log.warning("run %s: no throughput record", run.id, exc_info=True)
        return None


def _measure(ctx: RunContext, run: Run) -> Record | None:
    spec = RunSpec.model_validate(run.spec)
    if spec.model.pretrained:
        return None
    read = _read(ctx, run.id)
    if read is None:
        return None
    tokens_per_s = steady_tokens_per_s(read.rates)
    if tokens_per_s is None:
        return None
    start = read.trainer_start
    micro_batch = start.get("micro_batch", spec.training.micro_batch)
    if not isinstance(micro_batch, int):
        return None  # `auto` with no start line seen: what ran is unknown
    flops, params = start.get("flops_per_token"), start.get("params")
    if flops is None or params is None:  # a trainer older than these fields: the same arithmetic
        cfg = make_config(spec.model.preset, spec.model.overrides)
        flops = flops if flops is not None else flops_per_token(cfg, spec.training.seq_len)
        params = params if params is not None else count_params(cfg)
    instance_type = read.instance_type or spec.compute.instance_type or ctx.provider.name
    hw = hardware_of(ctx.provider, instance_type, spec.compute.procs_per_node)
    first = start.get("first_time")
    launch_s = (
        max(0.0, float(first) - read.started_at_s) if first is not None and read.started_at_s is not None else None
    )
    shape = shape_of(spec)
    values = dict(
        source="probe" if run.purpose == "probe" else "run",
        provider=spec.compute.provider,
        instance_type=instance_type,
        gpu=hw.gpu.name if hw.gpu is not None else None,
        nodes=spec.compute.nodes,
        gpus_per_node=hw.gpus_per_node,
        shape_key=shape.key,
        preset=shape.preset,
        overrides=dict(shape.overrides),
        seq_len=shape.seq_len,
        precision=shape.precision,
        micro_batch=micro_batch,
        params=int(params),
        flops_per_token=float(flops),
        tokens_per_s=tokens_per_s,
        mfu=mfu_of(float(flops), tokens_per_s, spec.compute.nodes, hw),
        launch_to_first_step_s=launch_s,
    )

    def write(session: Session, fresh: Run) -> None:
        if session.scalar(select(ThroughputRecord.id).where(ThroughputRecord.run_id == fresh.id)) is not None:
            return  # written by an earlier try at ending the run
        end = (aware(fresh.finished_at) or utcnow()).timestamp()  # the run ends in this transaction
        eval_s = max(0.0, end - read.eval_began_s) if read.eval_began_s is not None else None
        session.add(ThroughputRecord(run_id=fresh.id, eval_s=eval_s, tokens_trained=fresh.tokens_done, **values))

    return write
