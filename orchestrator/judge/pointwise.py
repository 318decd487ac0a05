"""Pointwise judging, the book's way: one call per (model, item), "Respond with the integer
number only". Kept so new numbers can be set beside old ones; it has the flaw the comparative
mode fixes (each answer is scored alone, so the judge's scale drifts between calls).

The book dropped unparseable answers silently; here they are retried and then counted missing.
"""

from __future__ import annotations

import re
from functools import partial

from orchestrator.judge.prompts import pointwise_messages
from orchestrator.judge.runner import Malformed, Planned
from orchestrator.judge.schemas import Item

# an integer, optionally followed by a full stop: "85" or "85." (what "the integer number only"
# looks like in practice); anything else is malformed
_INTEGER = re.compile(r"^\s*(\d{1,3})\s*\.?\s*$")


def parse_score(text: str) -> int:
    m = _INTEGER.match(text)
    if not m:
        raise Malformed(f"answer is not an integer: {text[:80]!r}")
    score = int(m.group(1))
    if score > 100:
        raise Malformed(f"score {score} is outside 0..100")
    return score


def _parse(model: str, text: str) -> tuple[dict, dict[str, tuple[float, str]]]:
    score = parse_score(text)
    return {"score": score}, {model: (float(score), "")}


def plan(items: list[Item], answers: dict[str, list[str]], *, k: int) -> list[Planned]:
    planned = []
    for repeat in range(k):
        for i, item in enumerate(items):
            for model in sorted(answers):
                planned.append(
                    Planned(
                        item=i,
                        repeat=repeat,
                        order=[model],
                        shuffle_seed=None,
                        messages=pointwise_messages(item, answers[model][i]),
                        json_object=False,
                        parse=partial(_parse, model),
                    )
                )
    return planned
