"""Comparative judging: one call per item and repeat, every model's answer in a shuffled order.

The order is shuffled per item and per repeat with a seed derived from the comparison's seed, the
item index and the repeat index (recorded in the report), so a comparison is reproducible (and a
re-run finds its calls in the cache) while every model is shown in every position across items
and repeats. The judge answers JSON keyed by label; the answer is validated (every label present,
no others, each score a number in [0, 100]) and the labels are mapped back to the models.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from functools import partial
from typing import Annotated

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from orchestrator.judge.prompts import comparative_messages, label
from orchestrator.judge.runner import Malformed, Planned
from orchestrator.judge.schemas import Item


class LabelScore(BaseModel):
    # strict: a score written as a string or a boolean is malformed, not coerced
    score: Annotated[float, Field(ge=0, le=100, strict=True, allow_inf_nan=False)]
    comments: str | None = ""  # a judge that writes null here has still scored


_ANSWER = TypeAdapter(dict[str, LabelScore])
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def shuffle_seed(seed: int, item: int, repeat: int) -> int:
    digest = hashlib.sha256(f"trainyard-judge/{seed}/{item}/{repeat}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def shuffled(models: list[str], seed: int) -> list[str]:
    # sorted first, so the order depends on the seed only, not on how the caller listed models
    order = sorted(models)
    random.Random(seed).shuffle(order)
    return order


def _norm(label_text: str) -> str:
    # "Model 1", "model_1", "MODEL1" name the same label; judges vary in how they write keys
    return re.sub(r"[\s_\-]", "", label_text).lower()


def parse_labels(text: str, n: int) -> dict[str, LabelScore]:
    """Validate a comparative answer for `n` labels; returns {"Model k": LabelScore}."""
    m = _FENCE.match(text)
    body = m.group(1) if m else text
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise Malformed(f"answer is not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(data, dict):
        raise Malformed(f"answer is JSON {type(data).__name__}, not an object")
    expected = {_norm(label(i)): label(i) for i in range(n)}
    renamed: dict[str, object] = {}
    for key, value in data.items():
        if _norm(str(key)) not in expected:
            raise Malformed(f"answer has an unknown label {key!r} (expected Model 1..Model {n})")
        renamed[expected[_norm(str(key))]] = value
    missing = [lab for lab in expected.values() if lab not in renamed]
    if missing:
        raise Malformed(f"answer lacks {', '.join(missing)}")
    try:
        return _ANSWER.validate_python(renamed)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Malformed(f"answer invalid at {where}: {first['msg']}") from None


def parse(order: list[str], text: str) -> tuple[dict, dict[str, tuple[float, str]]]:
    """(the validated answer by label, {model: (score, comments)}) for answers shown in `order`."""
    by_label = parse_labels(text, len(order))
    stored = {lab: v.model_dump() for lab, v in by_label.items()}
    scores = {model: (by_label[label(i)].score, by_label[label(i)].comments or "") for i, model in enumerate(order)}
    return stored, scores


def plan(items: list[Item], answers: dict[str, list[str]], *, k: int, seed: int) -> list[Planned]:
    planned = []
    for repeat in range(k):
        for i, item in enumerate(items):
            s = shuffle_seed(seed, i, repeat)
            order = shuffled(list(answers), s)
            planned.append(
                Planned(
                    item=i,
                    repeat=repeat,
                    order=order,
                    shuffle_seed=s,
                    messages=comparative_messages(item, [answers[m][i] for m in order]),
                    json_object=True,
                    parse=partial(parse, order),
                )
            )
    return planned
