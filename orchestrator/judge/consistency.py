"""Is a difference between models real? Two ways a judge can mislead, measured per comparison.

- Repeats: the same comparison judged K times (fresh shuffles) should give the same numbers.
  `repeat_std` is how much a model's headline mean moves between repeats, `mean_item_std` how
  much one item's score moves. A gap between two models smaller than these is noise.
- Position bias: with the order shuffled, a fair judge's score does not depend on where an
  answer is shown. The effect of a position is the mean, over all judgements shown there, of
  score - (the model's overall mean) - (that judgement's mean - the grand mean): the model's
  quality and the item's difficulty (shared by every answer in one call) are taken out, and what
  is left is the position's own pull. Every position is present in every call, so the effects
  sum to ~0 and their spread (`position_bias`) is the size of the bias in score points.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean

from orchestrator.judge.schemas import ConsistencyReport, ModelConsistency, PositionStat
from orchestrator.judge.scoring import Obs
from orchestrator.judge.stats import mean_or_none, sample_std


def _spread(values: list[float]) -> float | None:
    return max(values) - min(values) if values else None


def _model_consistency(obs: list[Obs], model: str, k: int) -> ModelConsistency:
    mine = [(o, o.score) for o in obs if o.model == model and o.score is not None]
    repeat_means = [mean_or_none([s for o, s in mine if o.repeat == r]) for r in range(k)]
    by_item: dict[int, list[float]] = defaultdict(list)
    by_pos: dict[int, list[float]] = defaultdict(list)
    for o, s in mine:
        by_item[o.item].append(s)
        if o.position is not None:
            by_pos[o.position].append(s)
    item_stds = [s for s in (sample_std(v) for v in by_item.values()) if s is not None]
    mean_by_position = {str(p): sum(v) / len(v) for p, v in sorted(by_pos.items())}
    return ModelConsistency(
        model=model,
        repeat_means=repeat_means,
        repeat_std=sample_std([m for m in repeat_means if m is not None]),
        mean_item_std=mean_or_none(item_stds),
        mean_by_position=mean_by_position,
        position_spread=_spread(list(mean_by_position.values())),
    )


def _positions(obs: list[Obs]) -> list[PositionStat]:
    scored = [(o, o.score, o.position) for o in obs if o.score is not None and o.position is not None]
    if not scored:
        return []
    grand = sum(s for _o, s, _p in scored) / len(scored)
    model_mean = {m: fmean([s for o, s, _p in scored if o.model == m]) for m in {o.model for o, _s, _p in scored}}
    by_judgement: dict[int, list[float]] = defaultdict(list)
    for o, s, _p in scored:
        by_judgement[o.judgement].append(s)
    call_mean = {j: sum(v) / len(v) for j, v in by_judgement.items()}
    raw: dict[int, list[float]] = defaultdict(list)
    effects: dict[int, list[float]] = defaultdict(list)
    for o, s, p in scored:
        raw[p].append(s)
        effects[p].append(s - model_mean[o.model] - (call_mean[o.judgement] - grand))
    return [
        PositionStat(position=p, n=len(raw[p]), mean_score=mean_or_none(raw[p]), effect=mean_or_none(effects[p]))
        for p in sorted(raw)
    ]


def consistency(obs: list[Obs], models: list[str], k: int) -> ConsistencyReport:
    positions = _positions(obs)
    return ConsistencyReport(
        models=[_model_consistency(obs, m, k) for m in models],
        positions=positions,
        position_bias=_spread([p.effect for p in positions if p.effect is not None]),
    )
