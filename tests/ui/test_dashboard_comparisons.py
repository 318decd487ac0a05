"""Comparisons (`/comparisons`, `/comparisons/{id}`): the list, test loss against US$ over every
finished run with its Pareto frontier, and one comparison's table, items (each model's answer
and score) and position-bias figure."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest


def _shown(value: float) -> tuple[str, ...]:
    """The ways a score may be written: one decimal or none."""
    return (f"{value:.1f}", f"{value:.0f}")


def test_comparisons_list_and_the_pareto_chart(dash, seeded):
    dash.open("/comparisons")
    table = dash.page.locator("table#comparisons-list")
    assert table.count() == 1
    hrefs = [urlparse(h or "").path for h in dash.attrs("table#comparisons-list a[href]", "href")]
    for cid in (seeded.comparison_id, seeded.pending_comparison_id):
        assert f"/comparisons/{cid}" in hrefs, f"no link to comparison {cid}: {hrefs}"
    listed = dash.attrs("table#comparisons-list tr[data-comparison-id]", "data-comparison-id")
    assert sorted(listed) == sorted([seeded.comparison_id, seeded.pending_comparison_id])
    text = table.inner_text()
    assert "succeeded" in text and "pending" in text

    chart = dash.chart("chart-pareto")
    names = sorted(t["name"] for t in chart["traces"])
    assert names == ["Pareto frontier", "runs"], names
    runs = dash.trace("chart-pareto", "runs")
    assert len(runs["x"]) == len(runs["y"]) == len(seeded.test_losses), "one point per finished run with a test loss"
    assert sorted(runs["y"]) == pytest.approx(sorted(seeded.test_losses.values()))
    ids = [c[0] for c in runs["customdata"]]
    assert sorted(ids) == sorted(seeded.test_losses), "a point's customdata is [run id, name]"
    for rid, name in runs["customdata"]:
        assert seeded.names[rid] == name
    frontier = dash.trace("chart-pareto", "Pareto frontier")
    points = sorted(zip(frontier["x"], frontier["y"], strict=True))
    assert points, "an empty frontier"
    assert set(points) <= set(zip(runs["x"], runs["y"], strict=True)), "a frontier point that is no run"
    losses = [y for _x, y in points]
    assert losses == sorted(losses, reverse=True), "along the frontier more US$ buys a lower test loss"
    assert min(losses) == min(seeded.test_losses.values()), "the best test loss is on the frontier"
    dash.wait_polls(1)
    dash.assert_fits()
    dash.shot("comparisons")


def test_a_comparison_shows_its_table_answers_and_position_bias(dash, seeded):
    dash.open(f"/comparisons/{seeded.comparison_id}")
    models = dash.attrs("table#comparison tr[data-model]", "data-model")
    assert models == seeded.comparison_models
    featured = seeded.runs["succeeded"]
    row = dash.page.inner_text(f'table#comparison tr[data-model="{seeded.names[featured]}"]')
    assert "3.31" in row, f"no test loss in {row!r}"
    mean = seeded.comparison_scores[seeded.names[featured]]
    assert any(s in row for s in _shown(mean)) and "±" in row, f"no score ± CI in {row!r}"
    assert f"{seeded.cost_usd[featured]:.2f}" in row.replace(",", ""), f"no cost in {row!r}"

    items = dash.page.locator("#items .item[data-item]")
    assert items.count() == len(seeded.ift_items)
    runs_of = {seeded.names[rid]: rid for rid in seeded.ift_answers}
    for i in range(len(seeded.ift_items)):
        item = items.nth(i)
        assert seeded.ift_items[i]["instruction"] in item.inner_text()
        for label in seeded.comparison_models:
            answer = item.locator(f'.answer[data-model="{label}"]')
            assert answer.count() == 1, f"item {i} has no answer of {label}"
            text = answer.inner_text()
            response = seeded.ift_answers[runs_of[label]][i]
            assert response in text, f"item {i}: {label}'s answer is not shown: {text!r}"
            rest = text.replace(response, "")
            assert any(s in rest for s in _shown(seeded.item_scores[label][i])), f"item {i}: no score in {text!r}"

    bias = dash.page.locator("#position-bias")
    assert bias.count() == 1 and bias.is_visible()
    assert "5.0" in bias.inner_text(), f"the report's position bias (5.0) is not shown: {bias.inner_text()!r}"
    position = dash.chart("chart-position")
    assert position["traces"] and all(len(t["y"]) == 2 for t in position["traces"]), "a bar per position shown"
    assert bias.locator("#chart-position").count() == 1, "the position chart is not in #position-bias"
    differences = dash.page.locator("table#differences").inner_text()
    assert all(m in differences for m in seeded.comparison_models), differences
    dash.wait_polls(1)
    dash.assert_fits()
    dash.shot("comparison")


def test_a_pending_comparison_shows_its_runs_and_asks_for_no_report(dash, seeded):
    # its report does not exist yet: asking for it would be a 409, a console error
    dash.open(f"/comparisons/{seeded.pending_comparison_id}")
    assert dash.attrs("table#comparison tr[data-model]", "data-model") == [seeded.names[seeded.runs["succeeded"]]]
    assert "pending" in dash.page.inner_text("body")
    assert dash.page.locator("#items .item[data-item]").count() == 0
    dash.wait_polls(2)
