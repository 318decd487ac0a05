"""No secret leaks: a LEAKCANARY value in every secret the service holds, then real work, then a
search of everywhere a secret could end up.

One real `trainyard serve` on PostgreSQL runs a local run (with IFT, its checkpoints and its
fine-tuned weights in S3) and a run on the Lambda simulator (1 node, real sshd, its checkpoints in
an S3 store: moto's server, the node holding run-scoped credentials), then has the judge (the
fake OpenAI server) score the local run's answers. The canaries, each in use:
- the Lambda API key (the simulator takes no other, so the Lambda run proves it was sent);
- the OpenAI key (the fake judge checks that every call carried it);
- the service's AWS secret key and session token (boto3 signs the store's requests and the
  grants' IAM and STS calls with them);
- HF_TOKEN, and the PostgreSQL password in the database URL (trust auth ignores it).
Then no canary may be in: any GET of the service's API (every path of its OpenAPI, for each run,
checkpoint and comparison, checkpoint files included) or its dashboard pages; its log; any row of
any table; any file under its data dir; any file of the simulated node (its disk: home and work
dirs) or of the S3 store; the command line of any process; the environment of any run's process
(local trainers, node sessions), sampled while the runs go.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import MetaData, create_engine, select

from ift_helpers import write_instruction_data
from orchestrator_helpers import TERMINAL, lambda_spec, start_lambda_service, tiny_spec
from provision.simulator import SimulatorServer
from s3server import admin_client, moto_server
from simhelpers import free_ssh_port, require_sshd, sim_config

#: this test's own mark: another test's canaries (a concurrent run of another suite) never match it
MARK = f"LEAKCANARY-{secrets.token_hex(4)}"
CANARIES = {
    name: f"{MARK}-{name}-{secrets.token_hex(8)}" for name in ("lambda", "openai", "aws", "awstoken", "hf", "pg")
}
BUCKET = "ty-secrets"


# -- where a canary could be ----------------------------------------------------------------------
def leaks(where: str, data: bytes | str) -> list[str]:
    raw = data.encode(errors="surrogateescape") if isinstance(data, str) else data
    if MARK.encode() not in raw:
        return []
    found = [name for name, value in CANARIES.items() if value.encode() in raw]
    return [f"{where}: {', '.join(found) or 'a fragment of a canary'}"]


def files_under(root: Path) -> Iterator[Path]:
    for folder, _dirs, names in os.walk(root):  # symlinks are not followed
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


def file_leaks(root: Path) -> list[str]:
    return [hit for path in files_under(root) for hit in leaks(str(path), path.read_bytes())]


class ProcessWatch:
    """Samples every process but the service: its command line (what `ps` shows anyone), and the
    environment of each process of a run (cwd in a run directory, or a simulated node's session)."""

    def __init__(self, service_pid: int, run_roots: list[Path]):
        self.service_pid = service_pid
        self.run_roots = [str(r) for r in run_roots]
        self.found: list[str] = []
        self.run_processes: set[int] = set()

    def sample(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in (self.service_pid, os.getpid()):
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes()
                cwd = os.readlink(entry / "cwd")
            except OSError:  # gone meanwhile
                continue
            self.found += leaks(f"command line of pid {entry.name}", cmdline)
            if b"TY_INSTANCE=" in environ or any(cwd.startswith(r) for r in self.run_roots):
                self.run_processes.add(int(entry.name))
                self.found += leaks(f"environment of run process {entry.name} ({cwd})", environ)


def api_sweep(svc, run_ids: list[str], comparison_id: str) -> list[tuple[str, bytes]]:
    """Every GET of the service's API with each id it takes, and the dashboard's pages."""
    openapi = svc.client.get(svc.url + "/openapi.json")
    got = [("/openapi.json", openapi.content)]
    ok: list[str] = []
    steps = {r: [c["step"] for c in svc.checkpoints(r)] for r in run_ids}
    paths = [
        p
        for t, ops in openapi.json()["paths"].items()
        if "get" in ops
        for p in _fill(svc, t, run_ids, steps, comparison_id)
    ]
    pages = ["/", "/comparisons", "/plan", f"/comparisons/{comparison_id}", *[f"/runs/{r}" for r in run_ids]]
    for path in paths + pages:
        resp = svc.client.get(svc.url + path)
        got.append((path, resp.content))
        if resp.status_code == 200:
            ok.append(path)
    # the sweep saw the real thing: every run, its checkpoints' files, the comparison's report
    for must in (*[f"/api/v1/runs/{r}/logs" for r in run_ids], f"/api/v1/comparisons/{comparison_id}/report"):
        assert must in ok, must
    assert sum("/files/" in p for p in ok) >= 2, "no checkpoint file was downloaded"
    return got


def _fill(svc, template: str, run_ids: list[str], steps: dict, comparison_id: str) -> list[str]:
    """`template` with each id it takes: runs, their checkpoints' steps and files, the comparison."""
    paths = [template.replace("{comparison_id}", comparison_id)]
    if "{run_id}" in template:
        paths = [template.replace("{run_id}", r) for r in run_ids]
    if "{step}" in template:
        paths = [p.replace("{step}", str(step)) for p, r in zip(paths, run_ids, strict=True) for step in steps[r]]
    if "{name}" in template:
        with_files = []
        for path in paths:
            detail = svc.client.get(svc.url + path.split("/files/")[0]).json()
            with_files += [path.replace("{name}", f["name"]) for f in detail["files"]]
        paths = with_files
    return paths


def database_leaks(url: str) -> list[str]:
    engine = create_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    found, rows = [], 0
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                rows += 1
                found += leaks(f"table {table.name}", repr(tuple(row)))
    engine.dispose()
    assert rows > 50, "the database should hold the runs' rows"
    return found


# -- the world ------------------------------------------------------------------------------------
@pytest.fixture
def world(tmp_path, pg_server_url, fake):
    sshd, ssh_port = require_sshd(), free_ssh_port()
    assert ssh_port is not None
    config = sim_config(tmp_path / "sim", sshd, ssh_port, api_key=SecretStr(CANARIES["lambda"]), boot_s=0.3)
    db_url = pg_server_url().replace("postgres@", f"postgres:{CANARIES['pg']}@", 1)
    with moto_server() as s3_url, SimulatorServer(config) as sim:
        admin_client(s3_url).create_bucket(Bucket=BUCKET)
        svc = start_lambda_service(
            sim,
            tmp_path / "service",
            db_url,
            TRAINYARD_OPENAI_API_KEY=CANARIES["openai"],
            TRAINYARD_JUDGE_BASE_URL=fake.base_url,
            TRAINYARD_JUDGE_MAX_RETRIES="0",
            TRAINYARD_ARTIFACT_ENDPOINT_URL=s3_url,
            AWS_ACCESS_KEY_ID="trainyard-service",
            AWS_SECRET_ACCESS_KEY=CANARIES["aws"],
            AWS_SESSION_TOKEN=CANARIES["awstoken"],
            AWS_DEFAULT_REGION="us-east-1",
            HF_TOKEN=CANARIES["hf"],
        )
        try:
            yield svc, sim, s3_url, db_url
        finally:
            svc.close()


def local_ift_run(data: Path) -> dict:
    spec = tiny_spec("secrets-local", train_tokens=2048)
    spec["data"]["max_tokens"] = 30000
    spec["evaluation"]["ift"] = {
        "enabled": True,
        "data": str(data),
        "epochs_max": 1,
        "limit_test": 2,
        "max_new_tokens": 4,
    }
    spec["artifact_uri"] = f"s3://{BUCKET}/trainyard"  # the IFT weights are uploaded with the run's credentials
    return spec


def lambda_s3_run() -> dict:
    spec = lambda_spec("secrets-lambda", nodes=1, train_tokens=2048, test_loss=False)
    spec["artifact_uri"] = f"s3://{BUCKET}/trainyard"
    return spec


def test_no_secret_reaches_a_response_log_row_file_node_or_process(world, fake, tmp_path):
    svc, sim, s3_url, db_url = world
    data = write_instruction_data(tmp_path / "service" / "ift.json", 12)
    local_run, lambda_run = svc.submit(local_ift_run(data)), svc.submit(lambda_s3_run())
    runs = [local_run, lambda_run]
    # every canary is in the service's environment, and the search finds each there
    assert leaks("", Path(f"/proc/{svc.proc.pid}/environ").read_bytes()) == [f": {', '.join(CANARIES)}"]
    watch = ProcessWatch(svc.proc.pid, [svc.runs_dir, sim.cloud.state_dir])
    deadline = time.monotonic() + 240
    while not all(svc.run(r)["status"] in TERMINAL for r in runs):
        assert time.monotonic() < deadline, svc.log_tail()
        watch.sample()
        time.sleep(0.3)
    for run_id in runs:
        run = svc.run(run_id)
        assert run["status"] == "succeeded", f"{run['status_reason']}\n{svc.log_tail()}"
    assert all(c["uri"].startswith("s3://") for c in svc.checkpoints(lambda_run))  # the S3 store was used
    ift = [c for c in svc.checkpoints(local_run) if c.get("kind") == "ift"]
    assert ift and all(c["uri"].startswith("s3://") and c["state"] == "stored" for c in ift), ift
    assert len(watch.run_processes) >= 2, "no run process was sampled: the environment check saw nothing"

    fake.reply = lambda _body: "70"  # pointwise: one integer score per answer
    made = svc.client.post("/comparisons", json={"runs": [local_run], "mode": "pointwise", "k": 1})
    assert made.status_code == 201, made.text
    comparison_id = made.json()["id"]
    deadline = time.monotonic() + 60
    while (status := svc.client.get(f"/comparisons/{comparison_id}").json()["status"]) not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, svc.log_tail()
        time.sleep(0.3)
    assert status == "succeeded", svc.log_tail()
    assert fake.calls >= 1 and {r.headers.get("authorization") for r in fake.requests} == {
        f"Bearer {CANARIES['openai']}"
    }

    found = list(watch.found)
    for path, body in api_sweep(svc, runs, comparison_id):
        found += leaks(f"GET {path}", body)
    svc.stop()  # its log is complete
    found += leaks("the service's log", svc.log_tail(100_000))
    found += database_leaks(db_url)
    found += file_leaks(svc.data_dir)
    found += file_leaks(sim.cloud.state_dir)  # every node's disk (home, work dirs), keys and logs
    s3 = admin_client(s3_url)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys, "the store should hold the Lambda run's checkpoints"
    for key in keys:
        found += leaks(f"s3://{BUCKET}/{key}", s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert not found, "\n".join(found)
