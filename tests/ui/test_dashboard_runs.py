"""The runs page (`/`): the table, its paging, sorting and filters (kept in the URL), and the loss
curves of the selected runs overlaid."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

COLUMNS = (
    "select",
    "id",
    "name",
    "status",
    "provider",
    "progress",
    "train_loss",
    "val_loss",
    "test_loss",
    "tokens_per_s",
    "cost",
    "projected",
    "eta",
)
#: `GET /runs?sort=` keys (docs/dashboard.md): each has its header
SORT_KEYS = ("created_at", "name", "status", "progress", "train_loss", "val_loss", "test_loss", "tokens_per_s", "cost")
ROWS = "#runs-table tbody tr[data-run-id]"
PAGE_INFO = re.compile(r"^\s*(\d[\d,]*)\s*[–-]\s*(\d[\d,]*)\s+of\s+(\d[\d,]*)\s*$")


def row_ids(dash) -> list[str]:
    return dash.attrs(ROWS, "data-run-id")


def page_info(dash) -> tuple[int, int, int]:
    text = dash.page.inner_text("#page-info")
    m = PAGE_INFO.match(text)
    assert m, f"span#page-info reads {text!r}, not 'first–last of total'"
    first, last, total = (int(g.replace(",", "")) for g in m.groups())
    return first, last, total


def query(dash) -> dict[str, list[str]]:
    return parse_qs(urlparse(dash.page.url).query)


def test_runs_page_renders_every_run_column_newest_first(dash, seeded):
    dash.open("/")
    ids = row_ids(dash)
    assert ids, "no rows in table#runs-table"
    assert ids[0] == seeded.runs["live"], "the default sort is created_at, newest first"
    first, last, total = page_info(dash)
    assert (first, total) == (1, seeded.total) and last == len(ids) < seeded.total

    live = seeded.runs["live"]
    row = f'{ROWS}[data-run-id="{live}"]'
    for col in COLUMNS:
        assert dash.page.locator(f'{row} td[data-col="{col}"]').count() == 1, f"no td[data-col={col}]"
    assert dash.page.inner_text(f'{row} td[data-col="id"]').strip() == live, "full ids, never cut"
    assert dash.page.inner_text(f'{row} td[data-col="name"]').strip() == seeded.names[live]
    assert "training" in dash.page.inner_text(f'{row} td[data-col="status"]')
    assert "ssh" in dash.page.inner_text(f'{row} td[data-col="provider"]')
    assert dash.page.locator(f'{row} input.select-run[data-run-id="{live}"]').count() == 1
    done = seeded.runs["succeeded"]
    assert "100%" in dash.page.inner_text(f'{ROWS}[data-run-id="{done}"] td[data-col="progress"]')

    sortable = set(dash.attrs("#runs-table th[data-sort]", "data-sort"))
    assert sortable >= set(SORT_KEYS), f"headers that do not sort: {set(SORT_KEYS) - sortable}"
    for nav, href in (("#nav-runs", "/"), ("#nav-comparisons", "/comparisons"), ("#nav-plan", "/plan")):
        assert urlparse(dash.page.locator(f"a{nav}").get_attribute("href")).path == href
    assert dash.page.locator("#reconnecting").get_attribute("hidden") is not None
    dash.wait_polls(2)
    assert row_ids(dash) == ids, "a poll round with nothing new changes no row"
    dash.assert_fits()
    dash.shot("runs")


def test_paging_past_the_first_hundred_runs(dash, seeded):
    dash.open("/")
    first_page = row_ids(dash)
    first, last, total = page_info(dash)
    assert total == seeded.total > 100 and last == len(first_page) <= 100
    assert dash.page.locator("#page-prev").is_disabled()

    dash.page.click("#page-next")
    dash.wait_for(
        "([sel, first]) => document.querySelector(sel) && document.querySelector(sel).dataset.runId !== first",
        [ROWS, first_page[0]],
    )
    second_page = row_ids(dash)
    first2, last2, total2 = page_info(dash)
    assert (first2, total2) == (last + 1, total)
    assert last2 == min(total, last + len(first_page)) and len(second_page) == last2 - first2 + 1
    assert not set(first_page) & set(second_page), "page 2 repeats rows of page 1"
    state = dash.page.url
    assert query(dash).get("page") == ["2"], f"the page is not in the URL's query: {state}"

    dash.page.goto(state)  # the URL alone brings back page 2
    dash.wait_ready()
    assert row_ids(dash) == second_page and page_info(dash)[0] == first2
    if last2 == total:
        assert dash.page.locator("#page-next").is_disabled()

    dash.page.click("#page-prev")
    dash.wait_for(
        "([sel, first]) => document.querySelector(sel) && document.querySelector(sel).dataset.runId === first",
        [ROWS, first_page[0]],
    )
    assert row_ids(dash) == first_page and page_info(dash)[0] == 1


def _click_sort(dash, key: str, previous: str | None) -> str:
    dash.page.click(f'th[data-sort="{key}"]')
    dash.wait_for(
        "([key, prev]) => { const a = document.querySelector(`th[data-sort='${key}']`).getAttribute('aria-sort');"
        " return (a === 'ascending' || a === 'descending') && a !== prev; }",
        [key, previous],
    )
    return dash.page.locator(f'th[data-sort="{key}"]').get_attribute("aria-sort")


def _names(dash) -> list[str]:
    return [t.strip() for t in dash.texts(f'{ROWS} td[data-col="name"]')]


def test_sorting_by_a_header_and_again_reverses(dash, seeded):
    dash.open("/")
    names = sorted(seeded.names.values())
    direction = _click_sort(dash, "name", None)
    assert direction == "ascending", "a first click sorts names ascending"
    want_first = names[0] if direction == "ascending" else names[-1]
    dash.wait_for(
        "([sel, name]) => { const c = document.querySelector(sel); return c && c.innerText.trim() === name; }",
        [f'{ROWS} td[data-col="name"]', want_first],
    )
    shown = _names(dash)
    assert shown == sorted(shown, reverse=direction == "descending"), f"not sorted {direction}: {shown[:8]}"
    assert query(dash).get("sort") == ["name"], f"the sort is not in the URL: {dash.page.url}"

    again = _click_sort(dash, "name", direction)
    assert again != direction
    want_first = names[0] if again == "ascending" else names[-1]
    dash.wait_for(
        "([sel, name]) => { const c = document.querySelector(sel); return c && c.innerText.trim() === name; }",
        [f'{ROWS} td[data-col="name"]', want_first],
    )
    shown = _names(dash)
    assert shown == sorted(shown, reverse=again == "descending")

    # a numeric column: the lowest (or highest) test loss first, runs without one last
    direction = _click_sort(dash, "test_loss", None)
    assert direction == "ascending", "a first click sorts losses ascending"
    losses = seeded.test_losses
    best = min(losses, key=losses.get) if direction == "ascending" else max(losses, key=losses.get)
    dash.wait_for(
        "([sel, id]) => { const r = document.querySelector(sel); return r && r.dataset.runId === id; }", [ROWS, best]
    )
    ids = row_ids(dash)
    with_loss = [i for i in ids if i in losses]
    assert ids[: len(with_loss)] == with_loss, "runs without a test loss sort last"
    values = [losses[i] for i in with_loss]
    assert values == sorted(values, reverse=direction == "descending")


def test_filters_change_the_rows_and_stay_in_the_url(dash, seeded):
    dash.open("/")
    dash.page.select_option("#filter-status", "failed")
    want = seeded.count(status="failed")
    dash.wait_for(
        "([sel, n]) => { const rows = [...document.querySelectorAll(sel)];"
        " return rows.length === n && rows.every(r => r.querySelector('td[data-col=status]').innerText.includes('failed')); }",
        [ROWS, want],
    )
    assert page_info(dash)[2] == want
    assert query(dash).get("status") == ["failed"], dash.page.url

    dash.page.reload()  # the filter comes back from the URL
    dash.wait_ready()
    assert dash.page.locator("#filter-status").input_value() == "failed"
    assert len(row_ids(dash)) == want

    dash.page.select_option("#filter-status", "")
    dash.page.select_option("#filter-provider", "ssh")
    want = seeded.count(provider="ssh")
    dash.wait_for(
        "([sel, n]) => { const rows = [...document.querySelectorAll(sel)];"
        " return rows.length === Math.min(n, 100) && rows.every(r => r.querySelector('td[data-col=provider]').innerText.includes('ssh')); }",
        [ROWS, want],
    )
    assert page_info(dash)[2] == want
    assert set(row_ids(dash)) <= {rid for rid, p in seeded.providers.items() if p == "ssh"}

    dash.page.select_option("#filter-provider", "")
    dash.page.fill("#filter-name", "PEER")
    peer = seeded.runs["peer"]
    dash.wait_for("([sel, id]) => { const rows = [...document.querySelectorAll(sel)];"
                  " return rows.length === 1 && rows[0].dataset.runId === id; }", [ROWS, peer])  # fmt: skip
    assert query(dash).get("q") == ["PEER"] or "PEER" in dash.page.url

    dash.page.fill("#filter-name", peer[:6])  # an id prefix matches too
    dash.wait_for("([sel, id]) => { const rows = [...document.querySelectorAll(sel)];"
                  " return rows.length >= 1 && rows.some(r => r.dataset.runId === id); }", [ROWS, peer])  # fmt: skip


def test_selected_runs_overlay_train_and_val_curves(dash, seeded):
    dash.open("/")
    picked = [seeded.runs["live"], seeded.runs["cancelled"]]
    for rid in picked:
        dash.page.check(f'input.select-run[data-run-id="{rid}"]')
    want = [f"{seeded.names[r]} · {k}" for r in picked for k in ("train", "val")]
    dash.wait_for(
        "([id, want]) => { const el = document.getElementById(id);"
        " return el && el.data && want.every(n => el.data.some(t => t.name === n)); }",
        ["chart-overlay", want],
    )
    chart = dash.chart("chart-overlay")
    names = [t["name"] for t in chart["traces"]]
    assert sorted(names) == sorted(want), names
    for rid in picked:
        train = dash.trace("chart-overlay", f"{seeded.names[rid]} · train")
        assert len(train["x"]) == len(train["y"]) > 0
    val = dash.trace("chart-overlay", f"{seeded.names[picked[0]]} · val")
    assert len(val["y"]) > 0, "the live run has val points"

    sel = query(dash).get("sel", [""])[0].split(",")
    assert sorted(sel) == sorted(picked), f"the checked runs are not in the URL: {dash.page.url}"

    dash.page.reload()  # the URL brings the checked runs and their curves back
    dash.wait_ready()
    for rid in picked:
        assert dash.page.locator(f'input.select-run[data-run-id="{rid}"]').is_checked()
    dash.wait_for(
        "([id, want]) => { const el = document.getElementById(id);"
        " return el && el.data && want.every(n => el.data.some(t => t.name === n)); }",
        ["chart-overlay", want],
    )

    dash.page.select_option("#overlay-x", "usd")
    dash.wait_for("id => document.getElementById(id)._fullLayout.xaxis.title.text === 'US$'", "chart-overlay")
    dash.page.check("#overlay-log")
    dash.wait_for("id => document.getElementById(id)._fullLayout.yaxis.type === 'log'", "chart-overlay")

    dash.page.uncheck(f'input.select-run[data-run-id="{picked[1]}"]')
    dash.wait_for(
        "([id, gone]) => { const el = document.getElementById(id); return el && el.data && !el.data.some(t => t.name === gone); }",
        ["chart-overlay", want[2]],
    )
    assert len(dash.chart("chart-overlay")["traces"]) == 2
