"""The plan page (`/plan`): a spec pasted into it gives the plan table and its frontier chart; a
spec with three mistakes shows all three."""

from __future__ import annotations

from seed import PLAN_BAD_FIELDS, PLAN_BAD_SPEC, PLAN_SPEC

ROWS = "table#plan-table tr[data-instance-type]"


def _submit(dash, spec: str) -> None:
    dash.page.fill("textarea#plan-spec", spec)
    providers = dash.attrs("select#plan-provider option", "value")
    if "local" in providers:
        dash.page.select_option("select#plan-provider", "local")
    dash.page.click("button#plan-submit")


def test_a_pasted_spec_fills_the_plan_table_and_chart(dash):
    dash.open("/plan")
    _submit(dash, PLAN_SPEC)
    dash.page.wait_for_selector(f'{ROWS}[data-instance-type="local"]')
    assert dash.attrs(ROWS, "data-instance-type") == ["local"], "the local provider has one type"
    row = dash.page.inner_text(f'{ROWS}[data-instance-type="local"]')
    assert "measured" in row, f"the seeded throughput record makes the row measured: {row!r}"
    chart = dash.chart("chart-plan")
    assert sorted(t["name"] for t in chart["traces"]) == ["frontier", "instance types"]
    assert len(dash.trace("chart-plan", "instance types")["x"]) == 1
    assert len(dash.trace("chart-plan", "frontier")["x"]) == 1
    error = dash.page.locator("#plan-error")
    assert error.count() == 0 or not error.is_visible() or not error.inner_text().strip()
    dash.assert_fits()
    dash.shot("plan")


def test_a_bad_spec_shows_every_error(dash):
    dash.allow(r"status of 422")  # the service refuses the spec: that answer is the point
    dash.open("/plan")
    _submit(dash, PLAN_SPEC)
    dash.page.wait_for_selector(f'{ROWS}[data-instance-type="local"]')

    _submit(dash, PLAN_BAD_SPEC)
    error = dash.page.locator("#plan-error")
    error.wait_for(state="visible")
    dash.wait_for("sel => document.querySelectorAll(sel).length > 0", "#plan-error li")
    items = dash.texts("#plan-error li")
    assert len(items) == len(PLAN_BAD_FIELDS), f"one li per mistake: {items}"
    for field in PLAN_BAD_FIELDS:
        assert sum(field in i for i in items) == 1, f"#plan-error does not name {field} in an li of its own: {items}"
    assert not dash.page.locator("table#plan-table").is_visible(), "the previous plan still shows"
    dash.check()

    _submit(dash, PLAN_SPEC)  # fixed: the errors go, the table comes back
    dash.page.wait_for_selector(f'{ROWS}[data-instance-type="local"]', state="visible")
    assert not error.is_visible() or not error.inner_text().strip()
