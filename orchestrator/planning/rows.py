"""What a plan is made of (rows of estimates per instance type) and how rows are ranked: the
cheapest, the fastest, the Pareto frontier, and the choice of `compute.instance_type: auto`.

orchestrator.planning.plan fills the rows; this module only compares them, so the API, the CLI's
`submit` and the controller's placement choose the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from orchestrator.pareto import on_frontier
from orchestrator.spec import AUTO_INSTANCE_TYPE

OBJECTIVES = ("cheapest", "fastest")


@dataclass(frozen=True)
class Observation:
    """One throughput record, as much of it as a plan reads."""

    provider: str
    instance_type: str
    nodes: int
    gpus_per_node: int
    micro_batch: int
    tokens_per_s: float
    mfu: float | None
    launch_to_first_step_s: float | None
    eval_s: float | None
    created_at: datetime


@dataclass(frozen=True)
class Band:
    relative: float
    usd_low: float
    usd_high: float
    hours_low: float
    hours_high: float


@dataclass
class PlanRow:
    instance_type: str
    gpu: str | None
    gpus: int
    gpu_description: str
    nodes: int
    #: trainer processes (GPUs used) per node
    procs_per_node: int
    price_cents_per_hour: int
    #: the regions with capacity now (only the spec's regions when it names some)
    regions_with_capacity: list[str]
    fits: bool
    reason: str | None
    source: str
    source_detail: str
    records: int = 0
    micro_batch: int | None = None
    memory_gb: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    setup_s: float | None = None
    training_s: float | None = None
    eval_s: float | None = None
    total_s: float | None = None
    billed_minutes: int | None = None
    usd: float | None = None
    usd_per_billion_tokens: float | None = None
    band: Band | None = None
    notes: list[str] = field(default_factory=list)
    within_budget: bool | None = None
    cheapest: bool = False
    fastest: bool = False
    frontier: bool = False

    @property
    def estimated(self) -> bool:
        return self.fits and self.usd is not None and self.total_s is not None

    @property
    def hours(self) -> float | None:
        return None if self.total_s is None else self.total_s / 3600


@dataclass
class Plan:
    provider: str
    spec_name: str
    shape_key: str
    shape: str
    params: int
    flops_per_token: float
    train_tokens: int
    max_usd: float | None
    max_hours: float | None
    #: records of this shape the plan read
    records: int
    rows: list[PlanRow]

    def row(self, instance_type: str) -> PlanRow | None:
        return next((r for r in self.rows if r.instance_type == instance_type), None)


def mark(rows: Sequence[PlanRow]) -> None:
    """Mark the cheapest, the fastest and the Pareto frontier (US$ against hours) among the rows
    that fit and have an estimate. A row is on the frontier when no other row is at least as
    cheap and as fast and better in one of the two; equal rows are all on it."""
    done = [r for r in rows if r.estimated]
    for r in rows:
        r.cheapest = r.fastest = r.frontier = False
    if not done:
        return
    min(done, key=lambda r: (r.usd, r.total_s, r.instance_type)).cheapest = True
    min(done, key=lambda r: (r.total_s, r.usd, r.instance_type)).fastest = True
    for r, frontier in zip(done, on_frontier([_usd_hours(r) for r in done]), strict=True):
        r.frontier = frontier


def _usd_hours(r: PlanRow) -> tuple[float, float]:
    assert r.usd is not None and r.total_s is not None
    return (r.usd, r.total_s)


def display_order(r: PlanRow) -> tuple[int, float, str]:
    if r.estimated:
        assert r.usd is not None
        return (0, r.usd, r.instance_type)
    return (1 if r.fits else 2, 0.0, r.instance_type)


def objective_key(objective: str) -> Callable[[PlanRow], tuple[float, float, str]]:
    """Best first: cheapest orders by US$ then hours, fastest by hours then US$ (estimated rows)."""

    def cheapest(r: PlanRow) -> tuple[float, float, str]:
        assert r.usd is not None and r.total_s is not None
        return (r.usd, r.total_s, r.instance_type)

    def fastest(r: PlanRow) -> tuple[float, float, str]:
        assert r.usd is not None and r.total_s is not None
        return (r.total_s, r.usd, r.instance_type)

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    return cheapest if objective == "cheapest" else fastest


def auto_candidates(plan: Plan, objective: str) -> list[PlanRow]:
    """The rows `instance_type: auto` may take: they fit, have an estimate and are within the
    budget; those with capacity now first, each part best first by `objective`. Types without
    capacity now stay as the last resort, so placement waits for them as it waits for any spec's
    types (rather than failing a run because capacity blinked)."""
    fine = sorted((r for r in plan.rows if r.estimated and r.within_budget is not False), key=objective_key(objective))
    return [r for r in fine if r.regions_with_capacity] + [r for r in fine if not r.regions_with_capacity]


@dataclass(frozen=True)
class Choice:
    """The row a spec would run on (None: none), and why, in one line."""

    row: PlanRow | None
    reason: str


def nothing_qualifies(plan: Plan) -> str:
    """One line for an auto spec that no row suits: the cheapest estimate against the budget."""
    estimated = [r for r in plan.rows if r.estimated]
    if not estimated:
        unfit = [r for r in plan.rows if not r.fits]
        why = f" ({unfit[0].instance_type}: {unfit[0].reason})" if unfit else ""
        return f"instance_type auto: no {plan.provider} instance type can run this spec{why}"
    low = min(estimated, key=objective_key("cheapest"))
    assert low.usd is not None and low.hours is not None
    budget = ", ".join(
        part
        for part in (
            f"budget.max_usd {plan.max_usd:g}" if plan.max_usd is not None else "",
            f"budget.max_hours {plan.max_hours:g}" if plan.max_hours is not None else "",
        )
        if part
    )
    return (
        f"instance_type auto: no {plan.provider} instance type fits the budget: the cheapest estimate is "
        f"{low.instance_type} at US${low.usd:,.2f} and {low.hours:.1f} h, over {budget or 'no budget'}"
    )


def choose(plan: Plan, instance_type: str | None, objective: str) -> Choice:
    """The row for a spec's `compute.instance_type`: that type's, auto's pick, or (a spec naming
    none: the local and ssh providers) the first type with capacity, as placement takes it."""
    if instance_type == AUTO_INSTANCE_TYPE:
        ranked = auto_candidates(plan, objective)
        if not ranked:
            return Choice(None, nothing_qualifies(plan))
        best = ranked[0]
        assert best.usd is not None and best.hours is not None
        where = ", ".join(best.regions_with_capacity) or "no region now (placement waits for capacity)"
        runner_up = f"; next: {ranked[1].instance_type} at US${ranked[1].usd:,.2f}" if len(ranked) > 1 else ""
        return Choice(
            best,
            f"instance_type auto chose {best.instance_type} ({objective}): about US${best.usd:,.2f} and "
            f"{best.hours:.1f} h ({best.source}), within the budget, capacity in {where}{runner_up}",
        )
    if instance_type:
        row = plan.row(instance_type)
        return Choice(row, "" if row else f"{plan.provider} does not offer instance type {instance_type!r}")
    usable = [r for r in plan.rows if r.regions_with_capacity] or list(plan.rows)
    return Choice(usable[0] if usable else None, "" if usable else f"{plan.provider} offers no instance type")
