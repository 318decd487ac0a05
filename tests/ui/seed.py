"""A realistic trainyard database for the dashboard's browser tests, written through the SQLAlchemy
models (orchestrator/db/models.py) into a database migrated by `trainyard db upgrade`.

`seed(db_url)` writes, relative to now:

- featured runs (`Seeded.runs[role]`):
  - `succeeded`: gpt2-small on Lambda, 8 GPUs; 800 train points (one a step) and a val point every
    50 steps; the status spans provisioning, bootstrapping, training, recovering (a lost node),
    training, evaluating; two instances (the lost one and its replacement), each booked; stored
    checkpoints, a test-loss evaluation (bits per byte) and an IFT evaluation with answers; a log;
    a budget (max_usd 60); some events with long unbroken messages (a URI, a traceback line);
  - `peer`: a second succeeded run with IFT answers to the same items (the comparison's other model);
  - `live`: training now on an `ssh` host (an instance still active, no end), 600 points so far and
    a long log; `LiveWriter` (conftest) appends to it while a test watches;
  - `cancelled`, `stopped` (budget: stopped with its test loss), `failed` (one metric point);
  - `big`: a succeeded run with BIG_STEPS train points, more than the series' max_points, with one
    planted minimum (BIG_MIN) and one planted spike (BIG_MAX) that downsampling must keep;
- FILLERS filler runs (every status, the three providers, some with a long name), so the runs
  table pages past 100 rows and the Pareto chart has many finished runs;
- a succeeded comparison of `succeeded` and `peer` with its report (built with the judge's pydantic
  models: scores with CIs, per-item judgements, the position-bias statistics), and a pending one;
- a throughput record of PLAN_SPEC's shape on `local`, so the plan page's `local` row is measured.

Times are recent (the newest run is a minute old), so "created" sorts as the roles above list them.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import insert

from orchestrator.db.models import (
    Checkpoint,
    CheckpointState,
    Comparison,
    ComparisonRequest,
    ComparisonStatus,
    CostEntry,
    Evaluation,
    Instance,
    LogChunk,
    MetricPoint,
    Run,
    RunEvent,
    RunStatus,
    ThroughputRecord,
    utcnow,
)
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.judge.compare import item_set_hash
from orchestrator.judge.schemas import (
    ComparisonReport,
    ConsistencyReport,
    Difference,
    Item,
    ItemReport,
    JudgementRecord,
    JudgeVersion,
    ModelConsistency,
    ModelScore,
    PositionStat,
    ScoreEntry,
    Usage,
)
from orchestrator.spec import parse_spec_yaml, validate_spec

#: what the featured runs train; gpt2-small's tokens per optimizer step (8 GPUs x 64 x 1024)
TOKENS_PER_STEP = 524_288
VAL_EVERY = 50
SUCCEEDED_STEPS = 800
LIVE_STEPS = 600
#: past 32k steps: the series are grouped from the rollups (orchestrator.rollups), as a long run's are
BIG_STEPS = 40_000
BIG_MIN, BIG_MIN_STEP = 1.2345, 27_777
BIG_MAX, BIG_MAX_STEP = 12.5, 15_001
FILLERS = 125
MAX_USD = 60.0
H100_8X_CENTS = 2392  # gpu_8x_h100_sxm5, US cents per hour
A100_8X_CENTS = 1432  # gpu_8x_a100_80gb_sxm4
SSH_CENTS = 0  # the user's own machine: no hourly price
IFT_ITEMS = 6
LONG_TOKEN = "s3://trainyard-artifacts-eu-central-1/" + "/".join(f"segment{i:03d}" for i in range(40))

#: a small spec on the local provider, for the plan page (YAML, as a user pastes it)
PLAN_SPEC = """name: ui-plan-tiny
model: {preset: gpt2-tiny, overrides: {n_layer: 2, n_embd: 64, n_head: 2}}
data: {source: "builtin:corpus", max_tokens: 60000}
training: {seq_len: 64, micro_batch: 8, max_tokens: 12288}
compute: {provider: local}
"""
#: the same spec with three mistakes; the fields the page must name, each
PLAN_BAD_SPEC = """name: ui-plan-bad
model: {preset: gpt2-huge}
training: {seq_len: -5, micro_batch: 8, max_tokens: 12288}
compute: {provider: local, nodez: 1}
"""
PLAN_BAD_FIELDS = ("model.preset", "training.seq_len", "compute.nodez")


@dataclass
class Seeded:
    """What `seed` wrote, for the tests to compare the pages with."""

    runs: dict[str, str] = field(default_factory=dict)  # role -> run id
    names: dict[str, str] = field(default_factory=dict)  # run id -> name
    statuses: dict[str, str] = field(default_factory=dict)  # run id -> status
    providers: dict[str, str] = field(default_factory=dict)  # run id -> provider
    reasons: dict[str, str] = field(default_factory=dict)  # run id -> status reason, where it has one
    status_events: dict[str, list[str]] = field(default_factory=dict)  # run id -> its statuses, in order
    instances: dict[str, list[str]] = field(default_factory=dict)  # run id -> instance names
    checkpoints: dict[str, list[int]] = field(default_factory=dict)  # run id -> steps
    events: dict[str, int] = field(default_factory=dict)  # run id -> number of events
    test_losses: dict[str, float] = field(default_factory=dict)  # finished run id -> test loss
    cost_usd: dict[str, float] = field(default_factory=dict)  # run id -> booked US$
    comparison_id: str = ""
    pending_comparison_id: str = ""
    comparison_models: list[str] = field(default_factory=list)  # labels, in table order
    comparison_scores: dict[str, float] = field(default_factory=dict)  # label -> mean score
    item_scores: dict[str, list[float]] = field(default_factory=dict)  # label -> mean score of each item
    ift_answers: dict[str, list[str]] = field(default_factory=dict)  # run id -> model responses
    ift_items: list[dict] = field(default_factory=list)
    last_log_line: dict[str, str] = field(default_factory=dict)  # run id -> its log's last line

    @property
    def total(self) -> int:
        return len(self.names)

    def count(self, *, status: str | None = None, provider: str | None = None) -> int:
        return sum(
            1
            for rid in self.names
            if (status is None or self.statuses[rid] == status)
            and (provider is None or self.providers[rid] == provider)
        )


def rollups_module():
    """orchestrator.rollups where the checkout has it: the ingest keeps a run's metric rollups
    current as it writes points, so whatever writes points here as the ingest would (the seed,
    the live writer, the UI benchmark) keeps them too; None before the rollups existed."""
    if importlib.util.find_spec("orchestrator.rollups") is None:
        return None
    return importlib.import_module("orchestrator.rollups")


# -- specs ----------------------------------------------------------------------------------------
def _spec(name: str, provider: str, *, preset: str = "gpt2-small", ift: bool = False, max_usd: float | None = None):
    compute: dict = {"provider": provider}
    if provider == "lambda":
        compute |= {
            "instance_type": "gpu_8x_h100_sxm5",
            "fallback_instance_types": ["gpu_8x_a100_80gb_sxm4"],
            "regions": ["us-east-1", "us-west-1"],
            "procs_per_node": 8,
        }
    elif provider == "ssh":
        compute |= {"instance_type": "workstation-4090", "procs_per_node": 1}
    spec = {
        "name": name,
        "model": {"preset": preset},
        "data": {"source": "hf:HuggingFaceFW/fineweb:sample-10BT"},
        "training": {"seq_len": 1024, "micro_batch": 16, "lr": 6.0e-4, "max_tokens": 400_000_000},
        "compute": compute,
        "evaluation": {"test_loss": True, "ift": {"enabled": ift, "limit_test": IFT_ITEMS} if ift else {}},
        "budget": {"max_usd": max_usd, "max_hours": 6} if max_usd is not None else {},
    }
    return validate_spec(spec).model_dump(mode="json")


# -- curves ---------------------------------------------------------------------------------------
def _loss(step: int, rnd: random.Random, floor: float = 3.2) -> float:
    return floor + 7.6 * math.exp(-step / 140) + 0.6 * math.exp(-step / 2500) + rnd.gauss(0, 0.03)


def _lr(step: int, total: int, peak: float = 6e-4) -> float:
    warmup = max(1, total // 40)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def metric_rows(
    run_id: str,
    steps: range,
    *,
    total_steps: int,
    t0: float,
    step_s: float,
    rnd: random.Random,
    tokens_per_step: int = TOKENS_PER_STEP,
    val_every: int = VAL_EVERY,
) -> list[dict]:
    """Metric points as the trainer writes them: a train point every step (time `t0 + step x
    step_s`, unix seconds) and a val point every `val_every` steps."""
    rows = []
    for step in steps:
        t = t0 + step * step_s
        tps = tokens_per_step / step_s * (1 + rnd.gauss(0, 0.02))
        rows.append(
            {
                "run_id": run_id,
                "kind": "train",
                "step": step,
                "tokens": (step + 1) * tokens_per_step,
                "time": t,
                "train_loss": _loss(step, rnd),
                "val_loss": None,
                "lr": _lr(step, total_steps),
                "tokens_per_s": tps,
                "mfu": 0.38 + rnd.gauss(0, 0.01),
                "peak_mem_bytes": 61_000_000_000,
                "wall_s": step * step_s,
            }
        )
        if val_every and step > 0 and step % val_every == 0:
            rows.append(
                {
                    "run_id": run_id,
                    "kind": "val",
                    "step": step,
                    "tokens": (step + 1) * tokens_per_step,
                    "time": t + 0.5,
                    "train_loss": None,
                    "val_loss": _loss(step, rnd) + 0.08,
                    "lr": None,
                    "tokens_per_s": None,
                    "mfu": None,
                    "peak_mem_bytes": None,
                    "wall_s": step * step_s + 0.5,
                }
            )
    return rows


def log_lines(run_id: str, n: int, first_step: int = 0) -> list[str]:
    lines = [f"[rank 0] run {run_id}: torchrun --nproc-per-node 8 -m trainer.train --config train.json"]
    for i in range(n - 1):
        step = first_step + i
        lines.append(
            f"[rank 0] step {step:6d} | loss {3.2 + 7.6 * math.exp(-step / 140):.4f} | lr 6.00e-04 | "
            f"1,048,576 tok/s | mfu 38.1% | mem 56.8 GiB"
        )
    return lines


# -- the writer -----------------------------------------------------------------------------------
class _Writer:
    def __init__(self, session, seeded: Seeded, now: datetime, rnd: random.Random):
        self.s, self.seeded, self.now, self.rnd = session, seeded, now, rnd

    def run(
        self,
        role: str | None,
        name: str,
        status: RunStatus,
        provider: str,
        created: datetime,
        *,
        spec: dict | None = None,
        reason: str | None = None,
        target_tokens: int | None = None,
        tokens_done: int = 0,
        step: int = 0,
        train_loss: float | None = None,
        val_loss: float | None = None,
        tokens_per_s: float | None = None,
        test_loss: float | None = None,
        started: datetime | None = None,
        finished: datetime | None = None,
        world_size: int | None = None,
        recoveries: int = 0,
        stop_reason: str | None = None,
    ) -> Run:
        run = Run(
            id=f"{self.rnd.getrandbits(48):012x}",
            name=name,
            spec=spec or _spec(name, provider),
            status=status.value,
            status_reason=reason,
            cancel_requested=status is RunStatus.cancelled,
            created_at=created,
            updated_at=finished or self.now,
            started_at=started,
            finished_at=finished,
            target_tokens=target_tokens,
            tokens_done=tokens_done,
            step=step,
            train_loss=train_loss,
            val_loss=val_loss,
            tokens_per_s=tokens_per_s,
            test_loss=test_loss,
            world_size=world_size,
            recoveries=recoveries,
            stop_requested_at=finished - timedelta(minutes=3) if stop_reason and finished else None,
            stop_reason=stop_reason,
            artifact_uri=f"file:///var/lib/trainyard/artifacts/runs/{name}" if started else None,
            metrics_offset=0,
            log_offset=0,
            # the spec's compute.provider, kept in a column of its own for the runs list's filter
            **({"provider": provider} if "provider" in Run.__table__.c else {}),
        )
        self.s.add(run)
        self.s.flush()
        sd = self.seeded
        if role:
            sd.runs[role] = run.id
        sd.names[run.id], sd.statuses[run.id], sd.providers[run.id] = name, status.value, provider
        sd.instances[run.id], sd.checkpoints[run.id], sd.events[run.id] = [], [], 0
        if reason:
            sd.reasons[run.id] = reason
        if test_loss is not None and status.is_terminal:
            sd.test_losses[run.id] = test_loss
        return run

    def event(self, run: Run, t: datetime, kind: str, message: str, frm: str | None = None, to: str | None = None):
        self.s.add(RunEvent(run_id=run.id, time=t, kind=kind, message=message, from_status=frm, to_status=to))
        self.seeded.events[run.id] += 1
        if kind == "status" and to:
            self.seeded.status_events.setdefault(run.id, []).append(to)

    def spans(self, run: Run, spans: list[tuple[str, datetime, str]]) -> None:
        """Status events: `spans` is [(to_status, time, message)], from `pending` on."""
        prev = None
        for to, t, message in spans:
            self.event(run, t, "status", message, prev, to)
            prev = to

    def instance(
        self,
        run: Run,
        name: str,
        instance_type: str,
        cents_per_hour: int,
        launched: datetime,
        active: datetime,
        end: datetime | None,
        *,
        rank: int = 0,
        region: str | None = "us-east-1",
    ) -> Instance:
        provider = self.seeded.providers[run.id]
        inst = Instance(
            run_id=run.id,
            rank=rank,
            name=name,
            provider=provider,
            provider_instance_id=f"{self.rnd.getrandbits(64):016x}" if provider == "lambda" else None,
            instance_type=instance_type,
            region=region,
            public_ip=f"203.0.113.{self.rnd.randrange(2, 250)}",
            ssh_port=22,
            price_cents_per_hour=cents_per_hour,
            billing_minute_s=60.0,
            status="terminated" if end else "active",
            workdir=f"/home/ubuntu/trainyard/{run.id}",
            python="/home/ubuntu/trainyard/.venv/bin/python",
            launched_at=launched,
            active_at=active,
            terminate_requested_at=end,
            terminated_at=end + timedelta(seconds=20) if end else None,
        )
        self.s.add(inst)
        self.s.flush()
        self.seeded.instances[run.id].append(name)
        if end is not None:  # booked as the controller books it: every started minute
            minutes = math.ceil((end - active).total_seconds() / 60)
            cents = minutes * cents_per_hour / 60.0
            self.s.add(
                CostEntry(
                    run_id=run.id,
                    instance_id=inst.id,
                    kind="instance",
                    cents=cents,
                    quantity=float(minutes),
                    unit="minute",
                    description=f"{name} ({instance_type}): {minutes} billed minutes",
                    created_at=end + timedelta(seconds=30),
                )
            )
            self.seeded.cost_usd[run.id] = self.seeded.cost_usd.get(run.id, 0.0) + cents / 100.0
        return inst

    def points(self, rows: list[dict]) -> None:
        if rows:
            self.s.execute(insert(MetricPoint), rows)

    def logs(self, run: Run, lines: list[str], start: datetime, every: int = 20) -> None:
        for i in range(0, len(lines), every):
            chunk = lines[i : i + every]
            self.s.add(LogChunk(run_id=run.id, rank=0, text="".join(x + "\n" for x in chunk), time=start))
            start += timedelta(seconds=every)
        self.seeded.last_log_line[run.id] = lines[-1]

    def checkpoints(self, run: Run, steps: list[int], t0: datetime, val: dict[int, float]) -> list[Checkpoint]:
        rows = []
        for step in steps:
            cp = Checkpoint(
                run_id=run.id,
                step=step,
                tokens=(step + 1) * TOKENS_PER_STEP,
                val_loss=val.get(step),
                bytes=1_956_000_000,
                uri=f"{run.artifact_uri}/checkpoints/step_{step:06d}",
                state=CheckpointState.stored.value,
                node_path=f"/home/ubuntu/trainyard/{run.id}/checkpoints/step_{step:06d}",
                stored_at=t0 + timedelta(seconds=step + 40),
                created_at=t0 + timedelta(seconds=step),
            )
            self.s.add(cp)
            rows.append(cp)
            self.seeded.checkpoints[run.id].append(step)
        self.s.flush()
        return rows

    def test_loss(self, run: Run, cp: Checkpoint | None, loss: float, bpb: float, t: datetime) -> None:
        self.s.add(
            Evaluation(
                run_id=run.id,
                checkpoint_id=cp.id if cp else None,
                kind="test_loss",
                test_loss=loss,
                bits_per_byte=bpb,
                tokens=10_485_760,
                test_set_sha256="9f2c" * 16,
                details={"split": "test", "batches": 160},
                created_at=t,
            )
        )

    def ift(self, run: Run, cp: Checkpoint | None, responses: list[str], t: datetime) -> None:
        items = [Item(**i) for i in self.seeded.ift_items]
        answers = [{**i, "model_response": r} for i, r in zip(self.seeded.ift_items, responses, strict=True)]
        self.s.add(
            Evaluation(
                run_id=run.id,
                checkpoint_id=cp.id if cp else None,
                kind="ift",
                details={
                    "summary": {"best_epoch": 2, "epochs_run": 3, "best_val_loss": 1.9312, "n_train": 935},
                    "item_set_hash": item_set_hash(items),
                    "n_items": len(answers),
                    "answers": answers,
                },
                created_at=t,
            )
        )
        self.seeded.ift_answers[run.id] = responses


# -- the featured runs ----------------------------------------------------------------------------
def _finished_run(
    w: _Writer,
    role: str,
    name: str,
    created: datetime,
    steps: int,
    *,
    status: RunStatus = RunStatus.succeeded,
    reason: str | None = None,
    recover_at: int | None = None,
    ift_responses: list[str] | None = None,
    test_loss: float | None = 3.3142,
    stop_reason: str | None = None,
    long_events: bool = False,
    n_logs: int = 200,
    val_every: int = VAL_EVERY,
    step_s: float = 1.5,
    checkpoint_every: int = 200,
    info_every: int = 100,
    adjust=None,
) -> Run:
    rnd = w.rnd
    t_prov = created + timedelta(seconds=4)
    t_boot = t_prov + timedelta(minutes=3)
    t_train = t_boot + timedelta(minutes=5)
    t_end_train = t_train + timedelta(seconds=steps * step_s + (6 * 60 if recover_at else 0))
    t_eval = t_end_train + timedelta(seconds=10)
    t_done = t_eval + timedelta(minutes=4)
    last_loss = _loss(steps - 1, rnd)
    run = w.run(
        role,
        name,
        status,
        "lambda",
        created,
        spec=_spec(name, "lambda", ift=ift_responses is not None, max_usd=MAX_USD),
        reason=stop_reason if status is RunStatus.stopped else reason,
        target_tokens=steps * TOKENS_PER_STEP if status is RunStatus.succeeded else 400_000_000,
        tokens_done=steps * TOKENS_PER_STEP,
        step=steps - 1,
        train_loss=last_loss,
        val_loss=last_loss + 0.08,
        tokens_per_s=TOKENS_PER_STEP / step_s,
        test_loss=test_loss,
        started=t_prov,
        finished=t_done,
        world_size=8,
        recoveries=1 if recover_at else 0,
        stop_reason=stop_reason,
    )
    spans = [
        ("pending", created, "submitted"),
        ("provisioning", t_prov, "placing gpu_8x_h100_sxm5 in us-east-1"),
        ("bootstrapping", t_boot, "1 node active; installing the trainer"),
        ("training", t_train, "torchrun started on 1 node (8 processes)"),
    ]
    t0 = t_train.timestamp()
    inst_end = t_done - timedelta(seconds=30)
    if recover_at:
        t_lost = t_train + timedelta(seconds=recover_at * step_s)
        t_back = t_lost + timedelta(minutes=6)
        spans += [
            ("recovering", t_lost, f"node ty-{run.id}-0 lost (connection reset by peer); replacing it"),
            ("training", t_back, f"resumed from checkpoint step_{recover_at - recover_at % checkpoint_every:06d}"),
        ]
        w.instance(run, f"ty-{run.id}-0", "gpu_8x_h100_sxm5", H100_8X_CENTS, created, t_boot, t_lost)
        w.instance(
            run, f"ty-{run.id}-0r1", "gpu_8x_h100_sxm5", H100_8X_CENTS, t_lost, t_lost + timedelta(minutes=2), inst_end
        )
        rows = metric_rows(run.id, range(recover_at), total_steps=steps, t0=t0, step_s=step_s, rnd=rnd)
        rows += metric_rows(
            run.id,
            range(recover_at, steps),
            total_steps=steps,
            t0=t0 + 6 * 60,
            step_s=step_s,
            rnd=rnd,
            val_every=val_every,
        )
    else:
        w.instance(run, f"ty-{run.id}-0", "gpu_8x_h100_sxm5", H100_8X_CENTS, created, t_boot, inst_end)
        rows = metric_rows(run.id, range(steps), total_steps=steps, t0=t0, step_s=step_s, rnd=rnd, val_every=val_every)
    if adjust is not None:
        adjust(rows)
    w.points(rows)
    spans += [("evaluating", t_eval, "training done; measuring the test loss")]
    final_message = {
        RunStatus.succeeded: "test loss measured; instances terminated",
        RunStatus.stopped: stop_reason or "stopped",
    }.get(status, reason or status.value)
    spans += [(status.value, t_done, final_message)]
    w.spans(run, spans)
    val = {r["step"]: r["val_loss"] for r in rows if r["kind"] == "val"}
    cps = w.checkpoints(run, [s for s in range(checkpoint_every, steps, checkpoint_every)] + [steps - 1], t_train, val)
    for cp in cps:
        w.event(
            run,
            t_train + timedelta(seconds=cp.step * step_s + 40),
            "checkpoint",
            f"checkpoint step {cp.step} stored at {cp.uri}",
        )
    for i in range(0, steps, info_every):
        w.event(run, t_train + timedelta(seconds=i * step_s + 1), "info", f"step {i}: train loss {_loss(i, rnd):.4f}")
    if long_events:  # among the newest, so they are on the first page of events
        w.event(run, t_eval + timedelta(seconds=5), "info", f"artifact store: uploading to {LONG_TOKEN}")
        w.event(
            run,
            t_eval + timedelta(seconds=6),
            "warning",
            "NCCL WARN " + "Call to ibv_reg_mr failed with error Cannot allocate memory;" * 6 + "x" * 300,
        )
    if test_loss is not None:
        w.test_loss(run, cps[-1], test_loss, test_loss / math.log(2) / 4.29, t_done - timedelta(minutes=1))
    if ift_responses is not None:
        w.ift(run, cps[-1], ift_responses, t_done - timedelta(seconds=20))
    w.logs(run, log_lines(run.id, n_logs), t_train)
    return run


def _live_run(w: _Writer, created: datetime) -> Run:
    rnd = w.rnd
    step_s = 2.0
    t_prov = created + timedelta(seconds=3)
    t_boot = t_prov + timedelta(minutes=1)
    t_train = w.now - timedelta(seconds=LIVE_STEPS * step_s)
    last = _loss(LIVE_STEPS - 1, rnd)
    name = "gpt2-small-live"
    run = w.run(
        "live",
        name,
        RunStatus.training,
        "ssh",
        created,
        spec=_spec(name, "ssh", max_usd=MAX_USD),
        target_tokens=2000 * TOKENS_PER_STEP,
        tokens_done=LIVE_STEPS * TOKENS_PER_STEP,
        step=LIVE_STEPS - 1,
        train_loss=last,
        val_loss=last + 0.08,
        tokens_per_s=TOKENS_PER_STEP / step_s,
        started=t_prov,
        world_size=1,
    )
    w.spans(
        run,
        [
            ("pending", created, "submitted"),
            ("provisioning", t_prov, "claiming host workstation-4090"),
            ("bootstrapping", t_boot, "installing the trainer on workstation-4090"),
            ("training", t_train, "torchrun started on 1 node (1 process)"),
        ],
    )
    w.instance(run, f"ty-{run.id}-0", "workstation-4090", 35, created, t_boot, None, region=None)
    w.points(metric_rows(run.id, range(LIVE_STEPS), total_steps=2000, t0=t_train.timestamp(), step_s=step_s, rnd=rnd))
    w.logs(run, log_lines(run.id, 400), t_train)
    return run


def _short_run(w: _Writer, role: str, name: str, status: RunStatus, created: datetime, reason: str, points: int):
    rnd = w.rnd
    t_prov = created + timedelta(seconds=5)
    t_boot = t_prov + timedelta(minutes=2)
    t_train = t_boot + timedelta(minutes=4)
    t_end = t_train + timedelta(seconds=max(points, 1) * 1.5 + 30)
    last = _loss(points - 1, rnd) if points else None
    run = w.run(
        role,
        name,
        status,
        "lambda",
        created,
        spec=_spec(name, "lambda", max_usd=MAX_USD),
        reason=reason,
        target_tokens=400_000_000,
        tokens_done=points * TOKENS_PER_STEP,
        step=max(points - 1, 0),
        train_loss=last,
        tokens_per_s=TOKENS_PER_STEP / 1.5 if points else None,
        started=t_prov,
        finished=t_end,
        world_size=8,
    )
    w.spans(
        run,
        [
            ("pending", created, "submitted"),
            ("provisioning", t_prov, "placing gpu_8x_a100_80gb_sxm4 in us-west-1"),
            ("bootstrapping", t_boot, "1 node active; installing the trainer"),
            ("training", t_train, "torchrun started on 1 node (8 processes)"),
            (status.value, t_end, reason),
        ],
    )
    w.instance(
        run, f"ty-{run.id}-0", "gpu_8x_a100_80gb_sxm4", A100_8X_CENTS, created, t_boot, t_end, region="us-west-1"
    )
    w.points(metric_rows(run.id, range(points), total_steps=800, t0=t_train.timestamp(), step_s=1.5, rnd=rnd))
    w.logs(run, log_lines(run.id, 12) + [reason], t_train, every=5)
    return run


def _big_run(w: _Writer, created: datetime) -> Run:
    """Succeeded, BIG_STEPS train points (no val), with a planted minimum and spike."""

    def plant(rows: list[dict]) -> None:
        for r in rows:
            if r["step"] == BIG_MIN_STEP:
                r["train_loss"] = BIG_MIN
            elif r["step"] == BIG_MAX_STEP:
                r["train_loss"] = BIG_MAX

    return _finished_run(
        w,
        "big",
        "gpt2-small-long",
        created,
        BIG_STEPS,
        test_loss=3.0411,
        n_logs=30,
        val_every=0,
        step_s=0.5,
        checkpoint_every=5000,
        info_every=2000,
        adjust=plant,
    )


# -- fillers --------------------------------------------------------------------------------------
_FILLER_STATUSES = [RunStatus.succeeded] * 5 + [
    RunStatus.failed,
    RunStatus.cancelled,
    RunStatus.stopped,
    RunStatus.pending,
    RunStatus.succeeded,
    RunStatus.training,
]
_PROVIDERS = ["lambda", "lambda", "lambda", "local", "ssh"]


def _fillers(w: _Writer, newest: datetime) -> None:
    rnd = w.rnd
    for i in range(FILLERS):
        status = _FILLER_STATUSES[i % len(_FILLER_STATUSES)]
        provider = _PROVIDERS[i % len(_PROVIDERS)]
        lr = ("1e-4", "3e-4", "6e-4", "1e-3")[i % 4]
        name = f"sweep-lr{lr}-wd0.{i % 3}-{i:03d}"
        if i % 17 == 5:
            name = f"ablation/gpt2-small/lr-{lr}/warmup-2000/wd-0.1/batch-512/seq-1024/fineweb-edu-sample-10bt/seed-{i}"
        created = newest - timedelta(hours=3 + i * 0.62)
        started = created + timedelta(seconds=30) if status is not RunStatus.pending else None
        hours = 0.2 + rnd.random() * 2.5
        finished = started + timedelta(hours=hours) if started and status.is_terminal else None
        target = 400_000_000
        done = {
            RunStatus.succeeded: target,
            RunStatus.pending: 0,
        }.get(status, int(target * rnd.uniform(0.05, 0.9)))
        # a longer run (more US$) reaches a lower loss; this machine and the user's own train tiny models
        floor = 3.05 if provider == "lambda" else 4.1
        loss = floor + 1.3 * math.exp(-hours / 0.9) + rnd.gauss(0, 0.06) if done else None
        test_loss = (
            (loss or 0) + 0.05 if status is RunStatus.succeeded or (status is RunStatus.stopped and i % 2) else None
        )
        reason = {
            RunStatus.failed: "trainer exited 1: CUDA error: an illegal memory access was encountered",
            RunStatus.cancelled: "cancelled by the user",
            RunStatus.stopped: f"budget.max_usd {MAX_USD:g} reached: stopped with a checkpoint",
        }.get(status)
        run = w.run(
            None,
            name,
            status,
            provider,
            created,
            spec=_spec(name, provider, preset="gpt2-small" if provider == "lambda" else "gpt2-tiny"),
            reason=reason,
            target_tokens=target,
            tokens_done=done,
            step=done // TOKENS_PER_STEP,
            train_loss=loss,
            val_loss=loss + 0.07 if loss else None,
            tokens_per_s=rnd.uniform(2e5, 1.2e6) if done else None,
            test_loss=test_loss,
            started=started,
            finished=finished,
            world_size=8 if started else None,
        )
        w.event(run, created, "status", "submitted", None, "pending")
        if started:
            cents = {"lambda": H100_8X_CENTS, "local": 0, "ssh": SSH_CENTS}[provider]
            itype = {"lambda": "gpu_8x_h100_sxm5", "local": "local", "ssh": "workstation-4090"}[provider]
            w.instance(run, f"ty-{run.id}-0", itype, cents, started, started + timedelta(minutes=2), finished)
            w.event(run, started, "status", "placing", "pending", "provisioning")
            if finished:
                w.event(run, finished, "status", reason or "done", "evaluating", status.value)


# -- comparisons ----------------------------------------------------------------------------------
def _items() -> list[dict]:
    topics = ("photosynthesis", "the water cycle", "gravity", "a rainbow", "tides", "volcanoes")
    items = []
    for i in range(IFT_ITEMS):
        if i % 2:
            items.append(
                {"instruction": f"Explain {topics[i]} in one sentence.", "input": "", "output": f"{topics[i]}."}
            )
        else:
            items.append(
                {
                    "instruction": "Rewrite the sentence in the passive voice.",
                    "input": f"The student studied {topics[i]}.",
                    "output": f"{topics[i].capitalize()} was studied by the student.",
                }
            )
    return items


def _comparison(w: _Writer, a: Run, b: Run, now: datetime) -> None:
    rnd = w.rnd
    labels = [a.name, b.name]
    items = [Item(**i) for i in w.seeded.ift_items]
    judge = JudgeVersion(
        mode="comparative",
        model="gpt-4o-2024-08-06",
        template_hash="ab12" * 16,
        item_set_hash=item_set_hash(items),
        k=3,
        seed=0,
    )
    item_reports = []
    by_pos: dict[str, dict[int, list[float]]] = {m: {1: [], 2: []} for m in labels}
    for idx, item in enumerate(items):
        judgements = []
        for repeat in range(3):
            order = labels if (idx + repeat) % 2 == 0 else labels[::-1]
            scores = {}
            for pos, model in enumerate(order, start=1):
                score = float(
                    rnd.choice((40, 50, 60, 70, 80)) + (10 if model == a.name else 0) + (5 if pos == 1 else 0)
                )
                by_pos[model][pos].append(score)
                scores[model] = ScoreEntry(
                    score=score, comments=f"{model} answered item {idx} partly right.", position=pos
                )
            judgements.append(
                JudgementRecord(
                    repeat=repeat, shuffle_seed=idx * 10 + repeat, order=order, scores=scores, attempts=1, cached=False
                )
            )
        item_reports.append(ItemReport(index=idx, instruction=item.instruction, judgements=judgements))
    models = []
    for label, run in zip(labels, (a, b), strict=True):
        allv = by_pos[label][1] + by_pos[label][2]
        mean = sum(allv) / len(allv)
        models.append(
            ModelScore(
                model=label,
                run_id=run.id,
                mean=round(mean, 2),
                ci_low=round(mean - 6.1, 2),
                ci_high=round(mean + 6.1, 2),
                n_items_scored=len(items),
                n_expected=len(items) * 3,
                n_scored=len(items) * 3,
                n_missing=0,
            )
        )
    consistency = ConsistencyReport(
        models=[
            ModelConsistency(
                model=label,
                repeat_means=[m.mean, m.mean - 1.5, m.mean + 1.0],
                repeat_std=1.25,
                mean_item_std=4.1,
                mean_by_position={str(p): sum(v) / len(v) for p, v in by_pos[label].items()},
                position_spread=abs(
                    sum(by_pos[label][1]) / len(by_pos[label][1]) - sum(by_pos[label][2]) / len(by_pos[label][2])
                ),
            )
            for label, m in zip(labels, models, strict=True)
        ],
        positions=[
            PositionStat(position=1, n=len(items) * 3, mean_score=66.0, effect=2.6),
            PositionStat(position=2, n=len(items) * 3, mean_score=61.0, effect=-2.4),
        ],
        position_bias=5.0,
    )
    report_id = "r" + f"{rnd.getrandbits(44):011x}"
    report = ComparisonReport(
        id=report_id,
        created_at=now - timedelta(hours=2),
        judge=judge,
        models=models,
        differences=[
            Difference(
                model_a=labels[0],
                model_b=labels[1],
                mean=models[0].mean - models[1].mean,
                ci_low=3.2,
                ci_high=15.9,
                n_items=len(items),
            )
        ],
        n_expected=len(items) * 3,
        n_missing=0,
        consistency=consistency,
        usage=Usage(
            calls_made=len(items) * 3,
            calls_cached=0,
            input_tokens=21_400,
            output_tokens=3_900,
            paid_input_tokens=21_400,
            paid_output_tokens=3_900,
            cost_cents=9.25,
            booked_cents=9.25,
        ),
        items=item_reports,
    )
    w.s.add(
        Comparison(
            id=report_id,
            mode="comparative",
            judge_model=judge.model,
            judge_version=judge.model_dump(mode="json"),
            models=labels,
            report=report.model_dump(mode="json"),
            created_at=now - timedelta(hours=2),
        )
    )
    w.s.flush()
    cid = "c" + f"{rnd.getrandbits(44):011x}"
    w.s.add(
        ComparisonRequest(
            id=cid,
            status=ComparisonStatus.succeeded.value,
            mode="comparative",
            k=3,
            seed=0,
            models=[
                {"label": label, "run_id": r.id, "baseline": None} for label, r in zip(labels, (a, b), strict=True)
            ],
            report_id=report_id,
            created_at=now - timedelta(hours=2, minutes=5),
            updated_at=now - timedelta(hours=2),
            finished_at=now - timedelta(hours=2),
        )
    )
    pending = "c" + f"{rnd.getrandbits(44):011x}"
    w.s.add(
        ComparisonRequest(
            id=pending,
            status=ComparisonStatus.pending.value,
            mode="pointwise",
            k=2,
            seed=7,
            models=[{"label": a.name, "run_id": a.id, "baseline": None}],
            created_at=now - timedelta(minutes=30),
            updated_at=now - timedelta(minutes=30),
        )
    )
    w.seeded.comparison_id, w.seeded.pending_comparison_id, w.seeded.comparison_models = cid, pending, labels
    w.seeded.comparison_scores = {m.model: m.mean for m in models}
    w.seeded.item_scores = {
        label: [sum(j.scores[label].score or 0.0 for j in r.judgements) / len(r.judgements) for r in item_reports]
        for label in labels
    }


def _plan_record(w: _Writer, now: datetime) -> None:
    """A measured throughput record of PLAN_SPEC's shape on `local`: the plan's row has figures."""
    from orchestrator.planning.plan import workload_of

    shape = workload_of(parse_spec_yaml(PLAN_SPEC)).shape
    w.s.add(
        ThroughputRecord(
            run_id=None,
            source="run",
            provider="local",
            instance_type="local",
            gpu=None,
            nodes=1,
            gpus_per_node=1,
            shape_key=shape.key,
            preset="gpt2-tiny",
            overrides={"n_layer": 2, "n_embd": 64, "n_head": 2},
            seq_len=64,
            precision="auto",
            micro_batch=8,
            params=None,
            flops_per_token=None,
            tokens_per_s=5200.0,
            mfu=None,
            launch_to_first_step_s=12.0,
            eval_s=4.0,
            tokens_trained=12288,
            created_at=now - timedelta(days=1),
        )
    )


def seed(db_url: str, *, seed_value: int = 12) -> Seeded:
    """Write everything above into the migrated database at `db_url`; what was written."""
    engine = make_engine(db_url)
    seeded = Seeded(ift_items=_items())
    now = utcnow()
    w = _Writer(None, seeded, now, random.Random(seed_value))
    try:
        with transaction(make_sessionmaker(engine)) as s:
            w.s = s
            answers_a = [f"Answer {i} of gpt2-small-fineweb: {x['output']}" for i, x in enumerate(seeded.ift_items)]
            answers_b = [
                f"Answer {i} of gpt2-small-peer: maybe {x['output'].lower()}" for i, x in enumerate(seeded.ift_items)
            ]
            # oldest first, so the newest (the live run) is the first row of the default sort
            _fillers(w, now - timedelta(hours=1))
            _big_run(w, now - timedelta(hours=9))
            _short_run(
                w,
                "cancelled",
                "gpt2-small-cancelled",
                RunStatus.cancelled,
                now - timedelta(hours=7),
                "cancelled by the user",
                40,
            )
            _short_run(
                w,
                "failed",
                "gpt2-small-oom",
                RunStatus.failed,
                now - timedelta(hours=6, minutes=30),
                "trainer exited 1 at step 0: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.07 GiB",
                1,
            )
            _finished_run(
                w,
                "stopped",
                "gpt2-small-budget",
                now - timedelta(hours=6),
                300,
                status=RunStatus.stopped,
                test_loss=3.6022,
                stop_reason=f"budget.max_usd {MAX_USD:g}: projected over the cap; stopped with a checkpoint",
                n_logs=60,
            )
            peer = _finished_run(
                w,
                "peer",
                "gpt2-small-peer",
                now - timedelta(hours=5),
                400,
                test_loss=3.4409,
                ift_responses=answers_b,
                n_logs=50,
            )
            featured = _finished_run(
                w,
                "succeeded",
                "gpt2-small-fineweb",
                now - timedelta(hours=4),
                SUCCEEDED_STEPS,
                recover_at=400,
                ift_responses=answers_a,
                long_events=True,
                info_every=3,
            )
            _live_run(w, now - timedelta(minutes=30))
            _comparison(w, featured, peer, now)
            _plan_record(w, now)
            rollups = rollups_module()
            if rollups is not None:  # as the migration backfills them for points already there
                for run_id in seeded.names:
                    rollups.rebuild_rollups(s, run_id)
    finally:
        engine.dispose()
    return seeded
