"""Benchmark: the dashboard's run page on a long run: first paint, and each refresh's API time.

    .venv/bin/python benchmarks/ui/bench_ui.py                       # SQLite, then PostgreSQL
    .venv/bin/python benchmarks/ui/bench_ui.py --db sqlite --rounds 20

Seeds one training run with 1,000,000 metric points (a train point every step, a val point every
100; bulk: sqlite3 executemany / PostgreSQL COPY, then the rollups built as the ingest keeps them),
500 events, 2,000 log lines, an instance and a few checkpoints into a fresh database (a SQLite
file in a temporary folder; on PostgreSQL a database of its own at 127.0.0.1:5432, dropped at the
end), starts `trainyard serve --no-controller` on a free loopback port, and measures:

- the series alone: `GET /runs/{id}/series` of the whole run (what the first paint waits for),
  and each request of a refresh round alone, one at a time, from this process (httpx);
- first paint, in Debian's Chromium through Playwright: navigation start -> the page's
  `trainyard-ready` performance mark (set with `body[data-ready="1"]` once the first render is
  complete), for --loads loads of the page in one browser profile on disk (the first cold; from
  the third on V8 compiles plotly.js from its code cache, as in a user's browser), split into
  the page's modules (DOMContentLoaded), the moment plotly.js has run (the page runs it once its
  first requests are out), the first poll round's API time and the drawing after it;
- each refresh: while a writer appends a point every 0.1 s (a log line every 0.5 s, an event
  every 2 s), the page polls every --refresh-ms; per poll round, the API time is from the round's
  first request's start to its last response's end (Resource Timing, in the page).

Prints a table per database and, with --json, one JSON line each. Timings never go in tests.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from sqlalchemy import create_engine, insert, text

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, when not pip-installed
from orchestrator.db.models import Checkpoint, Instance, LogChunk, MetricPoint, Run, RunEvent
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.spec import validate_spec

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("TRAINYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BIN = Path(sys.executable).with_name("trainyard")
TRAINYARD = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "orchestrator.cli"]
POINT_COLS = (
    "run_id",
    "kind",
    "step",
    "tokens",
    "time",
    "train_loss",
    "val_loss",
    "lr",
    "tokens_per_s",
    "mfu",
    "peak_mem_bytes",
    "wall_s",
)
STEP_S = 0.02  # gpt2-tiny on one GPU: 50 steps a second
TOKENS_PER_STEP = 8192
VAL_EVERY = 100


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rollups_module():
    """orchestrator.rollups where the checkout has it (the ingest keeps a run's rollups current as
    it writes points; this benchmark writes them directly, so it keeps them too); else None."""
    if importlib.util.find_spec("orchestrator.rollups") is None:
        return None
    return importlib.import_module("orchestrator.rollups")


# -- the database ---------------------------------------------------------------------------------
def point_rows(run_id: str, n_points: int, t_end: float):
    """About `n_points` rows: a train point every step and a val point every VAL_EVERY steps,
    the last one at `t_end`."""
    steps = n_points * VAL_EVERY // (VAL_EVERY + 1)
    t0 = t_end - steps * STEP_S
    rnd = random.Random(0)
    emitted = 0
    for step in range(steps):
        loss = 3.0 + 8.0 * math.exp(-step / 20_000) + rnd.gauss(0, 0.05)
        t = t0 + step * STEP_S
        yield (
            run_id,
            "train",
            step,
            (step + 1) * TOKENS_PER_STEP,
            t,
            loss,
            None,
            3e-4,
            409_600.0,
            0.31,
            9_000_000_000,
            step * STEP_S,
        )
        emitted += 1
        if step % VAL_EVERY == VAL_EVERY - 1 and emitted < n_points:
            yield (
                run_id,
                "val",
                step,
                (step + 1) * TOKENS_PER_STEP,
                t + 0.01,
                None,
                loss + 0.05,
                None,
                None,
                None,
                None,
                None,
            )
            emitted += 1
        if emitted >= n_points:
            return


def seed(db_url: str, n_points: int, n_events: int) -> tuple[str, int]:
    """One training run with `n_points` metric points and `n_events` events; (run id, its last step)."""
    now = datetime.now(timezone.utc)
    run_id = uuid.uuid4().hex[:12]
    spec = validate_spec(
        {
            "name": "bench-ui-long",
            "model": {"preset": "gpt2-tiny"},
            "training": {"seq_len": 1024, "micro_batch": 8, "max_tokens": 20_000_000_000},
            "compute": {"provider": "ssh", "instance_type": "workstation-4090"},
            "budget": {"max_usd": 100},
        }
    ).model_dump(mode="json")
    steps = n_points * VAL_EVERY // (VAL_EVERY + 1)
    started = now - timedelta(seconds=steps * STEP_S + 600)
    engine = make_engine(db_url)
    extra = {"provider": "ssh"} if "provider" in Run.__table__.c else {}
    with transaction(make_sessionmaker(engine)) as s:
        s.add(
            Run(
                id=run_id,
                name="bench-ui-long",
                spec=spec,
                status="training",
                cancel_requested=False,
                created_at=started - timedelta(seconds=30),
                updated_at=now,
                started_at=started,
                target_tokens=20_000_000_000,
                tokens_done=steps * TOKENS_PER_STEP,
                step=steps - 1,
                train_loss=3.1,
                val_loss=3.15,
                tokens_per_s=409_600.0,
                world_size=1,
                recoveries=0,
                metrics_offset=0,
                log_offset=0,
                **extra,
            )
        )
        s.flush()
        s.add(
            Instance(
                run_id=run_id,
                rank=0,
                name=f"ty-{run_id}-0",
                provider="ssh",
                instance_type="workstation-4090",
                price_cents_per_hour=80,
                status="active",
                launched_at=started,
                active_at=started + timedelta(seconds=20),
            )
        )
        statuses = ["pending", "provisioning", "bootstrapping", "training"]
        for i in range(n_events):
            t = started + timedelta(seconds=i * (steps * STEP_S) / n_events)
            if i < len(statuses):
                s.add(
                    RunEvent(
                        run_id=run_id,
                        time=t,
                        kind="status",
                        from_status=statuses[i - 1] if i else None,
                        to_status=statuses[i],
                        message=f"now {statuses[i]}",
                    )
                )
            else:
                s.add(RunEvent(run_id=run_id, time=t, kind="info", message=f"checkpoint step {i * 1000} stored"))
        for i in range(100):
            lines = "".join(f"[rank 0] step {i * 20 + j} | loss 3.1 | 409,600 tok/s\n" for j in range(20))
            s.add(LogChunk(run_id=run_id, rank=0, text=lines, time=started + timedelta(seconds=i)))
        for step in range(100_000, steps, 200_000):
            s.add(
                Checkpoint(
                    run_id=run_id,
                    step=step,
                    tokens=step * TOKENS_PER_STEP,
                    val_loss=3.2,
                    bytes=80_000_000,
                    uri=f"file:///tmp/bench/runs/{run_id}/checkpoints/step_{step:06d}",
                    state="stored",
                    created_at=started + timedelta(seconds=step * STEP_S),
                )
            )
    rows = point_rows(run_id, n_points, now.timestamp() - 1)
    raw = engine.raw_connection()
    try:
        if db_url.startswith("sqlite"):
            cur = raw.cursor()
            cur.executemany(
                f"INSERT INTO metric_points ({', '.join(POINT_COLS)}) VALUES ({', '.join('?' * len(POINT_COLS))})", rows
            )
            raw.commit()
        else:
            cur = raw.cursor()
            with cur.copy(f"COPY metric_points ({', '.join(POINT_COLS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            raw.commit()
            cur.execute("ANALYZE metric_points")
            raw.commit()
    finally:
        raw.close()
    rollups = rollups_module()
    if rollups is not None:  # as the ingest keeps them (and the migration backfills them)
        with transaction(make_sessionmaker(engine)) as s:
            rollups.rebuild_rollups(s, run_id)
    engine.dispose()
    return run_id, steps - 1


class Writer:
    """Appends to the run as the controller's ingest does: a train point every 0.1 s, a log
    chunk every 0.5 s, an event every 2 s."""

    def __init__(self, db_url: str, run_id: str, step: int):
        self.engine = make_engine(db_url)
        self.factory = make_sessionmaker(self.engine)
        self.run_id, self.step = run_id, step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.engine.dispose()

    def _loop(self) -> None:
        tick = 0
        while not self._stop.wait(0.1):
            tick += 1
            self.step += 1
            rollups = rollups_module()
            with transaction(self.factory) as s:
                newest = rollups.newest_point_id(s, self.run_id) if rollups else 0
                point = {
                    "run_id": self.run_id,
                    "kind": "train",
                    "step": self.step,
                    "tokens": (self.step + 1) * TOKENS_PER_STEP,
                    "time": time.time(),
                    "train_loss": 3.1,
                    "lr": 3e-4,
                    "tokens_per_s": 409_600.0,
                    "mfu": 0.31,
                }
                s.execute(insert(MetricPoint), [point])
                if rollups is not None:
                    rollups.refresh_after_insert(s, self.run_id, [point], newest)
                if tick % 5 == 0:
                    s.add(
                        LogChunk(
                            run_id=self.run_id,
                            rank=0,
                            text=f"[rank 0] step {self.step} | loss 3.1\n",
                            time=datetime.now(timezone.utc),
                        )
                    )
                if tick % 20 == 0:
                    s.add(
                        RunEvent(
                            run_id=self.run_id,
                            time=datetime.now(timezone.utc),
                            kind="info",
                            message=f"step {self.step}",
                        )
                    )


# -- the service ----------------------------------------------------------------------------------
class Service:
    def __init__(self, data_dir: Path, db_url: str):
        self.host, self.port = "127.0.0.1", free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.log = data_dir / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")} | {
            "PYTHONPATH": str(REPO),
            "TRAINYARD_DATA_DIR": str(data_dir),
            "TRAINYARD_DATABASE_URL": db_url,
            "TRAINYARD_HOST": self.host,
            "TRAINYARD_PORT": str(self.port),
        }
        self.proc: subprocess.Popen | None = None

    def upgrade(self) -> None:
        done = subprocess.run([*TRAINYARD, "db", "upgrade"], env=self.env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise SystemExit(f"trainyard db upgrade failed:\n{done.stderr}")

    def __enter__(self) -> Service:
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [*TRAINYARD, "serve", "--no-controller"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"trainyard serve exited:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit("trainyard serve did not answer in 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- the page -------------------------------------------------------------------------------------
# Every resource timing kept (the default buffer holds 250), and the moment each poll round ended.
_INIT = """
performance.setResourceTimingBufferSize(1000000);
// when plotly.js has run: its bundle ends with `window.Plotly = Plotly`
(() => {
  let plotly;
  Object.defineProperty(window, 'Plotly', {configurable: true, get: () => plotly,
    set: (v) => { if (window.__plotlyAt === undefined) window.__plotlyAt = performance.now(); plotly = v; }});
})();
window.__rounds = [];
new MutationObserver(() => {
  const n = Number(document.body && document.body.dataset.polls || 0);
  if (n > window.__rounds.length) window.__rounds.push(performance.now());
}).observe(document, {attributes: true, subtree: true, attributeFilter: ['data-polls']});
"""

_READ = """() => {
  const mark = performance.getEntriesByName('trainyard-ready')[0];
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  const api = performance.getEntriesByType('resource').filter(e => e.name.includes('/api/v1/'))
    .map(e => ({url: e.name, start: e.startTime, end: e.responseEnd}));
  const nav = performance.getEntriesByType('navigation')[0];
  return {ready: mark ? mark.startTime : null, fcp: fcp ? fcp.startTime : null, api, rounds: window.__rounds,
          dcl: nav ? nav.domContentLoadedEventEnd : null, plotly: window.__plotlyAt ?? null};
}"""


#: a run page's reads in every round: the run, and what is new after its cursors
CURSOR_READS = ("/runs/{id}", "/runs/{id}/series", "/runs/{id}/events", "/runs/{id}/logs")


def endpoint(url: str) -> str:
    path = url.split("/api/v1", 1)[1].split("?", 1)[0]
    parts = path.strip("/").split("/")
    return "/runs/{id}" + ("/" + parts[2] if len(parts) > 2 else "") if parts[0] == "runs" and len(parts) > 1 else path


def measure(url: str, loads: int, rounds: int, refresh_ms: int) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (scripts/install-chromium.sh)")
    profile = tempfile.mkdtemp(prefix="bench-ui-profile-")
    with sync_playwright() as p:
        # a browser profile on disk, as a user's browser has: from the third load of plotly.js on,
        # V8 compiles it from its code cache (a fresh incognito-like context never does)
        context = p.chromium.launch_persistent_context(
            profile, executable_path=chromium, viewport={"width": 1400, "height": 900}
        )
        context.add_init_script(_INIT)
        paints = []
        for i in range(loads):
            page = context.new_page()
            page.goto(f"{url}?refresh_ms={refresh_ms}")
            page.wait_for_selector('body[data-ready="1"]', state="attached", timeout=60_000)
            got = page.evaluate(_READ)
            first_round = [a for a in got["api"] if got["rounds"] and a["start"] <= got["rounds"][0]]
            start = min((a["start"] for a in first_round), default=None)
            end = max((a["end"] for a in first_round), default=None)
            paints.append(
                {
                    "load": i + 1,
                    "ready_ms": got["ready"],
                    "fcp_ms": got["fcp"],
                    # the page's modules have run at DOMContentLoaded (plotly.js, which they start
                    # once their first requests are out, runs after: plotly_ms)
                    "scripts_ms": got["dcl"],
                    "plotly_ms": got["plotly"],
                    "first_round_api_ms": end - start if first_round else None,
                    # from the first round's last answer to the ready mark: drawing
                    "render_ms": got["ready"] - end if first_round else None,
                }
            )
            if i < loads - 1:
                page.close()
        # the refresh rounds, on the last page (left open)
        page.wait_for_function(
            "n => window.__rounds.length >= n", arg=rounds + 1, timeout=(rounds + 5) * (refresh_ms + 5000)
        )
        got = page.evaluate(_READ)
        context.close()
    shutil.rmtree(profile, ignore_errors=True)
    ends = got["rounds"][: rounds + 1]
    per_round, by_endpoint = [], {}
    for k in range(1, len(ends)):
        reqs = [a for a in got["api"] if ends[k - 1] < a["start"] <= ends[k]]
        if not reqs:
            continue
        for a in reqs:
            by_endpoint.setdefault(endpoint(a["url"]), []).append(a["end"] - a["start"])
        per_round.append(
            {
                "requests": len(reqs),
                # what the round read besides the run and its cursors (series, events, log)
                "whole": sorted({endpoint(a["url"]) for a in reqs} - set(CURSOR_READS)),
                "api_ms": max(a["end"] for a in reqs) - min(a["start"] for a in reqs),
                "slowest_ms": max(a["end"] - a["start"] for a in reqs),
            }
        )
    return {
        "paints": paints,
        "rounds": per_round,
        "endpoints": {k: (statistics.median(v), max(v)) for k, v in by_endpoint.items()},
    }


def refresh_costs(api: str, run_id: str, n: int = 5) -> dict[str, float]:
    """Median wall ms of each request of a refresh round on its own (one after the other, with
    the cursors a page holds after its first round): what each costs the server."""
    run = f"{api}/runs/{run_id}"
    with httpx.Client(timeout=60) as client:
        series = client.get(f"{run}/series", params={"max_points": 2000}).json()["next_after_id"]
        events = client.get(f"{run}/events", params={"order": "desc", "limit": 1}).json()["events"][0]["id"]
        logs = client.get(f"{run}/logs", params={"tail": 1000}).json()["next_after_id"]
        urls = {
            "/runs/{id}": run,
            "/runs/{id}/series": f"{run}/series?after_id={series}&max_points=2000",
            "/runs/{id}/events": f"{run}/events?after_id={events}&limit=200",
            "/runs/{id}/logs": f"{run}/logs?after_id={logs}&limit=1000",
            "/runs/{id}/checkpoints": f"{run}/checkpoints",
            "/runs/{id}/timeline": f"{run}/timeline",
            "/runs/{id}/evaluations": f"{run}/evaluations",
        }
        costs = {}
        for name, url in urls.items():
            times = []
            for _ in range(n):
                t = time.perf_counter()
                client.get(url).raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
            costs[name] = round(statistics.median(times), 1)
    return costs


def api_times(url: str, n: int = 5) -> list[float]:
    """Wall ms of `n` GETs of `url` one after the other (the whole series of the run: what the
    first paint waits for), from this process over loopback."""
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            t = time.perf_counter()
            client.get(url).raise_for_status()
            times.append(round((time.perf_counter() - t) * 1000, 1))
    return times


# -- one database ---------------------------------------------------------------------------------
def bench(kind: str, args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-ui-{kind}-"))
    pg_name, admin = None, None
    try:
        if kind == "sqlite":
            db_url = f"sqlite:///{workdir / 'trainyard.db'}"
        else:
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
            pg_name = f"trainyard_bench_ui_{uuid.uuid4().hex[:8]}"
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
            db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + pg_name
        service = Service(workdir, db_url)
        service.upgrade()
        t = time.perf_counter()
        run_id, step = seed(db_url, args.points, args.events)
        seed_s = time.perf_counter() - t
        with service:
            series = api_times(f"{service.url}/api/v1/runs/{run_id}/series?after_id=0&max_points=2000")
            alone = refresh_costs(f"{service.url}/api/v1", run_id)
            with Writer(db_url, run_id, step):
                result = measure(f"{service.url}/runs/{run_id}", args.loads, args.rounds, args.refresh_ms)
        return {
            "db": kind,
            "points": args.points,
            "events": args.events,
            "seed_s": round(seed_s, 1),
            "full_series_ms": series,
            "alone_ms": alone,
            **result,
        }
    finally:
        if admin is not None and pg_name is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
            admin.dispose()
        shutil.rmtree(workdir, ignore_errors=True)


def show(r: dict) -> None:
    print(f"\n{r['db']}: {r['points']:,} metric points, {r['events']} events (seeded in {r['seed_s']} s)")
    full = r["full_series_ms"]
    print(
        f"  GET /runs/{{id}}/series, the whole run (max_points 2000), {len(full)} calls in a row: "
        f"median {statistics.median(full):.0f} ms ({', '.join(f'{t:.0f}' for t in full)})"
    )
    columns = (  # (key, heading)
        ("ready_ms", "ready (first paint)"),
        ("fcp_ms", "contentful paint"),
        ("scripts_ms", "scripts done"),
        ("plotly_ms", "plotly.js ran"),
        ("first_round_api_ms", "first API round"),
        ("render_ms", "drawing"),
    )
    print(f"  {'load':<6} " + " ".join(f"{head:>{len(head) + 1}}" for _, head in columns))
    for p in r["paints"]:
        cells = [f"{p[key]:.0f} ms" if p.get(key) is not None else "-" for key, _ in columns]
        print(f"  {p['load']:<6} " + " ".join(f"{c:>{len(h) + 1}}" for c, (_, h) in zip(cells, columns, strict=True)))
    rounds = r["rounds"]
    print(f"  refresh rounds: {len(rounds)}")
    print(f"  {'round':>5} {'requests':>9} {'API time':>10} {'slowest':>9}  also read whole")
    for i, x in enumerate(rounds, start=1):
        whole = ", ".join(w.rsplit("/", 1)[-1] for w in x.get("whole", []))
        print(f"  {i:>5} {x['requests']:>9} {x['api_ms']:>7.0f} ms {x['slowest_ms']:>6.0f} ms  {whole}")
    if rounds:
        api = [x["api_ms"] for x in rounds]
        print(f"  API time per round: median {statistics.median(api):.0f} ms, max {max(api):.0f} ms")
    print(f"  {'endpoint':<24} {'in the rounds: median':>22} {'max':>8} {'alone, one at a time':>21}")
    for name, (med, top) in sorted(r["endpoints"].items()):
        alone = r["alone_ms"].get(name)
        shown = f"{alone:.0f} ms" if alone is not None else "-"
        print(f"  {name:<24} {med:>19.0f} ms {top:>5.0f} ms {shown:>21}")
    print(f"  sum of the requests alone: {sum(r['alone_ms'].values()):.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--loads", type=int, default=5, help="page loads in one browser profile: the first is cold")
    ap.add_argument("--rounds", type=int, default=10, help="refresh rounds measured after the first")
    ap.add_argument("--refresh-ms", type=int, default=1000, help="the page's poll interval")
    ap.add_argument("--json", action="store_true", help="also print one JSON line per database")
    args = ap.parse_args()
    for kind in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
        result = bench(kind, args)
        show(result)
        if args.json:
            print(json.dumps(result))


if __name__ == "__main__":
    main()
