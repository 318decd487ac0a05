"""Runs planned judge calls: cache first, then the network, retrying malformed answers.

Calls run in a thread pool (they are slow and independent); the database is touched only from
the calling thread, never during a network call: the cache is read once up front for every key
any attempt could need, and each finished judgement's new answers are stored as it completes, so
a comparison that crashes half way keeps (and on a re-run reuses) what it already paid for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from orchestrator.judge import cache
from orchestrator.judge.client import CallFailed, JudgeClient

log = logging.getLogger(__name__)


class Malformed(ValueError):
    """The judge answered, but not in the form asked for."""


#: text -> (answer as stored, {model: (score, comments)}); raises Malformed
Parser = Callable[[str], tuple[dict, dict[str, tuple[float, str]]]]


@dataclass(frozen=True)
class Planned:
    """One judgement to make: one item, one repeat, the models in the order shown."""

    item: int
    repeat: int
    order: list[str]
    shuffle_seed: int | None
    messages: list[dict[str, str]]
    json_object: bool
    parse: Parser


@dataclass
class Verdict:
    """What one planned judgement came to: the scores (or why they are missing) and its tokens."""

    planned: Planned
    #: model -> (score, comments); None when the judgement is missing
    scores: dict[str, tuple[float, str]] | None = None
    missing_reason: str | None = None
    error: str | None = None
    attempts: int = 0
    calls_made: int = 0
    calls_cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    paid_input_tokens: int = 0
    paid_output_tokens: int = 0
    #: cache keys of every answer this judgement used (for cost booking)
    keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class JudgeSetup:
    """What every judgement of one comparison shares: the client, the mode and its template's
    hash (both part of the cache key), and how many answers to ask for before giving up."""

    client: JudgeClient
    mode: str
    template_hash: str
    attempts: int


def _keys(setup: JudgeSetup, p: Planned) -> list[str]:
    return [
        cache.cache_key(
            model=setup.client.model, template_hash=setup.template_hash, messages=p.messages, repeat=p.repeat, attempt=a
        )
        for a in range(setup.attempts)
    ]


def _judge_one(
    setup: JudgeSetup, p: Planned, keys: list[str], cached: dict[str, cache.CachedAnswer]
) -> tuple[Verdict, list[cache.NewAnswer]]:
    out = Verdict(planned=p)
    new: list[cache.NewAnswer] = []
    for key in keys:
        out.attempts += 1
        hit = cached.get(key)
        if hit is not None:
            text, tin, tout = hit.text, hit.input_tokens, hit.output_tokens
            out.calls_cached += 1
        else:
            try:
                c = setup.client.complete(p.messages, json_object=p.json_object)
            except CallFailed as exc:
                # the client already retried timeouts and server errors; nothing was answered,
                # so nothing is cached and a re-run asks again
                out.missing_reason, out.error = "call_failed", str(exc)
                return out, new
            text, tin, tout = c.text, c.input_tokens, c.output_tokens
            out.calls_made += 1
            out.paid_input_tokens += tin
            out.paid_output_tokens += tout
        out.input_tokens += tin
        out.output_tokens += tout
        out.keys.append(key)
        try:
            stored, scores = p.parse(text)
            error = None
        except Malformed as exc:
            stored, scores, error = None, None, setup.client.scrub(str(exc))[:1000]
        if hit is None:
            new.append(
                cache.NewAnswer(
                    key=key,
                    mode=setup.mode,
                    model=setup.client.model,
                    template_hash=setup.template_hash,
                    messages=p.messages,
                    text=text,
                    parsed=stored,
                    error=error,
                    input_tokens=tin,
                    output_tokens=tout,
                )
            )
        if scores is not None:
            out.scores, out.error = scores, None
            return out, new
        out.error = error
    out.missing_reason = "malformed"
    return out, new


def run(factory: sessionmaker[Session], setup: JudgeSetup, planned: list[Planned], concurrency: int) -> list[Verdict]:
    """Judge every planned call; the verdicts come back in the planned order."""
    keys = [_keys(setup, p) for p in planned]
    cached = cache.load(factory, (k for ks in keys for k in ks))
    verdicts: list[Verdict | None] = [None] * len(planned)
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="judge") as pool:
        futures = {
            pool.submit(_judge_one, setup, p, ks, cached): i
            for i, (p, ks) in enumerate(zip(planned, keys, strict=True))
        }
        for fut in as_completed(futures):
            verdict, new = fut.result()
            cache.store(factory, new)
            if verdict.missing_reason:
                p = verdict.planned
                log.warning(
                    "judgement missing (item %d, repeat %d, %s): %s",
                    p.item,
                    p.repeat,
                    verdict.missing_reason,
                    verdict.error,
                )
            verdicts[futures[fut]] = verdict
    return [o for o in verdicts if o is not None]
