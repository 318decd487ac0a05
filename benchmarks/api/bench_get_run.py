"""Benchmark: `GET /api/v1/runs/{id}` throughput and latency, and an idle `serve`'s memory.

    .venv/bin/python benchmarks/api/bench_get_run.py                      # SQLite and PostgreSQL
    .venv/bin/python benchmarks/api/bench_get_run.py --db sqlite --duration 30

Seeds 10,000 runs and 1,000,000 metric points, starts `trainyard serve --no-controller` (one
process, as users run it) on a loopback port, and drives it with 50 concurrent keep-alive
connections from a small raw-asyncio HTTP/1.1 client (a full HTTP client library would spend
more of the 2 cores than the server it measures). Prints one JSON line per database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, when not pip-installed
sys.path.insert(0, str(Path(__file__).resolve().parent))  # seed.py
from seed import run_ids, seed_postgres, seed_sqlite

HERE = Path(__file__).resolve().parent

PG_ADMIN_URL = os.environ.get("TRAINYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def torch_mapped(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def prepare_database(kind: str, workdir: Path, n_runs: int, n_points: int) -> str:
    from orchestrator.db.migrations import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
        upgrade(url)
        seed_sqlite(str(workdir / "bench.db"), n_runs, n_points)
        return url
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text('DROP DATABASE IF EXISTS "trainyard_bench" WITH (FORCE)'))
        conn.execute(text('CREATE DATABASE "trainyard_bench"'))
    admin.dispose()
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/trainyard_bench"
    upgrade(url)
    seed_postgres(url, n_runs, n_points)
    return url


def start_serve(db_url: str, port: int, workdir: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "TRAINYARD_DATABASE_URL": db_url,
        "TRAINYARD_DATA_DIR": str(workdir),
        "PYTHONPATH": str(HERE.parents[1]),
    }
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "serve",
        "--no-controller",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    # the log goes to a file: a pipe nobody reads would fill up and block the server
    log = open(workdir / "serve.log", "w")  # noqa: SIM115 - closed with the temporary directory
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited: {(workdir / 'serve.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("serve did not start")


async def _client(port: int, ids: list[str], until: float, record_from: float, lat: list[float], errors: list[int]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rnd = random.Random()
    try:
        while (now := time.perf_counter()) < until:
            rid = rnd.choice(ids)
            writer.write(f"GET /api/v1/runs/{rid} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            done = time.perf_counter()
            if now >= record_from:
                lat.append(done - now)
                if status != 200:
                    errors.append(status)
    finally:
        writer.close()


async def load(port: int, ids: list[str], clients: int, warmup_s: float, duration_s: float) -> dict:
    lat: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    record_from, until = start + warmup_s, start + warmup_s + duration_s
    await asyncio.gather(*(_client(port, ids, until, record_from, lat, errors) for _ in range(clients)))
    lat.sort()

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2)

    return {
        "requests": len(lat),
        "errors": len(errors),
        "req_per_s": round(len(lat) / duration_s, 1),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1] * 1000, 2),
    }


def bench(kind: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-") as tmp:
        workdir = Path(tmp)
        t = time.perf_counter()
        db_url = prepare_database(kind, workdir, args.runs, args.points)
        seed_s = time.perf_counter() - t
        port = free_port()
        proc = start_serve(db_url, port, workdir)
        try:
            time.sleep(2)
            idle_rss = rss_mb(proc.pid)
            # the machine may be shared: say how busy it was, since every number depends on it
            load_before = os.getloadavg()[0]
            cpu0 = cpu_s(proc.pid)
            result = asyncio.run(load(port, run_ids(args.runs), args.clients, args.warmup, args.duration))
            # server CPU per request: what the numbers would be on an otherwise idle machine
            result["server_cpu_ms_per_req"] = round((cpu_s(proc.pid) - cpu0) * 1000 / max(1, result["requests"]), 3)
            return {
                "db": kind,
                "load_avg_1m_before": round(load_before, 2),
                "runs": args.runs,
                "metric_points": args.points,
                "clients": args.clients,
                "duration_s": args.duration,
                **result,
                "seed_s": round(seed_s, 1),
                "idle_rss_mb": round(idle_rss, 1),
                "rss_after_load_mb": round(rss_mb(proc.pid), 1),
                "torch_loaded": torch_mapped(proc.pid),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            errors = [ln for ln in (workdir / "serve.log").read_text().splitlines() if "ERROR" in ln]
            if errors:
                print(f"serve logged {len(errors)} errors, first: {errors[0]}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=20.0)
    args = ap.parse_args()
    for kind in ["sqlite", "postgresql"] if args.db == "both" else [args.db]:
        print(json.dumps(bench(kind, args)), flush=True)


if __name__ == "__main__":
    main()
