"""From judgements to scores: per-model means with confidence intervals, paired differences,
and the per-item records kept for inspection.

A missing judgement is never a 0 and never silently dropped: it is left out of the mean and
counted in n_missing, and n_scored + n_missing == n_expected always holds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

from orchestrator.judge.runner import Verdict
from orchestrator.judge.schemas import (
    Difference,
    Item,
    ItemReport,
    JudgementRecord,
    ModelScore,
    ScoreEntry,
)
from orchestrator.judge.stats import mean_ci


@dataclass(frozen=True)
class Obs:
    """One model's score in one judgement (None when that judgement is missing)."""

    item: int
    repeat: int
    model: str
    score: float | None
    position: int | None  # 1-based, comparative only
    judgement: int  # index of the verdict it came from


def observations(verdicts: list[Verdict], comparative: bool) -> list[Obs]:
    obs = []
    for j, o in enumerate(verdicts):
        p = o.planned
        for pos, model in enumerate(p.order):
            score = o.scores[model][0] if o.scores is not None else None
            obs.append(Obs(p.item, p.repeat, model, score, pos + 1 if comparative else None, j))
    return obs


def item_scores(obs: list[Obs], model: str) -> dict[int, float]:
    """The model's score per item: the mean over the repeats in which the item was scored."""
    by_item: dict[int, list[float]] = defaultdict(list)
    for o in obs:
        if o.model == model and o.score is not None:
            by_item[o.item].append(o.score)
    return {i: sum(v) / len(v) for i, v in by_item.items()}


def model_scores(obs: list[Obs], models: list[str], run_ids: dict[str, str]) -> list[ModelScore]:
    result = []
    for model in models:
        mine = [o for o in obs if o.model == model]
        per_item = item_scores(obs, model)
        mean, low, high = mean_ci(list(per_item.values()))
        n_scored = sum(o.score is not None for o in mine)
        result.append(
            ModelScore(
                model=model,
                run_id=run_ids.get(model),
                mean=mean,
                ci_low=low,
                ci_high=high,
                n_items_scored=len(per_item),
                n_expected=len(mine),
                n_scored=n_scored,
                n_missing=len(mine) - n_scored,
            )
        )
    return result


def differences(obs: list[Obs], models: list[str]) -> list[Difference]:
    per_model = {m: item_scores(obs, m) for m in models}
    result = []
    for a, b in combinations(models, 2):
        common = sorted(per_model[a].keys() & per_model[b].keys())
        mean, low, high = mean_ci([per_model[a][i] - per_model[b][i] for i in common])
        result.append(Difference(model_a=a, model_b=b, mean=mean, ci_low=low, ci_high=high, n_items=len(common)))
    return result


def item_reports(items: list[Item], verdicts: list[Verdict], comparative: bool) -> list[ItemReport]:
    records: dict[int, list[JudgementRecord]] = defaultdict(list)
    for o in verdicts:
        p = o.planned
        scores = {
            model: ScoreEntry(
                score=o.scores[model][0] if o.scores else None,
                comments=o.scores[model][1] if o.scores else "",
                position=pos + 1 if comparative else None,
            )
            for pos, model in enumerate(p.order)
        }
        records[p.item].append(
            JudgementRecord(
                repeat=p.repeat,
                shuffle_seed=p.shuffle_seed,
                order=p.order,
                scores=scores,
                error=o.error if o.scores is None else None,
                missing_reason=o.missing_reason,
                attempts=o.attempts,
                cached=o.calls_made == 0 and o.calls_cached > 0,
            )
        )
    return [
        ItemReport(
            index=i, instruction=item.instruction, judgements=sorted(records[i], key=lambda r: (r.repeat, r.order))
        )
        for i, item in enumerate(items)
    ]


def missing_counts(verdicts: list[Verdict]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for o in verdicts:
        if o.missing_reason:
            counts[o.missing_reason] += 1
    return dict(counts)
