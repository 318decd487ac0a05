"""A plan: what a run spec would take and cost on each instance type a provider offers now.

Pure functions over plain values, no I/O: the caller brings the spec, the provider's instance
types (one round trip) and the throughput records of the spec's shape (one query,
orchestrator.planning.lookup), so `trainyard plan`, `POST /api/v1/plans`, `submit` and
`instance_type: auto` all estimate the same way.

One row per instance type (types without GPUs are left out where the provider has GPU types; the
local provider's one type stays). A row's throughput comes from, in order of preference:

- `measured`: the median tokens/s of the newest records (priors.RECENT_RECORDS) of this type,
  this shape, this node count and processes per node; micro-batch, setup and evaluation times
  come from the same records;
- `scaled`: the median MFU of the shape's other records (other types, and this type at other
  node counts; each group's recent records counted once, so one type probed a hundred times does
  not outvote the rest) times this type's peak (the GPU table, trainer/gpus.json);
- `prior`: the seed user's published MFU times this type's peak (orchestrator.planning.priors);
- `none`: no record and no known GPU (a CPU, or a GPU the table lacks): no estimate.

The run is estimated as the spec runs it: `compute.procs_per_node` trainer processes on each of
`compute.nodes` nodes, one GPU each, so a type with fewer GPUs than that does not fit and one with
more is billed for GPUs the run leaves idle (the row says so). Wall time is setup (launch, boot,
bootstrap, data) + training (the token budget at the row's tokens/s, plus validation) +
evaluation; cost bills that whole time by the started minute on every node at the listed price
(provision.lambda_cloud.billing), conservatively from the launch, though Lambda starts billing
once the instance is up. Defaults for what was not measured, the memory model and the bands are
documented in priors.py.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.errors import InvalidSpecError
from orchestrator.planning import priors
from orchestrator.planning.rows import Band, Observation, Plan, PlanRow, display_order, mark
from orchestrator.planning.shape import Shape, shape_of
from orchestrator.spec import RunSpec
from provision.base import InstanceType
from provision.lambda_cloud.billing import billed_minutes
from trainer.architecture import CHINCHILLA_TOKENS_PER_PARAM, GPTConfig, count_params, flops_per_token, make_config
from trainer.errors import ConfigError
from trainer.gpus import GPU, gpu_for
from trainer.schema import AUTO_MICRO_BATCH_LIMIT, resolved_dtype

#: OpenAI's GPT-2 weights (`model.pretrained`): the preset whose size they have; tied head, QKV bias
_PRETRAINED = {"gpt2": "gpt2-small", "gpt2-medium": "gpt2-medium"}
#: providers whose machines exist already: no boot wait
_NO_BOOT = ("local", "ssh")


@dataclass(frozen=True)
class Workload:
    """What the spec asks for, whatever the machine."""

    shape: Shape
    model: GPTConfig
    params: int
    flops_per_token: float
    train_tokens: int
    #: what `trainer.prepare` tokenises: the spec's data.max_tokens, or enough for the budget
    data_tokens: int
    test_tokens: int


def workload_of(spec: RunSpec) -> Workload:
    """The spec's model, budget and data in numbers. InvalidSpecError names a field the trainer
    would refuse (an unknown override, a seq_len past the context)."""
    pretrained = spec.model.pretrained
    try:
        if pretrained is not None:
            model = make_config(_PRETRAINED[pretrained], {"tie_weights": True, "qkv_bias": True, "dropout": 0.0})
        else:
            model = make_config(spec.model.preset, dict(spec.model.overrides))
    except ConfigError as exc:
        raise InvalidSpecError(f"model.overrides: {exc}", field="model.overrides") from exc
    t = spec.training
    if t.seq_len > model.block_size:
        raise InvalidSpecError(
            f"training.seq_len: {t.seq_len} exceeds the model's context of {model.block_size} "
            "(set model.overrides.block_size)",
            field="training.seq_len",
        )
    params = count_params(model)
    if pretrained is not None:
        train = 0
    else:
        train = CHINCHILLA_TOKENS_PER_PARAM * params if t.max_tokens == "chinchilla" else int(t.max_tokens)
    d = spec.data
    data = d.max_tokens or math.ceil(train / (1 - d.val_fraction - d.test_fraction))
    test = 0
    if spec.evaluation.test_loss:
        test = int(d.test_fraction * data)
        if spec.evaluation.test_max_tokens is not None:
            test = min(test, spec.evaluation.test_max_tokens) if test else spec.evaluation.test_max_tokens
    return Workload(
        shape=shape_of(spec),
        model=model,
        params=params,
        flops_per_token=flops_per_token(model, t.seq_len),
        train_tokens=train,
        data_tokens=data,
        test_tokens=test,
    )


def make_plan(spec: RunSpec, provider: str, types: Sequence[InstanceType], records: Sequence[Observation]) -> Plan:
    """Every row for `spec` on `provider`'s `types`, from `records` of the spec's shape (any
    order; only this shape's, as orchestrator.planning.lookup loads them)."""
    work = workload_of(spec)
    gpu_based = any(t.gpus > 0 for t in types)
    recent = _recent_groups(records)
    group_mfu = {key: _median([o.mfu for o in obs if o.mfu is not None]) for key, obs in recent.items()}
    rows = [_row(spec, provider, work, t, recent, group_mfu) for t in types if t.gpus > 0 or not gpu_based]
    budget = spec.budget
    for r in rows:
        if r.estimated:
            assert r.usd is not None and r.hours is not None
            r.within_budget = (budget.max_usd is None or r.usd <= budget.max_usd) and (
                budget.max_hours is None or r.hours <= budget.max_hours
            )
    mark(rows)
    rows.sort(key=display_order)
    return Plan(
        provider=provider,
        spec_name=spec.name,
        shape_key=work.shape.key,
        shape=work.shape.describe(),
        params=work.params,
        flops_per_token=work.flops_per_token,
        train_tokens=work.train_tokens,
        max_usd=budget.max_usd,
        max_hours=budget.max_hours,
        records=len(records),
        rows=rows,
    )


_Key = tuple[str, str, int, int]  # (provider, instance type, nodes, processes per node)


def _recent_groups(records: Sequence[Observation]) -> dict[_Key, list[Observation]]:
    """The newest records of each (type, nodes, processes per node), newest first."""
    groups: dict[_Key, list[Observation]] = {}
    for o in sorted(records, key=lambda o: o.created_at, reverse=True):
        group = groups.setdefault((o.provider, o.instance_type, o.nodes, o.gpus_per_node), [])
        if len(group) < priors.RECENT_RECORDS:
            group.append(o)
    return groups


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _row(
    spec: RunSpec,
    provider: str,
    work: Workload,
    t: InstanceType,
    recent: dict[_Key, list[Observation]],
    group_mfu: dict[_Key, float | None],
) -> PlanRow:
    c = spec.compute
    procs = c.procs_per_node
    gpu = gpu_for(t.gpu_description) if t.gpus > 0 else None
    wanted_regions = list(c.regions)
    regions = [r for r in wanted_regions if r in t.regions_with_capacity] if wanted_regions else []
    row = PlanRow(
        instance_type=t.name,
        gpu=gpu.name if gpu else None,
        gpus=t.gpus,
        gpu_description=t.gpu_description,
        nodes=c.nodes,
        procs_per_node=procs,
        price_cents_per_hour=t.price_cents_per_hour,
        regions_with_capacity=regions if wanted_regions else sorted(t.regions_with_capacity),
        fits=True,
        reason=None,
        source="none",
        source_detail="",
    )
    if t.gpus > 0 and procs > t.gpus:
        row.fits = False
        row.reason = f"compute.procs_per_node is {procs}; {t.name} has {t.gpus} GPU(s)"
        return row
    if t.gpus > procs:
        row.notes.append(f"uses {procs} of {t.gpus} GPUs: set compute.procs_per_node: {t.gpus} to use them all")
    if t.gpus > 0 and gpu is None:
        row.notes.append(f"GPU {t.gpu_description!r} is not in trainer/gpus.json: no peak or memory known")
    precision = _precision(spec, gpu_machine=t.gpus > 0)
    if gpu is not None and not gpu.bf16 and precision == "bf16":
        row.notes.append(f"the {gpu.name} has no bf16: bf16 autocast runs far below the fp16 peak used here")
    own = recent.get((provider, t.name, c.nodes, procs), [])
    _micro_batch(spec, work, row, gpu, own, precision)
    if not row.fits:
        return row
    band = _throughput(work, row, gpu, (provider, t.name, c.nodes, procs), recent, group_mfu, precision)
    if band is not None:
        _times_and_cost(spec, provider, work, row, own, band)
    return row


def _precision(spec: RunSpec, *, gpu_machine: bool) -> str:
    """What the trainer resolves `training.dtype` to (trainer.schema.resolved_dtype)."""
    return resolved_dtype(spec.training.dtype, spec.training.recipe, gpu_machine)


def _micro_batch(
    spec: RunSpec, work: Workload, row: PlanRow, gpu: GPU | None, own: list[Observation], precision: str
) -> None:
    """The row's micro-batch per GPU, and whether it fits the GPU's memory (priors' model)."""
    asked = spec.training.micro_batch
    seq = spec.training.seq_len
    if isinstance(asked, int):
        row.micro_batch = asked
    elif own:
        row.micro_batch = own[0].micro_batch  # what the newest run's search found on this type
    elif gpu is not None:
        most = priors.max_micro_batch(work.params, work.model, seq, gpu.memory_gb, precision)
        row.micro_batch = min(most, AUTO_MICRO_BATCH_LIMIT)  # where the trainer's search stops
    if gpu is None or row.micro_batch is None:
        return
    if any(o.micro_batch == row.micro_batch for o in own):
        return  # it ran: the record outranks the model
    if row.micro_batch == 0:
        static = priors.static_bytes(work.params) / priors.GB
        one = priors.activation_bytes_per_sample(work.model, seq, precision) / priors.GB
        row.fits, row.micro_batch = False, None
        row.reason = (
            f"weights, gradients and AdamW states ({static:.1f} GB) plus one sequence of {seq} tokens "
            f"({one:.1f} GB) exceed the {gpu.name}'s {gpu.memory_gb:g} GB"
        )
        return
    row.memory_gb = priors.memory_needed_gb(work.params, work.model, seq, row.micro_batch, precision)
    if row.memory_gb > gpu.memory_gb:
        most = priors.max_micro_batch(work.params, work.model, seq, gpu.memory_gb, precision)
        row.fits = False
        row.reason = (
            f"training.micro_batch {row.micro_batch} needs about {row.memory_gb:.0f} GB per GPU; the "
            f"{gpu.name} has {gpu.memory_gb:g} GB (about {most} fit{', or use auto' if most else ''})"
        )


def _throughput(
    work: Workload,
    row: PlanRow,
    gpu: GPU | None,
    key: _Key,
    recent: dict[_Key, list[Observation]],
    group_mfu: dict[_Key, float | None],
    precision: str,
) -> float | None:
    """Set the row's tokens/s, MFU and source; returns the band's relative half-width (None: no
    estimate)."""
    own = recent.get(key, [])
    peak = None
    if gpu is not None:
        # the trainer's MFU uses the bf16 peak for bf16 and half of it for fp32 (TF32)
        per_gpu = gpu.peak_bf16_flops if precision in ("bf16", "fp16") else gpu.peak_bf16_flops / 2
        peak = per_gpu * row.procs_per_node * row.nodes
    if own:
        tps = [o.tokens_per_s for o in own]
        med = statistics.median(tps)
        row.source, row.records = "measured", len(own)
        row.tokens_per_s = med
        row.mfu = _median([o.mfu for o in own if o.mfu is not None])
        if row.mfu is None and peak:
            row.mfu = med * work.flops_per_token / peak
        spread = max(abs(x / med - 1) for x in tps) if med > 0 else 0.0
        relative = max(priors.MEASURED_MIN_BAND, spread)
        row.source_detail = (
            f"median of the newest {len(own)} record(s) on {row.instance_type} ({row.nodes} node(s) x "
            f"{row.procs_per_node}); band ±{relative:.0%}"
        )
        return relative
    if peak is None:
        row.source_detail = (
            f"no record of this shape on {row.instance_type} and no known GPU peak: run it once "
            "(or probe it) to measure"
        )
        return None
    # every other group counts: other types, and this type at another node count
    others = {k: m for k, m in group_mfu.items() if m is not None and k != key}
    if others:
        mfu = statistics.median(others.values())
        names = sorted({f"{k[1]} ({k[2]} nodes)" if k[2] > 1 else k[1] for k in others})
        count = sum(len(recent[k]) for k in others)
        row.source = "scaled"
        row.source_detail = (
            f"median MFU {mfu:.1%} of {count} record(s) on {', '.join(names[:4])}"
            f"{' and more' if len(names) > 4 else ''} x this type's peak; band ±{priors.SCALED_BAND:.0%}"
        )
        row.records = count
        relative = priors.SCALED_BAND
    else:
        prior = priors.seed_prior()
        mfu = prior.mfu
        row.source = "prior"
        row.source_detail = f"MFU {mfu:.1%} from the {prior.source}; band ±{priors.PRIOR_BAND:.0%}"
        relative = priors.PRIOR_BAND
    row.mfu = mfu
    row.tokens_per_s = mfu * peak / work.flops_per_token
    return relative


def _times_and_cost(
    spec: RunSpec, provider: str, work: Workload, row: PlanRow, own: list[Observation], band: float
) -> None:
    assert row.tokens_per_s is not None
    tps = row.tokens_per_s
    setup = _median([o.launch_to_first_step_s for o in own if o.launch_to_first_step_s is not None])
    if setup is None:
        setup = _default_setup(provider, row) + work.data_tokens / priors.DATA_TOKENS_PER_S
    training = work.train_tokens / tps * (1 + _validation_share(spec, row)) if tps > 0 else 0.0
    evaluation = _median([o.eval_s for o in own if o.eval_s is not None])
    if evaluation is None:
        evaluation = work.test_tokens / (priors.EVAL_SPEEDUP * tps) if tps > 0 else 0.0
        if spec.evaluation.ift.enabled:
            evaluation += priors.IFT_S
    row.setup_s, row.training_s, row.eval_s = setup, training, evaluation
    row.total_s = setup + training + evaluation
    row.billed_minutes = billed_minutes(row.total_s)
    row.usd = _usd(row, row.total_s)
    if work.train_tokens:
        row.usd_per_billion_tokens = row.usd / (work.train_tokens / 1e9)
    row.band = Band(
        relative=band,
        usd_low=_usd(row, row.total_s * (1 - band)),
        usd_high=_usd(row, row.total_s * (1 + band)),
        hours_low=row.total_s * (1 - band) / 3600,
        hours_high=row.total_s * (1 + band) / 3600,
    )


def _usd(row: PlanRow, seconds: float) -> float:
    """Every node billed by the started minute at the listed price."""
    return row.nodes * billed_minutes(seconds) * row.price_cents_per_hour / 60 / 100


def _default_setup(provider: str, row: PlanRow) -> float:
    if provider == "local":
        return priors.LOCAL_SETUP_S
    boot = 0.0
    if provider not in _NO_BOOT:
        boot = priors.BOOT_S_ONE_GPU if row.gpus <= 1 else priors.BOOT_S_MULTI_GPU
    return boot + priors.BOOTSTRAP_S


def _validation_share(spec: RunSpec, row: PlanRow) -> float:
    """Validation during training (eval_tokens every eval_every steps, forward only) as a share
    of the training time; records' tokens/s leave it out, so it is added for every source."""
    t = spec.training
    if not t.eval_every or row.micro_batch is None:
        return 0.0
    tokens_per_step = row.micro_batch * t.grad_accum * row.procs_per_node * row.nodes * t.seq_len
    return t.eval_tokens / (priors.EVAL_SPEEDUP * t.eval_every * tokens_per_step)
