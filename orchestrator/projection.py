"""What a run will have cost when it ends: its ETA and projected final cost, one rule for the API
(`GET /runs`, `trainyard status`) and the controller's budget (controller/budget.py).

- **ETA** = the training left at the run's measured tokens/s (`(target - done) / tokens_per_s`)
  + the test-loss evaluation (the test tokens forward only, at `EVAL_SPEEDUP` x tokens/s)
  + instruction fine-tuning (`IFT_S`) when the spec turns it on. A run asked to stop for its
  budget trains one more step and is not fine-tuned. Unknown (None) until the trainer has
  measured its tokens/s; 0 for an ended run.
- **Projected cost** = cost so far (orchestrator.costs) + the rate of the instances still in use
  x the time each bills until the end: every node while training, node 0 alone while evaluating
  (the others are released when training ends). An instance's rate is its price per billing
  increment (a minute: price per hour / 60) per second of that increment, so a simulator's
  compressed minute bills faster, as its ledger does.

The test tokens are estimated from the spec as the planner does (orchestrator.planning.plan): the
test fraction of the data the trainer's target needs (or of `data.max_tokens`), at most
`evaluation.test_max_tokens`. Pure functions over a run's columns and its spec as stored (a dict),
plus one indexed query (`live_rates`), so reading a run stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from orchestrator.db.models import Instance, RunStatus
from orchestrator.planning.priors import EVAL_SPEEDUP, IFT_S

S = RunStatus
#: statuses in which the trainer has work left
_TRAINING = (S.bootstrapping.value, S.training.value, S.recovering.value)


@dataclass(frozen=True)
class Rates:
    """US cents per second of a run's instances still in use (not asked to terminate)."""

    all_cents_per_s: float = 0.0
    node0_cents_per_s: float = 0.0


def cents_per_s(price_cents_per_hour: float, billing_minute_s: float) -> float:
    """What an instance bills per second: its price per increment over the increment's length."""
    return price_cents_per_hour / 60.0 / (billing_minute_s or 60.0)


@dataclass(frozen=True)
class Eta:
    """Seconds until the run ends: training left, then evaluation on node 0."""

    training_s: float
    evaluation_s: float

    @property
    def total_s(self) -> float:
        return self.training_s + self.evaluation_s

    def cents(self, rates: Rates) -> float:
        """What the instances in use bill until then (billing minutes aside)."""
        return rates.all_cents_per_s * self.training_s + rates.node0_cents_per_s * self.evaluation_s


def test_tokens(spec: Mapping[str, Any], target_tokens: int | None) -> int:
    """The test tokens the evaluation scores (0 without a test loss)."""
    evaluation, data = spec.get("evaluation") or {}, spec.get("data") or {}
    if not evaluation.get("test_loss", True):
        return 0
    val, test = float(data.get("val_fraction", 0.05)), float(data.get("test_fraction", 0.05))
    total = data.get("max_tokens") or ((target_tokens or 0) / max(1e-9, 1 - val - test))
    tokens = int(test * total)
    cap = evaluation.get("test_max_tokens")
    return min(tokens, int(cap)) if cap and tokens else int(cap or tokens)


def eta(
    spec: Mapping[str, Any],
    status: str,
    *,
    target_tokens: int | None,
    tokens_done: int,
    tokens_per_s: float | None,
    test_loss_known: bool,
    stopping: bool = False,
) -> Eta | None:
    """The run's ETA (see the module doc); None while unknown, zero once it has ended."""
    if RunStatus(status).is_terminal:
        return Eta(0.0, 0.0)
    if not tokens_per_s or tokens_per_s <= 0 or not target_tokens:
        return None
    evaluation = spec.get("evaluation") or {}
    training_s = 0.0
    if status in _TRAINING and not stopping:
        training_s = max(0.0, (target_tokens - tokens_done) / tokens_per_s)
    elif status != S.evaluating.value and status not in _TRAINING:
        return None  # pending, provisioning: nothing measured yet
    evaluation_s = 0.0
    if not test_loss_known:
        evaluation_s += test_tokens(spec, target_tokens) / (EVAL_SPEEDUP * tokens_per_s)
    if (evaluation.get("ift") or {}).get("enabled") and not stopping:
        evaluation_s += IFT_S
    return Eta(training_s, evaluation_s)


class RunProgress(Protocol):
    """What `run_eta` reads: a Run, or a plain row of its columns (the API's reads). Read-only
    properties, so a Run's narrower column types satisfy it."""

    @property
    def spec(self) -> Any: ...
    @property
    def status(self) -> str: ...
    @property
    def target_tokens(self) -> int | None: ...
    @property
    def tokens_done(self) -> int | None: ...
    @property
    def tokens_per_s(self) -> float | None: ...
    @property
    def test_loss(self) -> float | None: ...
    @property
    def stop_requested_at(self) -> datetime | None: ...


def run_eta(run: RunProgress) -> Eta | None:
    """`eta` of a run as stored (the API and the controller's budget read the same numbers)."""
    return eta(
        run.spec or {},
        run.status,
        target_tokens=run.target_tokens,
        tokens_done=run.tokens_done or 0,
        tokens_per_s=run.tokens_per_s,
        test_loss_known=run.test_loss is not None,
        stopping=run.stop_requested_at is not None,
    )


def projected_cents(cost_cents: float, rates: Rates, run_eta: Eta | None) -> float | None:
    """Cost so far + what the instances in use bill until the ETA; None while the ETA is unknown."""
    if run_eta is None:
        return None
    return cost_cents + run_eta.cents(rates)


_i = Instance.__table__
# Built once: it runs with every read of a run that has instances in use (see orchestrator.costs).
_IN_USE = select(_i.c.run_id, _i.c.rank, _i.c.price_cents_per_hour, _i.c.billing_minute_s).where(
    _i.c.run_id.in_(bindparam("run_ids", expanding=True)),
    _i.c.terminated_at.is_(None),
    _i.c.terminate_requested_at.is_(None),
)


def live_rates(session: Session, run_ids: Iterable[str]) -> dict[str, Rates]:
    """Each run's Rates, in one indexed query."""
    ids = list(dict.fromkeys(run_ids))
    found: dict[str, tuple[float, float]] = {}
    if ids:
        for row in session.connection().execute(_IN_USE, {"run_ids": ids}):
            total, node0 = found.get(row.run_id, (0.0, 0.0))
            rate = cents_per_s(row.price_cents_per_hour, row.billing_minute_s)
            found[row.run_id] = (total + rate, node0 + (rate if row.rank == 0 else 0.0))
    return {rid: Rates(*found.get(rid, (0.0, 0.0))) for rid in ids}


def rates_of(instances: Iterable[Instance]) -> Rates:
    """Rates from a run's instance rows (a snapshot the controller already holds)."""
    rates = [
        (r.rank, cents_per_s(r.price_cents_per_hour, r.billing_minute_s))
        for r in instances
        if r.terminated_at is None and r.terminate_requested_at is None
    ]
    return Rates(sum(rate for _rank, rate in rates), sum(rate for rank, rate in rates if rank == 0))
