"""Live updates: while a writer appends to the training run, its page updates without a reload,
patches the events table in place (new ones on top), extends the charts, and appends to the log
without moving the reader's scroll position or losing a text selection; at the bottom the log
follows its tail. When the service goes away a banner says so and the data stays; it clears
when the service is back."""

from __future__ import annotations

import time

EVENTS = "table#events tr[data-event-id]"

_SELECT_IN_LOG = """() => {
  const log = document.querySelector('pre#log');
  const walker = document.createTreeWalker(log, NodeFilter.SHOW_TEXT);
  let node = walker.nextNode();
  while (node && node.length < 30) node = walker.nextNode();
  if (!node) return '';
  const range = document.createRange();
  range.setStart(node, 5);
  range.setEnd(node, 30);
  const sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
  return sel.toString();
}"""


def _next_event(writer, after: int | None, timeout_s: float = 15) -> int:
    """The id of an event the writer wrote after event `after` (waits on the writer, not on a clock)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        writer.check()
        last = writer.snapshot()["last_event_id"]
        if last is not None and (after is None or last > after):
            return last
        time.sleep(0.05)
    raise AssertionError("the live writer wrote no event")


def test_a_live_run_updates_in_place(dash, seeded, live_writer):
    rid = seeded.runs["live"]
    dash.open(f"/runs/{rid}")
    page = dash.page
    page.evaluate("() => { window.__noReload = 'still here'; }")
    points = len(dash.trace("chart-loss", "train loss")["y"])
    first_events = [int(x) for x in dash.attrs(EVENTS, "data-event-id")]
    assert first_events, "the live run's events are on the page"
    # an event row already shown: a table patched in place keeps its element
    page.evaluate(
        "sel => { document.querySelector(sel).__kept = true; }", f'{EVENTS}[data-event-id="{first_events[-1]}"]'
    )

    # read the log from its middle, with some of it selected
    scroll = page.evaluate(
        """() => { const log = document.querySelector('pre#log');
                   log.scrollTop = Math.floor((log.scrollHeight - log.clientHeight) / 2); return log.scrollTop; }"""
    )
    assert scroll > 0, "pre#log does not scroll: it cannot keep a reader's position"
    selected = page.evaluate(_SELECT_IN_LOG)
    assert len(selected) == 25

    newest = _next_event(live_writer, max(first_events))
    dash.wait_for(
        "([sel, id]) => { const r = document.querySelector(sel); return r && Number(r.dataset.eventId) >= id; }",
        [EVENTS, newest],
        timeout_ms=20_000,
    )
    line = live_writer.snapshot()["last_log_line"]
    dash.wait_for("([sel, line]) => document.querySelector(sel).textContent.includes(line)", ["pre#log", line])
    dash.wait_polls(1)

    assert page.evaluate("() => window.__noReload") == "still here", "the page was reloaded"
    ids = [int(x) for x in dash.attrs(EVENTS, "data-event-id")]
    assert ids == sorted(ids, reverse=True) and ids[0] >= newest, "new events go on top"
    assert set(first_events) <= set(ids), "the events shown before are still shown"
    assert page.evaluate(
        "sel => { const r = document.querySelector(sel); return !!(r && r.__kept); }",
        f'{EVENTS}[data-event-id="{first_events[-1]}"]',
    ), "the events table was re-rendered instead of patched"
    assert len(dash.trace("chart-loss", "train loss")["y"]) > points, "the loss chart was not extended"
    assert page.evaluate("() => document.querySelector('pre#log').scrollTop") == scroll, "the log's scroll moved"
    assert page.evaluate("() => window.getSelection().toString()") == selected, "the log's text selection was lost"


def test_the_runs_table_patches_a_live_row_in_place(dash, seeded, live_writer):
    rid = seeded.runs["live"]
    dash.open("/")
    row = f'#runs-table tbody tr[data-run-id="{rid}"]'
    dash.page.evaluate("sel => { document.querySelector(sel).__kept = true; }", row)
    dash.page.evaluate("() => { window.__noReload = 'still here'; }")
    step = dash.page.inner_text(f'{row} td[data-col="progress"]') + dash.page.inner_text(
        f'{row} td[data-col="train_loss"]'
    )
    dash.wait_for(
        "([sel, before]) => { const r = document.querySelector(sel); if (!r) return false;"
        " const now = r.querySelector('td[data-col=progress]').innerText + r.querySelector('td[data-col=train_loss]').innerText;"
        " return now !== before; }",
        [row, step],
        timeout_ms=20_000,
    )
    assert dash.page.evaluate("sel => !!document.querySelector(sel).__kept", row), "the row was rebuilt, not patched"
    assert dash.page.evaluate("() => window.__noReload") == "still here"
    live_writer.check()


def test_the_log_follows_its_tail_when_scrolled_to_the_bottom(dash, seeded, live_writer):
    dash.open(f"/runs/{seeded.runs['live']}")
    page = dash.page
    page.evaluate("() => { const log = document.querySelector('pre#log'); log.scrollTop = log.scrollHeight; }")
    height = page.evaluate("() => document.querySelector('pre#log').scrollHeight")
    dash.wait_for("([sel, h]) => document.querySelector(sel).scrollHeight > h", ["pre#log", height])
    dash.wait_polls(1)
    gap = page.evaluate(
        "() => { const l = document.querySelector('pre#log'); return l.scrollHeight - l.clientHeight - l.scrollTop; }"
    )
    assert gap <= 2, f"the log stopped following its tail ({gap}px above the bottom)"
    live_writer.check()


def test_an_outage_shows_the_banner_keeps_the_data_and_clears(dash, seeded, service):
    # while the service is down the browser logs the refused requests; nothing else is expected
    dash.allow(r"ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE|Failed to fetch")
    rid = seeded.runs["live"]  # a finished run's page stops polling once it has read everything
    dash.open(f"/runs/{rid}")
    banner = dash.page.locator("#reconnecting")
    assert banner.get_attribute("hidden") is not None, "the banner shows while the service answers"
    points = len(dash.trace("chart-loss", "train loss")["y"])
    events = dash.page.locator(EVENTS).count()

    service.stop()
    try:
        dash.page.wait_for_selector("#reconnecting:not([hidden])", state="visible", timeout=15_000)
        assert banner.inner_text().strip().startswith("Reconnecting"), banner.inner_text()
        dash.shot("outage")
        assert len(dash.trace("chart-loss", "train loss")["y"]) == points, "the chart lost its data"
        assert dash.page.locator(EVENTS).count() == events, "the events went away"
        assert "%" in dash.page.inner_text('#run-summary [data-field="progress"]'), "the summary went away"
    finally:
        service.start()

    dash.page.wait_for_selector("#reconnecting[hidden]", state="attached", timeout=15_000)
    dash.wait_polls(1)
    assert dash.page.locator("#reconnecting").get_attribute("hidden") is not None
    assert len(dash.trace("chart-loss", "train loss")["y"]) == points
    assert dash.page.locator(EVENTS).count() == events
