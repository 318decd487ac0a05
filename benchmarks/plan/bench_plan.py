"""Benchmark: how long a plan takes for 20 instance types and 1,000 throughput records.

    .venv/bin/python benchmarks/plan/bench_plan.py                 # SQLite and PostgreSQL
    .venv/bin/python benchmarks/plan/bench_plan.py --db sqlite --repeat 200

In process, four ways, each repeated (`--repeat`) after a warm-up, reporting the median and p95:

- `estimate`: orchestrator.planning.plan.make_plan alone, the records already in memory;
- `load+estimate`: one query for the shape's records (orchestrator.planning.lookup) and the
  estimate, on a database holding the 1,000 records (plus 1,000 of another shape, which the
  query must skip);
- `provider round trip`: the `lambda` provider's instance_types() against the simulator;
- `POST /plans`: the whole route through the ASGI app (FastAPI's TestClient: no sockets of
  its own), asking the Lambda simulator (in process, on loopback) for its 20 types.

PostgreSQL is the server at 127.0.0.1:5432 (TRAINYARD_TEST_PG_URL); the benchmark makes a
throwaway database there and drops it. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, when not pip-installed

from pydantic import SecretStr
from sqlalchemy import create_engine, text

from orchestrator.db.migrations import upgrade
from orchestrator.db.models import ThroughputRecord, utcnow
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.planning.lookup import records_of_shape
from orchestrator.planning.plan import make_plan
from orchestrator.planning.shape import shape_of
from orchestrator.settings import Settings
from orchestrator.spec import parse_spec_yaml
from provision.base import InstanceType

PG_ADMIN_URL = os.environ.get("TRAINYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SPEC = """
name: bench
model: {preset: gpt2-small}
training: {seq_len: 1024, micro_batch: auto, max_tokens: chinchilla}
compute: {provider: lambda, instance_type: auto, procs_per_node: 8}
budget: {max_usd: 100}
"""
GPUS = ("H100 (80 GB SXM5)", "A100 (40 GB SXM4)", "A100 (80 GB SXM4)", "B200 (180 GB SXM6)", "H200 (141 GB)")


def instance_types(n: int = 20) -> list[InstanceType]:
    return [
        InstanceType(f"gpu_8x_bench_{i:02d}", "8x bench", 8, GPUS[i % len(GPUS)], 1000 + 100 * i,
                     ("us-east-1",) if i % 3 else ())
        for i in range(n)
    ]  # fmt: skip


def records(shape_key: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    now = utcnow()
    return [
        dict(
            source="run",
            provider="lambda",
            instance_type=f"gpu_8x_bench_{rng.randrange(20):02d}",
            gpu="H100 SXM",
            nodes=rng.choice((1, 1, 2)),
            gpus_per_node=8,
            shape_key=shape_key,
            preset="gpt2-small",
            overrides={},
            seq_len=1024,
            precision="auto",
            micro_batch=27,
            params=163_009_536,
            flops_per_token=8.55e8,
            tokens_per_s=rng.uniform(5e5, 2e6),
            mfu=rng.uniform(0.1, 0.4),
            launch_to_first_step_s=rng.uniform(300, 900),
            eval_s=rng.uniform(60, 300),
            tokens_trained=10**9,
            created_at=now - timedelta(minutes=i),
        )  # fmt: skip
        for i in range(n)
    ]


def timed(fn: Callable[[], object], repeat: int, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - start) * 1000)
    ms.sort()
    return {
        "repeat": repeat,
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(ms[max(0, int(len(ms) * 0.95) - 1)], 3),
        "max_ms": round(ms[-1], 3),
    }


def seed_database(url: str, key: str) -> None:
    upgrade(url)
    factory = make_sessionmaker(make_engine(url))
    with transaction(factory) as s:
        s.add_all(ThroughputRecord(**r) for r in records(key, 1000) + records("another-shape", 1000, seed=1))
    factory.kw["bind"].dispose()


def bench_database(kind: str, url: str, spec, key: str, types: list[InstanceType], repeat: int, sim) -> list[dict]:
    from fastapi.testclient import TestClient

    from orchestrator.api.app import create_app

    seed_database(url, key)
    factory = make_sessionmaker(make_engine(url))

    def load_and_estimate() -> None:
        with factory() as s:
            found = records_of_shape(s, key)
        assert len(found) == 1000
        make_plan(spec, "lambda", types, found)

    out = [{"db": kind, "what": "load+estimate", **timed(load_and_estimate, repeat)}]
    factory.kw["bind"].dispose()
    with tempfile.TemporaryDirectory() as tmp:
        keyfile = Path(tmp) / "id_ed25519"
        keyfile.write_text("unused\n")
        settings = Settings(
            data_dir=Path(tmp),
            database_url=url,
            lambda_api_url=sim.url,
            lambda_api_key=sim.cloud.config.api_key.get_secret_value(),
            lambda_ssh_key_name="bench",
            ssh_private_key_file=keyfile,
        )
        if kind == "sqlite":  # the provider's share of the route, once: it does not touch the database
            from provision.registry import get_provider

            provider = get_provider("lambda", settings)
            out.append({"db": None, "what": "provider round trip", **timed(provider.instance_types, repeat)})
            provider.close()
        with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:  # a trusted Host

            def post() -> None:
                r = client.post("/api/v1/plans", json={"spec": SPEC})
                assert r.status_code == 200 and r.json()["records"] == 1000, r.text

            out.append({"db": kind, "what": "POST /plans", **timed(post, repeat)})
    return out


def simulator(types: list[InstanceType], state_dir: Path):
    """The Lambda simulator in process, its catalog the benchmark's 20 types."""
    from provision.simulator import SimConfig, SimulatorServer
    from provision.simulator.catalog import Catalog

    catalog = Catalog.model_validate(
        {
            "regions": {"us-east-1": "Virginia, USA"},
            "instance_types": {
                t.name: {
                    "description": t.description,
                    "gpu_description": t.gpu_description,
                    "price_cents_per_hour": t.price_cents_per_hour,
                    "specs": {"vcpus": 8, "memory_gib": 64, "storage_gib": 512, "gpus": t.gpus},
                    "capacity": {r: 1 for r in t.regions_with_capacity},
                }
                for t in types
            },
        }
    )
    config = SimConfig(state_dir=state_dir, catalog=catalog, api_key=SecretStr("bench-key"), requests_per_s=0)
    return SimulatorServer(config).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--repeat", type=int, default=100)
    args = ap.parse_args()
    spec = parse_spec_yaml(SPEC)
    key = shape_of(spec).key
    types = instance_types()
    from orchestrator.planning.rows import Observation

    in_memory = [
        Observation(**{f: r[f] for f in Observation.__dataclass_fields__})  # the columns the query reads
        for r in records(key, 1000)
    ]
    print(
        json.dumps(
            {"db": None, "what": "estimate", **timed(lambda: make_plan(spec, "lambda", types, in_memory), args.repeat)}
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulator(types, Path(tmp) / "sim")
        try:
            if args.db in ("sqlite", "both"):
                for line in bench_database("sqlite", f"sqlite:///{tmp}/bench.db", spec, key, types, args.repeat, sim):
                    print(json.dumps(line))
            if args.db in ("postgresql", "both"):
                admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
                name = f"trainyard_bench_plan_{uuid.uuid4().hex[:8]}"
                with admin.connect() as c:
                    c.execute(text(f'CREATE DATABASE "{name}"'))
                try:
                    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
                    for line in bench_database("postgresql", url, spec, key, types, args.repeat, sim):
                        print(json.dumps(line))
                finally:
                    with admin.connect() as c:
                        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    admin.dispose()
        finally:
            sim.stop()


if __name__ == "__main__":
    main()
