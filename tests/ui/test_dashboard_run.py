"""A run's page (`/runs/{id}`): a run of each status renders, and each part of the page shows what
the database holds: the loss, learning-rate and tokens/s charts (downsampled past max_points,
with the true minimum and maximum kept), the x-axis switch and log scale, cost per instance with
the budget, the timeline, events newest first, checkpoints with their download command, the spec,
the log and the evaluation."""

from __future__ import annotations

import math
import re
from urllib.parse import parse_qs, urlparse

import pytest

from seed import BIG_MAX, BIG_MIN, BIG_STEPS, LIVE_STEPS, MAX_USD, SUCCEEDED_STEPS, VAL_EVERY

MAX_POINTS = 2000  # the series endpoint's default, per series
#: the `#run-summary [data-field]` cards (docs/dashboard.md)
SUMMARY_FIELDS = (
    "progress",
    "tokens",
    "step",
    "train_loss",
    "val_loss",
    "test_loss",
    "tokens_per_s",
    "cost",
    "projected",
    "usd_per_hour",
    "eta",
    "wall",
    "provider",
    "recoveries",
    "created_at",
    "finished_at",
)


def run_path(seeded, role: str) -> str:
    return f"/runs/{seeded.runs[role]}"


@pytest.mark.parametrize("role", ["succeeded", "live", "cancelled", "failed", "stopped", "big"])
def test_a_run_of_each_status_renders(pages, seeded, role):
    rid = seeded.runs[role]
    dash = pages.get(run_path(seeded, role))
    summary = dash.page.locator("#run-summary")
    assert summary.count() == 1
    for field in SUMMARY_FIELDS:
        assert summary.locator(f'[data-field="{field}"]').count() == 1, f"#run-summary has no [data-field={field}]"
    body = dash.page.inner_text("body")
    assert seeded.statuses[rid] in body
    assert rid in body, "the full id is on the page"
    if rid in seeded.reasons:
        assert seeded.reasons[rid] in body, f"the {role} run's reason is not shown"
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", body), "times are shown in UTC, with the zone"
    for chart in ("chart-loss", "chart-lr", "chart-tps", "chart-cost", "chart-timeline"):
        dash.chart(chart)
    assert dash.page.locator("#reconnecting").get_attribute("hidden") is not None
    dash.wait_polls(2)
    dash.assert_fits()
    if role == "succeeded":
        dash.shot("run")
    elif role in ("failed", "live"):
        dash.shot(f"run-{role}")


def test_the_loss_chart_of_a_one_point_run_shows_its_point(pages, seeded):
    dash = pages.get(run_path(seeded, "failed"))
    chart = dash.chart("chart-loss")
    assert chart["xaxis"]["title"] == "tokens"
    assert chart["yaxis"]["title"] == "loss"
    train = dash.trace("chart-loss", "train loss")
    assert len(train["x"]) == len(train["y"]) == 1
    assert sum(len(t["y"]) for t in chart["traces"]) == 1
    assert "markers" in train["mode"], f"a lone point drawn as mode {train['mode']!r} is invisible"
    assert len(dash.trace("chart-lr", "learning rate")["y"]) == 1
    assert len(dash.trace("chart-tps", "tokens/s")["y"]) == 1


def test_loss_lr_and_throughput_series_have_every_point(pages, seeded):
    dash = pages.get(run_path(seeded, "succeeded"))
    train = dash.trace("chart-loss", "train loss")
    val = dash.trace("chart-loss", "val loss")
    assert len(train["y"]) == SUCCEEDED_STEPS
    assert len(val["y"]) == len(range(VAL_EVERY, SUCCEEDED_STEPS, VAL_EVERY))
    assert train["x"] == sorted(train["x"]) and train["x"][-1] == pytest.approx(SUCCEEDED_STEPS * 524_288)
    assert len(dash.trace("chart-lr", "learning rate")["y"]) == SUCCEEDED_STEPS
    assert len(dash.trace("chart-tps", "tokens/s")["y"]) == SUCCEEDED_STEPS

    # the two legend entries are told apart by colour
    assert train["color"] and val["color"], "a loss trace without a resolved colour"
    assert train["color"] != val["color"], f"train and val loss share the colour {train['color']}"


def test_a_long_run_is_downsampled_keeping_its_extremes(pages, seeded):
    dash = pages.get(run_path(seeded, "big"))
    train = dash.trace("chart-loss", "train loss")
    n = len(train["y"])
    assert 100 < n <= MAX_POINTS < BIG_STEPS, f"{n} points drawn of {BIG_STEPS}"
    assert min(train["y"]) == pytest.approx(BIG_MIN) and max(train["y"]) == pytest.approx(BIG_MAX)
    assert train["x"] == sorted(train["x"])
    assert train["x"][-1] == pytest.approx(BIG_STEPS * 524_288), "the last point is kept"
    for chart, name in (("chart-lr", "learning rate"), ("chart-tps", "tokens/s")):
        assert 0 < len(dash.trace(chart, name)["y"]) <= MAX_POINTS


def test_succeeded_run_reads_100_percent(pages, seeded):
    dash = pages.get(run_path(seeded, "succeeded"))
    assert dash.page.inner_text('#run-summary [data-field="progress"]').strip() == "100%"
    cost = dash.page.inner_text('#run-summary [data-field="cost"]')
    assert f"{seeded.cost_usd[seeded.runs['succeeded']]:.2f}" in cost.replace(",", ""), cost


def test_x_axis_switch_and_log_scale_change_the_layout(dash, seeded):
    dash.open(run_path(seeded, "succeeded"))
    tokens = dash.trace("chart-loss", "train loss")["x"]
    assert dash.chart("chart-loss")["xaxis"]["title"] == "tokens"
    assert dash.chart("chart-loss")["yaxis"]["type"] == "linear"

    expected = {"time": "wall time (UTC)", "usd": "US$", "tokens": "tokens"}
    for value in ("time", "usd", "tokens"):
        dash.page.select_option("#x-axis", value)
        dash.wait_for(
            "([id, t]) => { const el = document.getElementById(id);"
            " return el && el._fullLayout && el._fullLayout.xaxis.title.text === t; }",
            ["chart-loss", expected[value]],
        )
        chart = dash.chart("chart-loss")
        x = dash.trace("chart-loss", "train loss")["x"]
        assert len(x) == len(tokens)
        if value == "time":
            assert chart["xaxis"]["type"] == "date" and x != tokens
        elif value == "usd":
            assert all(isinstance(v, (int, float)) for v in x) and x != tokens
            assert x == sorted(x) and 0 < x[-1] <= seeded.cost_usd[seeded.runs["succeeded"]] + 0.01
        else:
            assert x == tokens
    dash.check()

    dash.page.check("#log-scale")
    dash.wait_for("id => document.getElementById(id)._fullLayout.yaxis.type === 'log'", "chart-loss")
    dash.page.select_option("#x-axis", "usd")
    query = parse_qs(urlparse(dash.page.url).query)
    assert query.get("x") == ["usd"] and query.get("log") == ["1"], (
        f"the chart settings are not in the URL: {dash.page.url}"
    )
    dash.page.reload()  # the URL brings them back
    dash.wait_ready()
    assert dash.page.locator("#x-axis").input_value() == "usd" and dash.page.locator("#log-scale").is_checked()
    chart = dash.chart("chart-loss")
    assert chart["xaxis"]["title"] == "US$" and chart["yaxis"]["type"] == "log"
    dash.page.uncheck("#log-scale")
    dash.wait_for("id => document.getElementById(id)._fullLayout.yaxis.type === 'linear'", "chart-loss")


def test_cost_chart_has_a_trace_per_instance_the_total_and_the_budget(pages, seeded):
    rid = seeded.runs["succeeded"]
    dash = pages.get(f"/runs/{rid}")
    chart = dash.chart("chart-cost")
    names = [t["name"] for t in chart["traces"]]
    for instance in seeded.instances[rid]:
        assert instance in names, f"no cost trace for instance {instance}: {names}"
    assert "total" in names and "budget" in names, names
    assert len(names) == len(seeded.instances[rid]) + 2, names
    total = dash.trace("chart-cost", "total")
    assert total["y"][-1] == pytest.approx(seeded.cost_usd[rid], abs=0.01)
    assert set(dash.trace("chart-cost", "budget")["y"]) == {MAX_USD}


def test_timeline_has_each_state_span_and_instance_with_its_cost(pages, seeded):
    rid = seeded.runs["succeeded"]
    dash = pages.get(f"/runs/{rid}")
    states = dash.trace("chart-timeline", "states")
    instances = dash.trace("chart-timeline", "instances")
    statuses = seeded.status_events[rid]  # pending ... training, recovering, training, evaluating, succeeded
    assert states["orientation"] == "h" and instances["orientation"] == "h"
    assert len(states["x"]) == len(states["base"]) == len(states["hovertext"]) == len(statuses)
    assert states["base"] == sorted(states["base"]), "the state spans are not in time order"
    for status, hover in zip(statuses, states["hovertext"], strict=True):
        assert status in hover and "$" in hover, f"the {status} span's hover names no cost: {hover!r}"
    assert sorted(instances["y"]) == sorted(seeded.instances[rid])
    for name, hover in zip(instances["y"], instances["hovertext"], strict=True):
        assert name in hover and "$" in hover, f"instance {name}'s hover names no cost: {hover!r}"


def test_events_are_newest_first_and_older_ones_load(pages, seeded):
    rid = seeded.runs["succeeded"]
    dash = pages.get(f"/runs/{rid}")
    rows = "table#events tr[data-event-id]"
    ids = [int(x) for x in dash.attrs(rows, "data-event-id")]
    assert ids and ids == sorted(ids, reverse=True), "events are not newest first"
    more = dash.page.locator("#events-more")
    for _ in range(20):
        if len(ids) >= seeded.events[rid]:
            break
        assert more.is_visible() and more.is_enabled(), f"{len(ids)} of {seeded.events[rid]} events and no #events-more"
        more.click()
        dash.wait_for("([sel, n]) => document.querySelectorAll(sel).length > n", [rows, len(ids)])
        ids = [int(x) for x in dash.attrs(rows, "data-event-id")]
    assert len(ids) == len(set(ids)) == seeded.events[rid]
    assert ids == sorted(ids, reverse=True)
    assert not more.is_visible(), "#events-more still shows with every event loaded"


def test_checkpoints_have_a_download_command(pages, seeded):
    rid = seeded.runs["succeeded"]
    dash = pages.get(f"/runs/{rid}")
    steps = [int(s) for s in dash.attrs("table#checkpoints tr[data-step]", "data-step")]
    assert steps == sorted(seeded.checkpoints[rid], reverse=True), "checkpoints, newest first"
    for step in steps:
        cmd = dash.page.inner_text(f'table#checkpoints tr[data-step="{step}"] code.download-cmd')
        assert "trainyard checkpoints download" in cmd and rid in cmd and str(step) in cmd, cmd


def test_spec_log_and_evaluation(pages, seeded):
    rid = seeded.runs["succeeded"]
    dash = pages.get(f"/runs/{rid}")
    spec = dash.page.inner_text("pre#spec")
    assert seeded.names[rid] in spec and "gpt2-small" in spec and "max_usd" in spec
    dash.wait_for(
        "([sel, line]) => document.querySelector(sel).textContent.includes(line)",
        ["pre#log", seeded.last_log_line[rid]],
    )
    evaluation = dash.page.locator("section#evaluation")
    assert "3.31" in evaluation.locator('[data-field="test_loss"]').inner_text()
    bpb = 3.3142 / math.log(2) / 4.29
    assert f"{bpb:.2f}" in evaluation.locator('[data-field="bits_per_byte"]').inner_text()
    answers = evaluation.locator("table#ift-answers tr[data-item]")
    assert answers.count() == len(seeded.ift_items)
    text = evaluation.locator("table#ift-answers").inner_text()
    for item, response in zip(seeded.ift_items, seeded.ift_answers[rid], strict=True):
        assert item["instruction"] in text and response in text


def test_a_live_run_shows_its_progress(pages, seeded):
    dash = pages.get(f"/runs/{seeded.runs['live']}")
    progress = dash.page.inner_text('#run-summary [data-field="progress"]')
    found = re.search(r"(\d+(?:\.\d+)?)\s*%", progress)
    assert found and 30 <= float(found.group(1)) < 100, progress
    train = dash.trace("chart-loss", "train loss")
    assert len(train["y"]) >= LIVE_STEPS
    eta = dash.page.inner_text('#run-summary [data-field="eta"]').strip()
    assert eta and eta not in ("-", "—"), f"a training run with a known speed has an ETA: {eta!r}"


def test_a_run_without_ift_answers_says_so(pages, seeded):
    dash = pages.get(run_path(seeded, "big"))
    evaluation = dash.page.locator("section#evaluation")
    assert "3.04" in evaluation.locator('[data-field="test_loss"]').inner_text()
    assert not evaluation.locator("table#ift-answers").is_visible()
    assert "no IFT answers" in evaluation.locator("#ift-none").inner_text()
