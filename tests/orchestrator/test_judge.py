"""The LLM judge against a real OpenAI-compatible HTTP server on loopback, through the real
`openai` client, on SQLite and PostgreSQL.

The fake judge scores answers by their CONTENT (90 for the reference answer itself, 60 for a
partial one, 40 for a wrong one), so a score that reaches the wrong model shows up at once,
whatever order the answers were shown in.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from openai_fake import Reply, reference, score_by_content, shown_answers
from orchestrator.db.models import Comparison, CostEntry, Evaluation, Judgement, Run
from orchestrator.db.session import transaction
from orchestrator.judge import InvalidComparisonError, JudgeNotConfiguredError, judge_answers
from orchestrator.judge.prompts import POINTWISE_TEMPLATE_HASH
from orchestrator.settings import Settings
from orchestrator_helpers import content_judge, quality

KEY = "sk-test-SECRET-4242-do-not-leak"


def make_items(n: int) -> list[dict]:
    return [
        {"instruction": f"Answer question {i}.", "input": f"q{i}" if i % 2 else "", "output": f"ref {i}"}
        for i in range(n)
    ]


def make_answers(n: int) -> dict[str, list[str]]:
    return {
        "alpha": [f"ref {i}" for i in range(n)],  # the reference itself: 90
        "beta": [f"wrong {i}" for i in range(n)],  # 40
        "gamma": [f"partly ref {i}" for i in range(n)],  # 60
    }


@pytest.fixture
def settings(fake, tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        openai_api_key=SecretStr(KEY),
        judge_base_url=fake.base_url,
        judge_model="judge-a",
        judge_timeout_s=5.0,
        judge_max_retries=0,
        judge_attempts=3,
        judge_concurrency=2,
    )


def item_of(body: dict) -> int:
    return int(reference(body).split()[-1])


# --- comparative: one request per item, shuffled, mapped back ---------------------------------


def test_one_request_per_item_shuffled_and_scores_mapped_back(fake, factory, settings):
    items, answers = make_items(8), make_answers(8)
    report = judge_answers(factory, settings, items, answers, k=1, seed=7)

    assert fake.calls == 8
    orders = set()
    for req in fake.requests:
        i = item_of(req.body)
        shown = shown_answers(req.body)
        assert sorted(shown.values()) == sorted(a[i] for a in answers.values())  # every model
        orders.add(tuple(shown.values()).index(f"ref {i}"))  # where the right answer was shown
        assert req.body["temperature"] == 0
        assert req.body["response_format"] == {"type": "json_object"}
        assert req.body["model"] == "judge-a"
    assert len(orders) > 1, "the order must change from item to item"

    assert {m.model: m.mean for m in report.models} == {"alpha": 90, "beta": 40, "gamma": 60}
    assert all(m.n_scored == 8 and m.n_missing == 0 for m in report.models)
    assert report.n_missing == 0 and report.usage.calls_made == 8

    # the recorded order is the one the judge saw: order[k] was shown as "Model k+1"
    by_item = {item_of(r.body): shown_answers(r.body) for r in fake.requests}
    for it in report.items:
        (rec,) = it.judgements
        for pos, model in enumerate(rec.order):
            assert by_item[it.index][f"Model {pos + 1}"] == answers[model][it.index]
            assert rec.scores[model].position == pos + 1
        assert rec.scores["alpha"].comments.startswith("judged 'ref")
    assert report.judge.model == "judge-a" and report.judge.k == 1 and report.judge.seed == 7
    alpha_beta = next(d for d in report.differences if (d.model_a, d.model_b) == ("alpha", "beta"))
    assert alpha_beta.mean == 50 and alpha_beta.n_items == 8

    json.dumps(report.model_dump(mode="json"))  # JSON as it is
    with factory() as s:
        stored = s.get(Comparison, report.id)
        assert stored.report["models"][0]["mean"] == 90 and stored.judge_version["seed"] == 7


def test_k_repeats_use_fresh_recorded_shuffles(fake, factory, settings):
    report = judge_answers(factory, settings, make_items(6), make_answers(6), k=3, seed=1)
    assert fake.calls == 18
    seeds = [j.shuffle_seed for it in report.items for j in it.judgements]
    assert len(set(seeds)) == 18
    for m in report.models:
        assert m.n_expected == 18 and m.n_scored == 18
    # a deterministic judge: the headline number does not move between repeats
    assert all(c.repeat_std == 0 for c in report.consistency.models)
    assert report.consistency.position_bias == pytest.approx(0, abs=1e-9)


# --- malformed answers and failed calls --------------------------------------------------------


def test_malformed_answers_are_retried_then_counted_missing(fake, factory, settings):
    seen: Counter[int] = Counter()

    def flaky(body: dict) -> str:
        i = item_of(body)
        seen[i] += 1
        good = json.loads(content_judge(body))
        if i == 1:
            return '{"Model 1": {"score": 90, '  # broken JSON, every time
        if i == 2:
            good["Model 2"]["score"] = 150  # out of range, every time
            return json.dumps(good)
        if i == 3:
            del good["Model 3"]  # a model missing, every time
            return json.dumps(good)
        if i == 4 and seen[i] == 1:
            return "Sure! Here are the scores."  # malformed once, then fine
        return json.dumps(good)

    fake.reply = flaky
    report = judge_answers(factory, settings, make_items(6), make_answers(6), k=1)

    assert seen == {0: 1, 1: 3, 2: 3, 3: 3, 4: 2, 5: 1}  # 3 attempts, then given up
    assert report.n_expected == 6 and report.n_missing == 3
    assert report.missing_reasons == {"malformed": 3}
    for m in report.models:
        assert (m.n_expected, m.n_scored, m.n_missing, m.n_items_scored) == (6, 3, 3, 3)
    # the mean is over the scored items only: no zeros slipped in
    assert {m.model: m.mean for m in report.models} == {"alpha": 90, "beta": 40, "gamma": 60}
    errors = {it.index: it.judgements[0].error for it in report.items}
    assert "not JSON" in errors[1]
    assert "less than or equal to 100" in errors[2]
    assert "lacks Model 3" in errors[3]
    assert errors[4] is None and report.items[4].judgements[0].attempts == 2
    assert all(it.judgements[0].scores["alpha"].score is None for it in report.items[1:4])

    # a re-run finds every attempt (the malformed ones too) in the cache
    before = fake.calls
    again = judge_answers(factory, settings, make_items(6), make_answers(6), k=1)
    assert fake.calls == before
    assert again.n_missing == 3 and again.usage.calls_made == 0 and again.usage.calls_cached == 13


def test_timeout_is_retried_by_the_client_then_missing_and_not_cached(fake, factory, settings):
    def slow_item_2(body: dict) -> str | Reply:
        return Reply(delay_s=2.0) if item_of(body) == 2 else content_judge(body)

    fake.reply = slow_item_2
    settings = settings.model_copy(update={"judge_timeout_s": 0.3, "judge_max_retries": 1})
    report = judge_answers(factory, settings, make_items(4), make_answers(4), k=1)

    assert sum(item_of(r.body) == 2 for r in fake.requests) == 2  # first try + one client retry
    assert report.n_missing == 1 and report.missing_reasons == {"call_failed": 1}
    rec = report.items[2].judgements[0]
    assert rec.missing_reason == "call_failed" and "Timeout" in rec.error
    assert report.model("alpha").n_missing == 1 and report.model("alpha").mean == 90

    # nothing was answered, so nothing was cached: a re-run asks again, and only for that item
    fake.reply = content_judge
    before = fake.calls
    again = judge_answers(factory, settings, make_items(4), make_answers(4), k=1)
    assert fake.calls == before + 1 and again.n_missing == 0


def test_server_without_response_format_is_asked_again_without_it(fake, factory, settings):
    def no_json_mode(body: dict) -> str | Reply:
        if "response_format" in body:
            return Reply(status=400, error_message="response_format is not supported")
        return content_judge(body)

    fake.reply = no_json_mode
    report = judge_answers(factory, settings, make_items(4), make_answers(4), k=1)
    assert report.n_missing == 0 and report.model("beta").mean == 40
    # refused once per call already in flight when the first refusal came, then never sent again
    with_format = [i for i, r in enumerate(fake.requests) if "response_format" in r.body]
    assert 1 <= len(with_format) <= settings.judge_concurrency
    assert max(with_format) < settings.judge_concurrency + len(with_format)


# --- cache --------------------------------------------------------------------------------------


def test_repeated_comparison_makes_no_calls_and_a_new_judge_model_does(fake, factory, settings):
    items, answers = make_items(5), make_answers(5)
    first = judge_answers(factory, settings, items, answers, k=2)
    assert fake.calls == 10

    second = judge_answers(factory, settings, items, answers, k=2)
    assert fake.calls == 10
    assert second.usage.calls_made == 0 and second.usage.calls_cached == 10
    assert second.usage.cost_cents == 0 and second.usage.input_tokens == first.usage.input_tokens
    assert [m.mean for m in second.models] == [m.mean for m in first.models]
    assert all(j.cached for it in second.items for j in it.judgements)

    other = settings.model_copy(update={"judge_model": "judge-b"})
    third = judge_answers(factory, other, items, answers, k=2)
    assert fake.calls == 20 and third.usage.calls_made == 10
    assert {r.body["model"] for r in fake.requests[10:]} == {"judge-b"}
    assert third.judge.model == "judge-b" and third.judge.template_hash == first.judge.template_hash

    # another seed is another set of shuffles: new calls
    judge_answers(factory, settings, items, answers, k=1, seed=99)
    assert fake.calls > 20
    with factory() as s:
        assert s.scalar(select(Judgement.id).where(Judgement.judge_model == "judge-b")) is not None


# --- pointwise: the book's prompt --------------------------------------------------------------


def test_pointwise_uses_the_books_prompt_and_parses_integer_answers(fake, factory, settings):
    def book_judge(body: dict) -> str:
        prompt = body["messages"][0]["content"]
        if "score the model response `wrong" in prompt:
            return "40"
        if "score the model response `partly" in prompt:
            return "60.\n"  # what "the integer number only" often looks like
        return " 90 "

    fake.reply = book_judge
    items = make_items(3)
    report = judge_answers(factory, settings, items, make_answers(3), k=1, mode="pointwise")

    assert fake.calls == 9  # one call per (model, item)
    first = fake.requests[0].body
    assert first["messages"][0]["role"] == "user" and len(first["messages"]) == 1
    assert "response_format" not in first
    prompt = next(
        r.body["messages"][0]["content"]
        for r in fake.requests
        if "score the model response `ref 1`" in r.body["messages"][0]["content"]
    )
    assert prompt == (
        "Given the input `Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n### Instruction:\nAnswer question 1.\n\n"
        "### Input:\nq1` and correct output `ref 1`, score the model response `ref 1` on a scale "
        "from 0 to 100, where 100 is the best score. Respond with the integer number only."
    )
    assert {m.model: m.mean for m in report.models} == {"alpha": 90, "beta": 40, "gamma": 60}
    assert report.judge.mode == "pointwise" and report.judge.template_hash == POINTWISE_TEMPLATE_HASH
    assert report.consistency.positions == [] and report.consistency.position_bias is None


def test_pointwise_non_integer_answer_is_missing(fake, factory, settings):
    fake.reply = lambda body: "Score: 85" if "`wrong" in body["messages"][0]["content"] else "101"
    report = judge_answers(
        factory,
        settings,
        make_items(2),
        {"beta": ["wrong 0", "wrong 1"], "alpha": ["ref 0", "ref 1"]},
        k=1,
        mode="pointwise",
    )
    assert report.n_missing == 4 and report.missing_reasons == {"malformed": 4}
    assert report.model("alpha").mean is None and report.model("alpha").n_missing == 2
    assert fake.calls == 12  # 4 judgements x 3 attempts


# --- statistics and consistency ------------------------------------------------------------------


def test_confidence_interval_shrinks_with_more_items(fake, factory, settings):
    def noisy(body: dict) -> str:
        i = item_of(body)  # a spread of item difficulties, the same pattern for 5 and 40 items
        return score_by_content(body, lambda a, r: quality(a, r) - 30 + (i * 7) % 40)

    fake.reply = noisy
    small = judge_answers(factory, settings, make_items(5), make_answers(5), k=1)
    large = judge_answers(factory, settings, make_items(40), make_answers(40), k=1)
    for name in ("alpha", "beta"):
        s, big = small.model(name), large.model(name)
        assert s.ci_low < s.mean < s.ci_high
        assert (big.ci_high - big.ci_low) < (s.ci_high - s.ci_low) / 2
    # items' difficulty is shared, so the paired difference is exact despite the spread
    d = next(d for d in large.differences if {d.model_a, d.model_b} == {"alpha", "beta"})
    assert d.ci_high - d.ci_low < 1e-9 and abs(d.mean) == 50


def test_consistency_report_detects_a_position_biased_judge(fake, factory, settings):
    def biased(body: dict) -> str:
        answer = json.loads(score_by_content(body, lambda a, r: quality(a, r) - 20))
        answer["Model 1"]["score"] += 20  # the first answer shown always gets 20 more
        return json.dumps(answer)

    fake.reply = biased
    report = judge_answers(factory, settings, make_items(12), make_answers(12), k=3)
    c = report.consistency
    assert c.position_bias == pytest.approx(20, abs=3)
    effects = {p.position: p.effect for p in c.positions}
    assert effects[1] > 10 and effects[2] < 0 and effects[3] < 0
    for m in c.models:
        assert m.position_spread == pytest.approx(20, abs=1e-9)  # +20 at 1, nothing elsewhere
        assert m.mean_by_position["1"] - m.mean_by_position["2"] == pytest.approx(20)
    assert [p.n for p in c.positions] == [36, 36, 36]


# --- cost, runs, secrets ---------------------------------------------------------------------------


def _add_runs(factory, *ids: str) -> None:
    with transaction(factory) as s:
        for run_id in ids:
            s.add(Run(id=run_id, name=run_id, spec={}))


def test_judge_tokens_are_booked_as_run_cost_once(fake, factory, settings):
    fake.reply = lambda body: Reply(text=content_judge(body), prompt_tokens=1000, completion_tokens=100)
    _add_runs(factory, "run-a", "run-b")
    run_ids = {"alpha": "run-a", "beta": "run-b"}  # gamma is not a run
    report = judge_answers(factory, settings, make_items(4), make_answers(4), k=1, run_ids=run_ids)

    per_call = (1000 * 15 + 100 * 60) / 1e6  # cents at the default gpt-4o-mini prices
    assert report.usage.paid_input_tokens == 4000 and report.usage.paid_output_tokens == 400
    assert report.usage.cost_cents == pytest.approx(4 * per_call)
    assert report.usage.booked_cents == pytest.approx(4 * per_call * 2 / 3)
    with factory() as s:
        entries = s.scalars(select(CostEntry).order_by(CostEntry.run_id)).all()
        assert [(e.run_id, e.kind, e.unit) for e in entries] == [
            ("run-a", "judge", "tokens"),
            ("run-b", "judge", "tokens"),
        ]
        assert all(e.cents == pytest.approx(4 * per_call / 3) for e in entries)
        assert all(e.quantity == pytest.approx(4 * 1100 / 3) for e in entries)
        evals = {e.run_id: e for e in s.scalars(select(Evaluation))}
        assert evals["run-a"].kind == "judge_comparative"
        assert evals["run-a"].details["mean"] == 90 and evals["run-a"].details["judge"]["k"] == 1
        assert evals["run-a"].details["judge"]["model"] == "judge-a"

    again = judge_answers(factory, settings, make_items(4), make_answers(4), k=1, run_ids=run_ids)
    assert again.usage.booked_cents == 0
    with factory() as s:
        assert len(s.scalars(select(CostEntry)).all()) == 2  # nothing booked twice


def test_unknown_run_is_refused_before_any_call(fake, factory, settings):
    with pytest.raises(InvalidComparisonError, match="no such runs"):
        judge_answers(factory, settings, make_items(2), make_answers(2), run_ids={"alpha": "nope"})
    with pytest.raises(InvalidComparisonError, match="has 1 answers for 2 items"):
        judge_answers(factory, settings, make_items(2), {"alpha": ["x"]})
    assert fake.calls == 0


@pytest.mark.usefixtures("fake")
def test_judge_is_off_without_a_key(factory, settings):
    with pytest.raises(JudgeNotConfiguredError):
        judge_answers(factory, settings.model_copy(update={"openai_api_key": None}), make_items(1), make_answers(1))


def test_api_key_never_in_stored_rows_or_logs(fake, factory, settings, caplog):
    def leaky(body: dict) -> str | Reply:
        i = item_of(body)
        if i == 0:  # a server that echoes the credential back in its error
            return Reply(status=401, error_message=f"bad key Bearer {KEY}")
        if i == 1:
            return f"not json, and here is your key: {KEY}"
        return content_judge(body)

    fake.reply = leaky
    _add_runs(factory, "run-a")
    caplog.set_level(logging.DEBUG)
    report = judge_answers(factory, settings, make_items(3), make_answers(3), k=1, run_ids={"alpha": "run-a"})

    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in fake.requests)  # it was sent
    assert report.missing_reasons == {"call_failed": 1, "malformed": 1}
    assert "[redacted]" in report.items[0].judgements[0].error  # the echo in the 401's body
    assert KEY not in report.model_dump_json()
    assert KEY not in caplog.text and "judgement missing" in caplog.text
    with factory() as s:
        for model in (Judgement, Comparison, CostEntry, Evaluation):
            for row in s.scalars(select(model)):
                dumped = json.dumps({c.name: getattr(row, c.key) for c in model.__table__.columns}, default=str)
                assert KEY not in dumped, f"{model.__tablename__} row holds the key"
