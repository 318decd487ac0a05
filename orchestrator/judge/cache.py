"""The judge's answer cache: the `judgements` table, keyed by what was asked.

The key is the SHA-256 of the judge model, the prompt template hash, the exact rendered messages,
the repeat number and the attempt number. The repeat is in the key because the K repeats are
meant as K separate samples (two repeats that happen to show the same order are still two
calls); the attempt is in it because a malformed answer is retried, and at temperature 0 the same
request would otherwise find the same malformed answer in the cache forever. So re-running a
comparison finds every call it made before, malformed attempts included, and pays for none.

Answers are cached whether valid or malformed: both were paid for. Calls that got no answer
(timeouts, HTTP errors) are not cached, so a re-run tries them again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Judgement
from orchestrator.db.session import transaction

_CHUNK = 500  # keys per IN (...) query; well under SQLite's bound-parameter limit


def cache_key(*, model: str, template_hash: str, messages: list[dict[str, str]], repeat: int, attempt: int) -> str:
    blob = json.dumps(
        {"model": model, "template": template_hash, "messages": messages, "repeat": repeat, "attempt": attempt},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    key: str
    text: str
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class NewAnswer:
    """An answer just received, to be stored."""

    key: str
    mode: str
    model: str
    template_hash: str
    messages: list[dict[str, str]]
    text: str
    parsed: dict | None
    error: str | None
    input_tokens: int
    output_tokens: int


def _chunks(keys: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(keys), _CHUNK):
        yield keys[i : i + _CHUNK]


def load(factory: sessionmaker[Session], keys: Iterable[str]) -> dict[str, CachedAnswer]:
    """The cached answers among `keys`."""
    found: dict[str, CachedAnswer] = {}
    cols = (Judgement.key, Judgement.response_text, Judgement.input_tokens, Judgement.output_tokens)
    with factory() as session:
        for chunk in _chunks(list(dict.fromkeys(keys))):
            for key, text, tin, tout in session.execute(select(*cols).where(Judgement.key.in_(chunk))):
                found[key] = CachedAnswer(key, text or "", tin, tout)
    return found


def store(factory: sessionmaker[Session], answers: list[NewAnswer]) -> None:
    """Store answers, one short transaction each. A key already there (another comparison asked
    the same thing at the same moment) is left as it is."""
    for a in answers:
        try:
            with transaction(factory) as session:
                session.add(
                    Judgement(
                        key=a.key,
                        mode=a.mode,
                        judge_model=a.model,
                        template_hash=a.template_hash,
                        request={"model": a.model, "messages": a.messages},
                        response_text=a.text,
                        parsed=a.parsed,
                        error=a.error,
                        input_tokens=a.input_tokens,
                        output_tokens=a.output_tokens,
                    )
                )
        except IntegrityError:
            pass


def claim_unbooked(session: Session, keys: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Mark the judgements among `keys` whose cost is not booked yet as booked, and return their
    (input, output) tokens. Call in the transaction that writes the cost entries: the UPDATE ...
    RETURNING makes each judgement booked exactly once, even by comparisons running at once."""
    claimed: dict[str, tuple[int, int]] = {}
    for chunk in _chunks(list(dict.fromkeys(keys))):
        stmt = (
            update(Judgement)
            .where(Judgement.key.in_(chunk), Judgement.cost_booked.is_(False))
            .values(cost_booked=True)
            .returning(Judgement.key, Judgement.input_tokens, Judgement.output_tokens)
            .execution_options(synchronize_session=False)
        )
        for key, tin, tout in session.execute(stmt):
            claimed[key] = (tin, tout)
    return claimed
