"""Issue 12, "a CLI that fits a terminal", as a user meets it: the real `trainyard` CLI as a
subprocess against a real `trainyard serve` on a free loopback port.

- `trainyard runs` at 80 columns: no line wider, every id whole, a note of what was left out;
- `trainyard instance-types` as the README writes it (no --provider) works without Lambda;
- a spec with three mistakes shows all three, with their field paths, in one try (submit, plan,
  and the API's 422);
- `--watch` rides out a restart of the service (same port), saying so on stderr, and gives up
  after `--retry-for`;
- Ctrl-C (SIGINT) while watching says the run goes on and how to come back, exit 130;
- a run whose data preparation fails has prepare's log in `trainyard logs`;
- `serve` on an empty data dir migrates its SQLite database and answers; PostgreSQL not at the
  head still refuses (exit 6);
- 100% only when done, times in UTC with the zone, prices in US$ per hour.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from orchestrator.cli.client import error_lines
from orchestrator.cli.instances import instances_table
from orchestrator.cli.output import Col, fitted_table, hourly_price, percent, show_table, when
from orchestrator.cli.plan import plan_table
from orchestrator.db.models import utcnow
from orchestrator_helpers import (
    REPO,
    TRAINYARD,
    Service,
    api_service,
    cli_env,
    free_port,
    one_error_line,
    tiny_spec,
    trainyard,
)

UTC_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
THREE_MISTAKES = (
    "name: three-mistakes\n"
    "training: {lr: -1}\n"  # impossible
    "budget: {max_usd: -5}\n"  # impossible
    "evaluaton: {test_loss: true}\n"  # a typo
)
THREE_FIELDS = (
    "training.lr: Input should be greater than 0",
    "budget.max_usd: Input should be greater than or equal to 0",
    "evaluaton: Extra inputs are not permitted",
)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = api_service(tmp_path_factory.mktemp("cli-terminal"))
    yield svc
    svc.close()


def with_columns(env: dict, columns: int) -> dict:
    return {**env, "COLUMNS": str(columns)}


def spec_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


class Watcher:
    """A long-running CLI command (a watch) with its output in files, read while it runs."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict):
        self.out, self.err = tmp_path / "watch.out", tmp_path / "watch.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [*TRAINYARD, *args], env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO
            )

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {text!r}:\n{self.stderr()}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout}s:\n{self.stderr()}"
            time.sleep(0.1)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        return code, self.out.read_text(), self.stderr()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- 1. `trainyard runs` fits the terminal ---------------------------------------------------------
def test_runs_fit_80_columns_keep_every_id_whole_and_say_what_they_left_out(service):
    ids = [
        service.submit({"name": name, "training": {"max_tokens": 50_000}})
        for name in ("gpt2-small-fineweb-chinchilla-long-name", "short", "tiny on cpu")
    ]
    service.set_run(ids[0], status="training", target_tokens=50_000, tokens_done=12_345, tokens_per_s=1234.5)
    service.set_run(ids[1], status="bootstrapping")

    narrow = trainyard("runs", env=with_columns(service.env, 80))
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, narrow.stdout
    for run_id in ids:  # whole, each on its own line
        assert any(line.startswith(run_id + " ") for line in lines), (run_id, narrow.stdout)
    header = lines[0].split()
    assert header[:3] == ["RUN", "NAME", "STATUS"] and "PROGRESS" in header and "COST" in header
    assert "TOKENS" not in header  # the least important went first
    assert "left out to fit 80 columns: TOKENS" in narrow.stderr
    assert "--format json" in narrow.stderr and max(len(x) for x in narrow.stderr.splitlines()) <= 80

    wide = trainyard("runs", env=with_columns(service.env, 250))
    assert wide.returncode == 0, wide.stderr
    assert wide.stdout.splitlines()[0].split() == [
        "RUN", "NAME", "STATUS", "PROGRESS", "TOKENS", "TRAIN", "VAL", "TEST", "TOK/S", "COST", "ETA", "CREATED",
    ]  # fmt: skip
    assert "gpt2-small-fineweb-chinchilla-long-name" in wide.stdout and "12,345" in wide.stdout
    assert "left out" not in wide.stderr


def test_a_table_narrower_than_its_ids_still_keeps_them_whole():
    cols = (Col("RUN", keep=True), Col("NAME", cut_to=6, rank=1), Col("COST", right=True, rank=2))
    fitted = fitted_table(cols, [("abcdefghijkl", "a-very-long-name", "$1.00")], width=24)
    assert fitted.dropped == ("COST",) and fitted.width <= 24
    fitted = fitted_table(cols, [("abcdefghijkl", "a-very-long-name", "$1.00")], width=5)
    assert fitted.dropped == ("NAME", "COST") and fitted.width == 12  # too wide, but the id is whole


# -- 2. `trainyard instance-types` as the README writes it -----------------------------------------
def test_instance_types_without_a_provider_shows_the_configured_one_or_local(service):
    done = trainyard("instance-types", env=service.env)  # this service has no Lambda key
    assert done.returncode == 0, done.stderr
    assert "local instance types" in done.stdout and "$0.00" in done.stdout
    assert "showing provider local" in done.stderr and "TRAINYARD_LAMBDA_API_KEY" in done.stderr
    assert "--provider" in done.stderr
    as_json = trainyard("instance-types", "--format", "json", env=service.env)
    assert json.loads(as_json.stdout)["provider"] == "local"
    # naming Lambda still says what it lacks (exit 2)
    named = trainyard("instance-types", "--provider", "lambda", env=service.env)
    assert named.returncode == 2 and "TRAINYARD_LAMBDA_API_KEY" in one_error_line(named)


# -- 3. every mistake of a spec at once -------------------------------------------------------------
def test_a_spec_with_three_mistakes_shows_all_three_in_one_submit(service, tmp_path):
    before = service.client.get("/runs").json()["total"]
    for command in ("submit", "plan"):
        done = trainyard(command, spec_file(tmp_path, THREE_MISTAKES), env=service.env)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert lines[0] == "error: 3 mistakes in the spec:", done.stderr
        assert sorted(line.strip() for line in lines[1:]) == sorted(THREE_FIELDS), done.stderr
    assert service.client.get("/runs").json()["total"] == before  # nothing submitted


def test_the_apis_422_names_every_mistake_and_the_cli_shows_each(service):
    # YAML text (POST /plans reads it with the spec's parser): one message holding all three
    planned = service.client.post("/plans", json={"spec": THREE_MISTAKES})
    assert planned.status_code == 422
    detail = planned.json()["detail"]
    assert detail["message"].startswith("3 mistakes in the spec: ") and detail["field"] == "training.lr"
    assert all(field in detail["message"] for field in THREE_FIELDS)
    # a JSON spec (POST /runs): FastAPI's list holds all three; the CLI's client lists each
    spec = {"name": "x", "training": {"lr": -1}, "budget": {"max_usd": -5}, "evaluaton": {}}
    refused = service.client.post("/runs", json=spec)
    assert refused.status_code == 422
    head, details = error_lines(refused)
    assert head == "3 mistakes:" and sorted(details) == sorted(THREE_FIELDS)


def test_one_mistake_stays_one_line(service, tmp_path):
    done = trainyard("submit", spec_file(tmp_path, "name: x\nbudget: {max_usd: -1}\n"), env=service.env)
    assert done.returncode == 2
    assert one_error_line(done) == "error: budget.max_usd: Input should be greater than or equal to 0"


def test_every_inconsistency_of_compute_is_named(tmp_path, service):
    text = "name: x\ncompute: {provider: local, nodes: 2, instance_type: auto, fallback_instance_types: [a]}\n"
    done = trainyard("submit", spec_file(tmp_path, text), env=service.env)
    assert done.returncode == 2 and "error: 2 mistakes in the spec:" in done.stderr
    assert "compute: the local provider runs exactly 1 node" in done.stderr
    assert "compute: instance_type auto chooses among every type" in done.stderr


# -- 4. a watch rides out a restart of the service ---------------------------------------------------
def test_watch_survives_the_service_being_stopped_and_started_again(tmp_path):
    svc = api_service(tmp_path / "svc")
    watcher = None
    try:
        run_id = svc.submit({"name": "restart", "training": {"max_tokens": 50_000}})
        svc.set_run(run_id, status="training", target_tokens=50_000, tokens_done=5_000)
        watcher = Watcher(tmp_path, ["status", run_id, "--watch"], svc.env)
        watcher.wait_for(f"{run_id} training")
        port = svc.port
        svc.stop()
        watcher.wait_for("service unreachable at")
        assert "retrying for up to 2m00s" in watcher.stderr()
        time.sleep(1.5)  # a few failed tries while it is down
        svc.start()  # the same port
        assert svc.port == port
        svc.set_run(run_id, status="succeeded", tokens_done=50_000, finished_at=utcnow())
        code, out, err = watcher.finish()
        assert code == 0, err
        assert "answers again" in err and f"{run_id} succeeded" in err
        assert run_id in out
    finally:
        if watcher is not None:
            watcher.kill()
        svc.close()


def test_watch_gives_up_after_retry_for_with_exit_5(tmp_path):
    env = cli_env(tmp_path, f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    done = trainyard("status", "abcdefabcdef", "--watch", "--retry-for", "2", env=env, timeout=60)
    assert done.returncode == 5, done.stderr
    assert "service unreachable at" in done.stderr
    assert "error: gave up after retrying for 2s (--retry-for)" in done.stderr.strip().splitlines()[-1]
    assert time.monotonic() - started < 30


# -- 5. Ctrl-C while watching -----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["status", "submit"])
def test_ctrl_c_while_watching_says_the_run_goes_on_and_how_to_come_back(service, tmp_path, command):
    if command == "status":
        run_id = service.submit({"name": "ctrl-c", "training": {"max_tokens": 50_000}})
        args = ["status", run_id, "--watch"]
    else:
        run_id = None
        args = ["submit", spec_file(tmp_path, "name: ctrl-c\ntraining: {max_tokens: 50000}\n"), "--watch"]
    watcher = Watcher(tmp_path, args, service.env)
    try:
        watcher.wait_for(" pending: tokens")  # the watch's first progress line
        if run_id is None:
            run_id = re.search(r"submitted run (\w+)", watcher.stderr()).group(1)
        watcher.proc.send_signal(signal.SIGINT)
        code, _out, err = watcher.finish(timeout=30)
    finally:
        watcher.kill()
    assert code == 130, err
    assert f"stopped watching; run {run_id} goes on in the service" in err
    for hint in (
        f"trainyard status {run_id} --watch",
        f"trainyard logs {run_id} --follow",
        f"trainyard cancel {run_id}",
    ):
        assert hint in err, err
    assert "Traceback" not in err and "error:" not in err
    assert service.run(run_id)["status"] == "pending"  # untouched


# -- 6. a failed data preparation leaves its log ----------------------------------------------------
def test_a_run_whose_data_preparation_fails_has_preparations_log(make_service, tmp_path):
    svc = make_service().start()
    missing = tmp_path / "no-such-corpus"
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(tiny_spec("prepare-fails", source=str(missing))))  # JSON is YAML
    done = trainyard("submit", str(path), "--watch", env=svc.env, timeout=120)
    assert done.returncode == 7, done.stderr
    run_id = re.search(r"submitted run (\w+)", done.stderr).group(1)
    assert "ended failed: data preparation failed" in done.stderr.strip().splitlines()[-1]
    logs = trainyard("logs", run_id, env=svc.env)
    assert logs.returncode == 0, logs.stderr
    assert f"source {missing} does not exist" in logs.stdout  # prepare's own words, from prepare.log
    events = [e["message"] for e in svc.events(run_id) if e["kind"] == "data"]
    assert len(events) == 1 and "prepare.log is in the run's log" in events[0]


# -- 7. `serve` on a fresh data dir ----------------------------------------------------------------
def test_serve_on_an_empty_data_dir_migrates_its_sqlite_database_and_answers(tmp_path):
    svc = Service(tmp_path / "fresh", command=("serve", "--no-controller"))
    try:
        svc.start()  # returns once /api/v1/health answers
        health = httpx.get(svc.url + "/api/v1/health", timeout=10).json()
        assert health["status"] == "ok" and health["database"] == "sqlite"
        assert "migrated the SQLite database" in svc.log_tail() and "from nothing (a new database)" in svc.log_tail()
        assert trainyard("runs", "--format", "json", env=svc.env).returncode == 0
        svc.stop()
        svc.start()  # at the head now: nothing to migrate
        assert svc.log_tail().count("migrated the SQLite database") == 1
    finally:
        svc.close()


def test_serve_on_postgresql_not_at_the_head_still_refuses(pg_server_url, tmp_path):
    env = {**cli_env(tmp_path), "TRAINYARD_DATABASE_URL": pg_server_url()}
    proc = trainyard("serve", "--no-controller", "--port", str(free_port()), env=env, timeout=30)
    assert proc.returncode == 6
    line = one_error_line(proc)
    assert "database schema is at nothing (empty database)" in line and "trainyard db upgrade" in line


# -- 8. 100% only when done ------------------------------------------------------------------------
def test_progress_is_rounded_down_and_100_only_when_done(service):
    assert [percent(f) for f in (None, 0.0, 0.29, 0.5, 0.994, 0.999, 1.0)] == [
        "-", "0%", "29%", "50%", "99%", "99%", "100%",
    ]  # fmt: skip
    almost, done = (service.submit({"name": n, "training": {"max_tokens": 50_000}}) for n in ("almost", "done"))
    service.set_run(almost, status="training", target_tokens=1_000, tokens_done=999)
    service.set_run(done, status="succeeded", target_tokens=1_000, tokens_done=1_000, finished_at=utcnow())
    shown = trainyard("status", almost, env=service.env)
    assert "999 / 1,000 (99%)" in shown.stdout, shown.stdout
    shown = trainyard("status", done, env=service.env)
    assert "1,000 / 1,000 (100%)" in shown.stdout, shown.stdout


# -- 9. times: one style, UTC, with the zone -------------------------------------------------------
def test_every_time_the_cli_prints_is_utc_with_the_zone(service):
    assert when("2026-11-30T14:03:05.123456Z") == "2026-11-30 14:03:05 UTC"
    assert when("2026-11-30T15:03:05+01:00") == "2026-11-30 14:03:05 UTC"
    assert when("2026-11-30T14:03:05.12Z") == "2026-11-30 14:03:05 UTC"  # any fraction
    assert when(datetime(2026, 11, 30, 14, 3, 5)) == "2026-11-30 14:03:05 UTC"  # naive: UTC
    assert when(datetime(2026, 11, 30, 14, 3, 5, tzinfo=timezone.utc)) == "2026-11-30 14:03:05 UTC"
    assert when(None) == "-"

    run_id = service.submit({"name": "times", "training": {"max_tokens": 50_000}})
    service.set_run(run_id, status="succeeded", started_at=utcnow(), finished_at=utcnow())
    api = service.run(run_id)
    shown = trainyard("status", run_id, env=service.env)
    rows = dict(line.split(None, 1) for line in shown.stdout.splitlines() if len(line.split(None, 1)) == 2)
    for key, field in (("created", "created_at"), ("started", "started_at"), ("finished", "finished_at")):
        assert rows[key].strip() == when(api[field]), shown.stdout
        assert UTC_TIME.fullmatch(rows[key].strip())
    listed = trainyard("runs", env=with_columns(service.env, 250))
    line = next(x for x in listed.stdout.splitlines() if x.startswith(run_id))
    assert line.rstrip().endswith(when(api["created_at"]))


# -- 10. prices in US$ per hour --------------------------------------------------------------------
def test_prices_are_us_dollars_per_hour_in_every_table(capsys):
    assert hourly_price({"price_cents_per_hour": 2392}) == "$23.92"
    assert hourly_price({"price_usd_per_hour": 23.92, "price_cents_per_hour": 2392}) == "$23.92"
    assert hourly_price({"price_cents_per_hour": 0}) == "$0.00"
    page = {
        "providers": [{"name": "lambda", "instances": 1, "error": None}],
        "instances": [
            {
                "provider": "lambda",
                "id": "i-1",
                "name": "ty-abcdefabcdef-0",
                "instance_type": "gpu_8x_h100_sxm5",
                "region": "us-east-1",
                "status": "active",
                "owner": "abcdefabcdef",
                "age_s": 600.0,
                "price_cents_per_hour": 2392,
                "cost_cents": 398.7,
            }
        ],
    }
    show_table(instances_table(page, width=None))
    row = [line for line in capsys.readouterr().out.splitlines() if "ty-abcdefabcdef-0" in line][0]
    assert row.split()[-2:] == ["$23.92", "$3.99"] and "2392" not in row
    plan = {
        "provider": "lambda",
        "spec_name": "p",
        "shape": "gpt2-small",
        "train_tokens": 1000,
        "params": 10,
        "rows": [
            {
                "instance_type": "gpu_8x_h100_sxm5",
                "gpu": "H100 SXM",
                "gpu_description": "H100",
                "gpus": 8,
                "procs_per_node": 8,
                "nodes": 1,
                "price_cents_per_hour": 2392,
                "regions_with_capacity": ["us-east-1"],
                "micro_batch": 16,
                "tokens_per_s": 1000.0,
                "mfu": 0.4,
                "setup_s": 60,
                "training_s": 3600,
                "eval_s": 60,
                "total_s": 3720,
                "band": {"hours_low": 0.6, "hours_high": 1.4, "usd_low": 14.8, "usd_high": 34.6, "relative": 0.4},
                "usd": 24.72,
                "usd_per_billion_tokens": 12.0,
                "source": "prior",
                "fits": True,
                "cheapest": True,
                "fastest": True,
                "frontier": True,
                "within_budget": True,
            }
        ],
    }
    show_table(plan_table(plan, width=80))
    shown = capsys.readouterr()
    lines = shown.out.splitlines()
    header = next(line for line in lines if line.startswith("TYPE")).split()
    row = next(line for line in lines if line.startswith("gpu_8x_h100_sxm5")).split()
    assert row[header.index("PRICE/H")] == "$23.92" and row[header.index("US$")] == "$24.72"
    assert max(len(line) for line in lines) <= 80 and "left out to fit 80 columns" in shown.err
