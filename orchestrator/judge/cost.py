"""What the judge's tokens cost, and booking it as "judge" cost entries of runs.

The arithmetic is pure. Booking happens once per judgement, at the first comparison that uses it
(the judgement's `cost_booked` flag is claimed in the same transaction that writes the entries),
so a re-run that reads the cache books nothing, and a comparison that crashed after paying for
calls gets them booked when its re-run reads them back.

A comparative call judges every model at once, so its cost is split evenly among the models in
it; a model's share goes to its run. Shares of models that are not runs (a reference model, an
answers file) are reported in the comparison's usage but cannot be booked: a cost entry always
belongs to a run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy.orm import Session

from orchestrator.db.models import CostEntry
from orchestrator.judge import cache
from orchestrator.judge.runner import Verdict
from orchestrator.settings import Settings


@dataclass(frozen=True)
class Prices:
    input_cents_per_mtok: float
    output_cents_per_mtok: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Prices:
        return cls(settings.judge_input_cents_per_mtok, settings.judge_output_cents_per_mtok)


def token_cost_cents(input_tokens: int, output_tokens: int, prices: Prices) -> float:
    return (input_tokens * prices.input_cents_per_mtok + output_tokens * prices.output_cents_per_mtok) / 1_000_000


def run_shares(amount: float, models: list[str], run_ids: dict[str, str]) -> dict[str, float]:
    """`amount` split evenly over `models`; the shares of models that are runs, by run id."""
    shares: dict[str, float] = defaultdict(float)
    for model in models:
        if model in run_ids:
            shares[run_ids[model]] += amount / len(models)
    return dict(shares)


def book(session: Session, verdicts: list[Verdict], run_ids: dict[str, str], prices: Prices, description: str) -> float:
    """Write cost entries for the judgements used that are not booked yet; returns the cents
    booked. Call inside the transaction that stores the comparison."""
    models_of_key = {key: o.planned.order for o in verdicts for key in o.keys}
    cents: dict[str, float] = defaultdict(float)
    tokens: dict[str, float] = defaultdict(float)
    for key, (tin, tout) in cache.claim_unbooked(session, models_of_key).items():
        models = models_of_key[key]
        for run_id, share in run_shares(token_cost_cents(tin, tout, prices), models, run_ids).items():
            cents[run_id] += share
        for run_id, share in run_shares(float(tin + tout), models, run_ids).items():
            tokens[run_id] += share
    for run_id in sorted(cents):
        session.add(
            CostEntry(
                run_id=run_id,
                kind="judge",
                cents=cents[run_id],
                quantity=tokens[run_id],
                unit="tokens",
                description=description,
            )
        )
    return sum(cents.values())
