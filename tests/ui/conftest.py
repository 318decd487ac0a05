"""Fixtures of the dashboard's browser tests (docs/dashboard.md, "What the browser tests rely on").

- `service`: one real `trainyard serve --no-controller` for the whole session, on a 127.0.0.x
  loopback address and a free port, on its own SQLite file migrated by `trainyard db upgrade` and
  seeded by seed.py (`seeded`: what was written). `service.stop()` and `service.start()` take it
  down and bring it back on the same address (the outage test).
- `live_writer`: a thread appending metric points, events and log chunks to the seeded training
  run, as the controller's ingest does, while a test watches the page.
- `browser`: Debian's Chromium (`shutil.which("chromium")`; Playwright never downloads a browser),
  one for the session; `dash`: a fresh page in its own context that records console errors and
  page errors and fails the test on any (`dash.allow(pattern)` lets a test expect some), with the
  helpers the tests share: `open` (waits for `body[data-ready="1"]`), `wait_polls` (waits for
  `body[data-polls]` to count more rounds, never for time), `chart` (a plotly chart's traces and
  axes), `shot` (test-results/screenshots/<name>.png), `overflow`.

Pages are opened with `?refresh_ms=300` so a poll round takes a fraction of a second.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert, select

from orchestrator.db.models import LogChunk, MetricPoint, Run, RunEvent, utcnow
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from seed import LIVE_STEPS, Seeded, log_lines, metric_rows, rollups_module, seed

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-results" / "screenshots"
REFRESH_MS = 300
WIDE, NARROW = 1400, 400
BIN = Path(sys.executable).with_name("trainyard")
# the installed entry point when `pip install -e .` ran; the same code via -m otherwise
TRAINYARD = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "orchestrator.cli"]


def _need(what: str) -> None:
    """Skip (fail on CI, where scripts/test.sh installs everything) when `what` is missing."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI must run the browser tests (scripts/test.sh installs it)")
    pytest.skip(what)


# -- the service ----------------------------------------------------------------------------------
def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class UiService:
    """`trainyard serve --no-controller` on 127.0.0.x:PORT and a SQLite file in `data_dir`."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.db_url = f"sqlite:///{data_dir / 'trainyard.db'}"
        self.host = f"127.0.0.{random.randrange(2, 255)}"
        self.port = free_port(self.host)
        self.url = f"http://{self.host}:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        self.env |= {
            "PYTHONPATH": str(REPO),
            "TRAINYARD_DATA_DIR": str(data_dir),
            "TRAINYARD_DATABASE_URL": self.db_url,
            "TRAINYARD_HOST": self.host,
            "TRAINYARD_PORT": str(self.port),
            "TRAINYARD_API_URL": self.url,
        }
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.seeded = Seeded()

    def upgrade(self) -> None:
        done = subprocess.run(
            [*TRAINYARD, "db", "upgrade"], env=self.env, capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert done.returncode == 0, done.stderr

    def start(self) -> UiService:
        self.starts += 1
        with open(self.data_dir / f"serve-{self.starts}.log", "w") as log:
            self.proc = subprocess.Popen(
                [*TRAINYARD, "serve", "--no-controller"],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"trainyard serve exited:\n{self.log_tail()}"
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"trainyard serve did not answer in 60 s:\n{self.log_tail()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(
            "".join(p.read_text().splitlines(True)[-n:]) for p in sorted(self.data_dir.glob("serve-*.log"))
        )

    def get(self, path: str, **params) -> dict:
        r = httpx.get(self.url + "/api/v1" + path, params=params, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="session")
def service(tmp_path_factory) -> UiService:
    svc = UiService(tmp_path_factory.mktemp("ui"))
    svc.upgrade()
    svc.seeded = seed(svc.db_url)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def seeded(service) -> Seeded:
    return service.seeded


# -- the live run ---------------------------------------------------------------------------------
class LiveWriter:
    """Appends to the live run from a thread, as the controller's ingest does: a train point
    every `every_s` (a val point every 50 steps), a log chunk every 2 ticks and an event every 4,
    and the run's progress columns. `written` counts what it wrote; `event_ids` are its events."""

    def __init__(self, db_url: str, run_id: str, every_s: float = 0.15):
        self.engine = make_engine(db_url)
        self.factory = make_sessionmaker(self.engine)
        self.run_id, self.every_s = run_id, every_s
        with self.factory() as s:
            self.step = (s.scalar(select(Run.step).where(Run.id == run_id)) or LIVE_STEPS) + 1
        self.rnd = random.Random(7)
        self.written = {"points": 0, "events": 0, "log_lines": 0}
        self.event_ids: list[int] = []
        self.last_log_line = ""
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-writer", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> LiveWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.engine.dispose()

    def _loop(self) -> None:
        tick = 0
        try:
            while not self._stop.is_set():
                self._tick(tick)
                tick += 1
                self._stop.wait(self.every_s)
        except BaseException as exc:  # noqa: BLE001 - kept and raised in the test by `check`
            self.error = exc

    def _tick(self, tick: int) -> None:
        step_s = 2.0
        now = time.time()
        rows = metric_rows(
            self.run_id,
            range(self.step, self.step + 1),
            total_steps=2000,
            t0=now - self.step * step_s,
            step_s=step_s,
            rnd=self.rnd,
        )
        rollups = rollups_module()
        with transaction(self.factory) as s:
            newest = rollups.newest_point_id(s, self.run_id) if rollups else 0
            s.execute(insert(MetricPoint), rows)
            if rollups is not None:
                rollups.refresh_after_insert(s, self.run_id, rows, newest)
            run = s.get(Run, self.run_id)
            run.step, run.tokens_done = self.step, rows[0]["tokens"]
            run.train_loss, run.updated_at = rows[0]["train_loss"], utcnow()
            lines = []
            if tick % 2 == 0:
                lines = log_lines(self.run_id, 3, first_step=self.step)[1:]
                s.add(LogChunk(run_id=self.run_id, rank=0, text="".join(x + "\n" for x in lines), time=utcnow()))
            event = None
            if tick % 4 == 0:
                event = RunEvent(
                    run_id=self.run_id, time=utcnow(), kind="info", message=f"live: step {self.step} reached"
                )
                s.add(event)
            s.flush()
            event_id = event.id if event is not None else None
        with self.lock:
            self.written["points"] += len(rows)
            self.written["log_lines"] += len(lines)
            if lines:
                self.last_log_line = lines[-1]
            if event_id is not None:
                self.written["events"] += 1
                self.event_ids.append(event_id)
        self.step += 1

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the live writer failed: {self.error!r}") from self.error

    def snapshot(self) -> dict:
        with self.lock:
            last = self.event_ids[-1] if self.event_ids else None
            return {**self.written, "last_event_id": last, "last_log_line": self.last_log_line}


@pytest.fixture
def live_writer(service, seeded):
    writer = LiveWriter(service.db_url, seeded.runs["live"]).start()
    yield writer
    writer.stop()
    writer.check()


# -- the browser ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        _need("Debian's chromium is not installed (scripts/install-chromium.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


_CHART_JS = """id => {
  const el = document.getElementById(id);
  if (!el || !el.data) return null;
  const full = el._fullData || [];
  const fl = el._fullLayout || {};
  const axis = a => ({title: (a && a.title && a.title.text) || '', type: a && a.type});
  const arr = v => (v == null ? [] : Array.from(v));
  return {
    isChart: el.classList.contains('chart'),
    traces: el.data.map((t, i) => {
      const f = full[i] || {};
      return {
        name: t.name, type: t.type || 'scatter', mode: f.mode || t.mode || '',
        x: arr(t.x), y: arr(t.y),
        color: (f.line && typeof f.line.color === 'string' && f.line.color)
            || (f.marker && typeof f.marker.color === 'string' && f.marker.color) || null,
        visible: f.visible === undefined ? true : f.visible,
        showlegend: f.showlegend,
        orientation: f.orientation || t.orientation || null,
        base: arr(t.base),
        hovertext: arr(t.hovertext),
        customdata: t.customdata == null ? [] : Array.from(t.customdata, c => (c != null && c.length !== undefined && typeof c !== 'string') ? Array.from(c) : c),
        blob: JSON.stringify({name: t.name, x: t.x, y: t.y, base: t.base, text: t.text, hovertext: t.hovertext,
                              hovertemplate: t.hovertemplate, customdata: t.customdata}),
      };
    }),
    xaxis: axis(fl.xaxis), yaxis: axis(fl.yaxis),
  };
}"""


class Dash:
    """One page of the dashboard in its own browser context, and what it logged."""

    def __init__(self, context, service: UiService):
        self.context, self.service = context, service
        self.page = context.new_page()
        self.page.set_default_timeout(15_000)
        self.problems: list[str] = []
        self.allowed: list[re.Pattern] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))

    def _console(self, msg) -> None:
        if msg.type == "error":
            loc = msg.location or {}
            self.problems.append(f"console error: {msg.text} ({loc.get('url', '')}:{loc.get('lineNumber', '')})")

    def allow(self, pattern: str) -> None:
        """Console errors matching `pattern` are expected in this test (e.g. refused connections)."""
        self.allowed.append(re.compile(pattern))

    def errors(self) -> list[str]:
        return [p for p in self.problems if not any(a.search(p) for a in self.allowed)]

    def check(self) -> None:
        errors = self.errors()
        assert not errors, "the page logged errors:\n" + "\n".join(errors)

    # -- navigation and waiting ---------------------------------------------------------------------
    def url(self, path: str, refresh_ms: int | None = REFRESH_MS) -> str:
        if refresh_ms is None:
            return self.service.url + path
        return self.service.url + path + ("&" if "?" in path else "?") + f"refresh_ms={refresh_ms}"

    def open(self, path: str, *, width: int = WIDE, height: int = 900, refresh_ms: int | None = REFRESH_MS) -> None:
        """Load `path` at `width` x `height` and wait until the page says its first render is done."""
        self.page.set_viewport_size({"width": width, "height": height})
        self.page.goto(self.url(path, refresh_ms))
        self.wait_ready()

    def wait_ready(self) -> None:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_selector('body[data-ready="1"]', state="attached", timeout=20_000)
        except PlaywrightTimeout as exc:  # say what the page logged
            raise AssertionError(
                f"{self.page.url} never set body[data-ready=1] in 20 s; it logged: {self.problems}"
            ) from exc
        marks = self.page.evaluate("() => performance.getEntriesByName('trainyard-ready').length")
        assert marks == 1, f"{self.page.url}: {marks} performance marks 'trainyard-ready' at body[data-ready=1]"
        anonymous = self.page.evaluate("() => document.querySelectorAll('div.chart:not([id])').length")
        assert anonymous == 0, f"{self.page.url}: {anonymous} div.chart without an id"
        self.check()

    def polls(self) -> int:
        return int(self.page.evaluate("() => Number(document.body.dataset.polls || 0)"))

    def wait_polls(self, rounds: int = 1, timeout_ms: int = 15_000) -> int:
        """Wait until `body[data-polls]` has counted `rounds` more completed poll rounds, or the
        page stopped polling (`body[data-polling="stopped"]`: a finished run, all read)."""
        target = self.polls() + rounds
        self.page.wait_for_function(
            "n => Number(document.body.dataset.polls || 0) >= n || document.body.dataset.polling === 'stopped'",
            arg=target,
            timeout=timeout_ms,
        )
        self.check()
        return target

    def wait_for(self, js: str, arg=None, timeout_ms: int = 15_000) -> None:
        self.page.wait_for_function(js, arg=arg, timeout=timeout_ms)

    # -- reading the page ---------------------------------------------------------------------------
    def chart(self, chart_id: str) -> dict:
        chart = self.page.evaluate(_CHART_JS, chart_id)
        assert chart is not None, f"no plotly chart #{chart_id} on {self.page.url}"
        assert chart["isChart"], f"#{chart_id} is not a div.chart"
        return chart

    def trace(self, chart_id: str, name: str) -> dict:
        traces = self.chart(chart_id)["traces"]
        found = [t for t in traces if t["name"] == name]
        assert found, f"#{chart_id} has no trace {name!r}: {[t['name'] for t in traces]}"
        return found[0]

    def texts(self, selector: str) -> list[str]:
        return self.page.locator(selector).all_inner_texts()

    def attrs(self, selector: str, name: str) -> list[str]:
        return self.page.locator(selector).evaluate_all(f"els => els.map(e => e.getAttribute({name!r}))")

    def overflow(self) -> dict:
        """How much wider than the window the page is (0 when it fits)."""
        return self.page.evaluate(
            """() => ({scroll: document.documentElement.scrollWidth, body: document.body.scrollWidth,
                       inner: window.innerWidth})"""
        )

    def shot(self, name: str, full_page: bool = False) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def assert_fits(self) -> None:
        size = self.overflow()
        assert size["scroll"] <= size["inner"] and size["body"] <= size["inner"], (
            f"{self.page.url} is wider than the window: {size}"
        )


def _new_dash(browser, service: UiService) -> Dash:
    return Dash(browser.new_context(viewport={"width": WIDE, "height": 900}, device_scale_factor=1), service)


@pytest.fixture
def dash(browser, service):
    d = _new_dash(browser, service)
    yield d
    d.context.close()
    d.check()


class OpenPages:
    """Pages opened once per test module and read by several of its tests (a page load costs
    seconds: plotly.js alone is 1.2 MB to parse). Only tests that change nothing on the page use
    them. Each test is failed by what the pages logged during it."""

    def __init__(self, browser, service: UiService):
        self.browser, self.service = browser, service
        self.open: dict[str, Dash] = {}

    def get(self, path: str) -> Dash:
        if path not in self.open:
            d = _new_dash(self.browser, self.service)
            d.open(path)
            self.open[path] = d
        return self.open[path]

    def close(self) -> None:
        for d in self.open.values():
            d.context.close()


@pytest.fixture(scope="module")
def _module_pages(browser, service):
    pages = OpenPages(browser, service)
    yield pages
    pages.close()


@pytest.fixture
def pages(_module_pages):
    seen = {path: len(d.problems) for path, d in _module_pages.open.items()}
    yield _module_pages
    for path, d in _module_pages.open.items():
        new = [p for p in d.problems[seen.get(path, 0) :] if not any(a.search(p) for a in d.allowed)]
        assert not new, f"{path} logged errors during this test:\n" + "\n".join(new)
