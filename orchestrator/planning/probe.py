"""A probe (`trainyard plan SPEC --probe TYPE`): a short, capped training of the spec's model on
one node of TYPE whose only product is a throughput record (orchestrator.planning.records).

`probe_spec` derives the probe's run spec from the user's; pure, no I/O. What it changes:

- **compute**: one node of TYPE, no fallback types (a probe of another type would measure the
  wrong thing); the spec's provider, regions and processes per node stay.
- **training**: `micro_batch: auto` (the probe learns the micro-batch a run would get), a log
  point every step, no validation during training, only the final checkpoint. The token budget
  is `PROBE_STEPS` optimizer steps at the micro-batch the search is expected to find: on a type
  whose GPU the table knows, what the plan's memory model fits in its memory
  (orchestrator.planning.priors, capped at the search's limit); on a CPU type (and on `local`,
  taken to be a CPU), the CPU search's limit. A search that finds more runs fewer steps, one
  that finds less runs more; either way the steady-state median has about 20 points.
- **data**: `data.max_tokens` just above what that needs: the training tokens over the train
  split's share (1 - val - test fractions) times `DATA_MARGIN`, plus `DATA_SLACK_TOKENS`,
  because prepare deals whole documents and stops before the one that would overflow.
- **evaluation**: off (no test loss, no instruction fine-tuning): a probe measures training.
- **budget**: hard caps. `max_minutes` (default `DEFAULT_MAX_MINUTES`) becomes
  `budget.max_hours`; `max_usd` becomes `budget.max_usd`, by default what the type costs for the
  time cap plus one billing minute (nothing on a free type).

For gpt2-tiny at seq_len 64 on a CPU node that is 24 steps of 16 x 64 tokens (24,576 tokens, about
20 s on one core) on about 74,000 prepared tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orchestrator.errors import InvalidSpecError
from orchestrator.planning import priors
from orchestrator.planning.plan import workload_of
from orchestrator.spec import AUTO_INSTANCE_TYPE, RunSpec, validate_spec
from provision.base import InstanceType
from trainer.gpus import gpu_for
from trainer.schema import AUTO_MICRO_BATCH_LIMIT, AUTO_MICRO_BATCH_LIMIT_CPU

#: optimizer steps a probe trains (a log point each; the first few are warm-up)
PROBE_STEPS = 24
DATA_MARGIN = 1.5
DATA_SLACK_TOKENS = 32_768
DEFAULT_MAX_MINUTES = 30.0
#: checkpoints only at the end: a probe's checkpoint time is not what it measures
_NO_CHECKPOINTS = 1_000_000


def expected_micro_batch(spec: RunSpec, itype: InstanceType) -> int:
    """What `micro_batch: auto` is expected to find on a node of `itype` (see the module doc)."""
    gpu = gpu_for(itype.gpu_description) if itype.gpus > 0 else None
    if gpu is None:
        return AUTO_MICRO_BATCH_LIMIT_CPU
    work = workload_of(spec)
    # `auto` trains in bf16 on a GPU (trainer.train), so only an explicit fp32 is fp32
    precision = "fp32" if spec.training.dtype == "fp32" else "bf16"
    fits = priors.max_micro_batch(work.params, work.model, spec.training.seq_len, gpu.memory_gb, precision)
    return min(AUTO_MICRO_BATCH_LIMIT, max(1, fits))


def default_max_usd(itype: InstanceType, max_minutes: float) -> float | None:
    """The most the time cap can cost on one node (Lambda bills every started minute)."""
    if itype.price_cents_per_hour <= 0:
        return None
    cents = itype.price_cents_per_hour * (max_minutes + 1) / 60
    return math.ceil(cents) / 100


def probe_spec(
    spec: RunSpec,
    instance_type: str,
    offered: Sequence[InstanceType],
    *,
    max_usd: float | None = None,
    max_minutes: float | None = None,
) -> RunSpec:
    """The probe's spec for `instance_type` (one of `offered`, the spec's provider's types).
    InvalidSpecError, naming the field, for what cannot be probed."""
    if spec.model.pretrained is not None:
        raise InvalidSpecError(
            f"model.pretrained: {spec.model.pretrained} is not trained, so there is no training to probe",
            field="model.pretrained",
        )
    if instance_type == AUTO_INSTANCE_TYPE:
        raise InvalidSpecError("instance_type: a probe measures one named type, not auto", field="instance_type")
    itype = next((t for t in offered if t.name == instance_type), None)
    if itype is None:
        names = ", ".join(sorted(t.name for t in offered)) or "none"
        raise InvalidSpecError(
            f"instance_type: provider {spec.compute.provider} offers no type {instance_type!r} (it has: {names})",
            field="instance_type",
        )
    minutes = max_minutes if max_minutes is not None else DEFAULT_MAX_MINUTES
    usd = max_usd if max_usd is not None else default_max_usd(itype, minutes)
    t, d = spec.training, spec.data
    micro_batch = expected_micro_batch(spec, itype)
    train_tokens = PROBE_STEPS * t.seq_len * micro_batch * t.grad_accum * spec.compute.procs_per_node
    data_tokens = math.ceil(train_tokens * DATA_MARGIN / (1 - d.val_fraction - d.test_fraction)) + DATA_SLACK_TOKENS

    raw = spec.model_dump(mode="json")
    raw["name"] = f"probe {instance_type}: {spec.name}"[:200]
    raw["compute"].update(instance_type=instance_type, fallback_instance_types=[], nodes=1)
    raw["training"].update(
        micro_batch="auto",
        max_tokens=train_tokens,
        log_every=1,
        eval_every=0,
        checkpoint_every=_NO_CHECKPOINTS,
        keep_last=1,
    )
    raw["data"]["max_tokens"] = data_tokens
    raw["evaluation"] = {"test_loss": False, "ift": {"enabled": False}}
    raw["budget"] = {"max_usd": usd, "max_hours": minutes / 60}
    return validate_spec(raw)
