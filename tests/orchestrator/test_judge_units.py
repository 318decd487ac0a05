"""The judge's pure parts: t quantiles and intervals, answer parsing, shuffles, prices."""

from __future__ import annotations

import math

import pytest

from orchestrator.judge import prompts
from orchestrator.judge.comparative import parse, parse_labels, shuffle_seed, shuffled
from orchestrator.judge.cost import Prices, run_shares, token_cost_cents
from orchestrator.judge.pointwise import parse_score
from orchestrator.judge.runner import Malformed
from orchestrator.judge.schemas import Item
from orchestrator.judge.stats import mean_ci, t975


@pytest.mark.parametrize(
    "df,exact", [(1, 12.7062), (5, 2.5706), (30, 2.0423), (31, 2.0395), (40, 2.0211), (109, 1.9820), (1000, 1.9623)]
)
def test_t_quantiles(df, exact):
    assert t975(df) == pytest.approx(exact, abs=1.5e-3)


def test_mean_ci_is_a_t_interval_over_the_values():
    mean, low, high = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 3.182 * math.sqrt(5 / 3) / 2  # t(3) * sd / sqrt(n)
    assert mean == 2.5 and low == pytest.approx(2.5 - half) and high == pytest.approx(2.5 + half)
    assert mean_ci([7.0]) == (7.0, None, None) and mean_ci([]) == (None, None, None)


def test_comparative_answer_parsing():
    fenced = '```json\n{"model 1": {"score": 80, "comments": null}, "Model_2": {"score": 12.5}}\n```'
    assert {k: v.score for k, v in parse_labels(fenced, 2).items()} == {"Model 1": 80, "Model 2": 12.5}
    for bad, why in [
        ("[1, 2]", "not an object"),
        ('{"Model 1": {"score": 1}, "Model 2": {"score": 2}, "Model 3": {"score": 3}}', "unknown label"),
        ('{"Model 1": {"score": "80"}, "Model 2": {"score": 2}}', "valid number"),
        ('{"Model 1": {"score": -1}, "Model 2": {"score": 2}}', "greater than or equal to 0"),
        ('{"Model 1": {"comments": "no score"}, "Model 2": {"score": 2}}', "Field required"),
    ]:
        with pytest.raises(Malformed, match=why):
            parse_labels(bad, 2)
    stored, scores = parse(["b", "a"], '{"Model 1": {"score": 10}, "Model 2": {"score": 20}}')
    assert scores == {"b": (10, ""), "a": (20, "")} and stored["Model 1"]["score"] == 10


def test_pointwise_answer_parsing():
    assert [parse_score(t) for t in ("85", " 7\n", "100.")] == [85, 7, 100]
    for bad in ("101", "85/100", "eighty", "", "8 5"):
        with pytest.raises(Malformed):
            parse_score(bad)


def test_shuffle_depends_on_the_seed_only():
    s = shuffle_seed(3, 4, 1)
    assert shuffled(["a", "b", "c", "d"], s) == shuffled(["d", "c", "b", "a"], s)
    assert s != shuffle_seed(3, 4, 2) != shuffle_seed(3, 5, 1)
    orders = {tuple(shuffled(["a", "b", "c"], shuffle_seed(0, i, 0))) for i in range(30)}
    assert len(orders) == 6  # every order turns up


def test_prompts_and_template_hashes():
    item = Item(instruction="Do X.", input="", output="done")
    text = prompts.pointwise_messages(item, "resp")[0]["content"]
    assert text.startswith("Given the input `Below is an instruction") and "### Input" not in text
    msgs = prompts.comparative_messages(item, ["one", "two"])
    assert '<answer label="Model 2">\ntwo\n</answer>' in msgs[1]["content"]
    assert "Model 1 to Model 2" in msgs[1]["content"]
    assert prompts.POINTWISE_TEMPLATE_HASH != prompts.COMPARATIVE_TEMPLATE_HASH
    assert len(prompts.COMPARATIVE_TEMPLATE_HASH) == 64


def test_token_cost_and_run_shares():
    prices = Prices(input_cents_per_mtok=15, output_cents_per_mtok=60)
    assert token_cost_cents(1_000_000, 1_000_000, prices) == 75
    assert run_shares(9.0, ["a", "b", "c"], {"a": "r1", "c": "r1"}) == {"r1": 6.0}
