"""No page is wider than the window at 400 px, with everything on it: long run names, long
unbroken event messages (a URI, a warning), wide tables, the charts. (At 1,400 px each page's own
tests check the same with `dash.assert_fits()`.)"""

from __future__ import annotations

import pytest

from seed import PLAN_SPEC

NARROW = 400

PAGES = ("runs", "run", "live", "comparisons", "comparison", "plan")


def _path(seeded, name: str) -> str:
    return {
        "runs": "/",
        "run": f"/runs/{seeded.runs['succeeded']}",
        "live": f"/runs/{seeded.runs['live']}",
        "comparisons": "/comparisons",
        "comparison": f"/comparisons/{seeded.comparison_id}",
        "plan": "/plan",
    }[name]


@pytest.mark.parametrize("name", PAGES)
def test_no_page_is_wider_than_the_window_at_400_px(dash, seeded, name):
    width = NARROW
    dash.open(_path(seeded, name), width=width)
    if name == "plan":
        dash.page.fill("textarea#plan-spec", PLAN_SPEC)
        if "local" in dash.attrs("select#plan-provider option", "value"):
            dash.page.select_option("select#plan-provider", "local")
        dash.page.click("button#plan-submit")
        dash.page.wait_for_selector('table#plan-table tr[data-instance-type="local"]')
    if name == "run":
        assert "segment039" in dash.page.inner_text("table#events"), "the long event is on the page"
    if name != "plan":  # the plan page asks once per submit: it does not poll
        dash.wait_polls(1)
    dash.assert_fits()
    dash.shot(f"{name}-{width}")
