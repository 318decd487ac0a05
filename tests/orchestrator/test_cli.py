"""The real `trainyard` CLI, as a subprocess, against a real `trainyard serve --no-controller`
subprocess on a free loopback port with a temporary SQLite database."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.db.models import utcnow
from orchestrator_helpers import TRAINYARD, api_service, cli_env, free_port, one_error_line, trainyard

GOOD_SPEC = "name: cli-test\ntraining: {max_tokens: 50000}\n"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = api_service(tmp_path_factory.mktemp("cli"))
    yield svc
    svc.close()


@pytest.fixture
def spec_file(tmp_path):
    def write(text: str = GOOD_SPEC) -> str:
        path = tmp_path / "spec.yaml"
        path.write_text(text)
        return str(path)

    return write


def submit(service, spec_file) -> str:
    proc = trainyard("submit", spec_file(), env=service.env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_submit_prints_the_run_id_and_runs_lists_it(service, spec_file):
    proc = trainyard("submit", spec_file(), env=service.env)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip()
    assert len(run_id) == 12 and "\n" not in run_id  # data only on stdout: `RUN=$(trainyard submit ...)`
    assert f"submitted run {run_id}" in proc.stderr

    listed = trainyard("runs", "--format", "json", env=service.env)
    assert listed.returncode == 0
    runs = json.loads(listed.stdout)["runs"]
    assert run_id in [r["id"] for r in runs]
    table = trainyard("runs", "--status", "pending", env=service.env)
    assert table.returncode == 0 and run_id in table.stdout and "cli-test" in table.stdout
    none = trainyard("runs", "--status", "succeeded", "--format", "json", env=service.env)
    assert run_id not in none.stdout


def test_status_as_json_and_as_a_table(service, spec_file):
    run_id = submit(service, spec_file)
    service.set_run(
        run_id, status="training", target_tokens=50_000, tokens_done=10_000, tokens_per_s=1_000.0, train_loss=5.25
    )
    proc = trainyard("status", run_id, "--format", "json", env=service.env)
    assert proc.returncode == 0 and proc.stderr == ""
    run = json.loads(proc.stdout)
    assert run["status"] == "training" and run["progress"]["tokens_done"] == 10_000
    assert run["progress"]["eta_s"] == pytest.approx(40.0)
    table = trainyard("status", run_id, env=service.env)
    assert "training" in table.stdout and "10,000 / 50,000 (20%)" in table.stdout and "5.250" in table.stdout


def test_cancel_then_conflict_once_ended(service, spec_file):
    run_id = submit(service, spec_file)
    proc = trainyard("cancel", run_id, "--format", "json", env=service.env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["cancel_requested"] is True
    service.set_run(run_id, status="cancelled", finished_at=utcnow())
    again = trainyard("cancel", run_id, env=service.env)
    assert again.returncode == 4
    assert "already ended (cancelled)" in one_error_line(again) and again.stdout == ""


@pytest.mark.parametrize(
    "text, words",
    [
        ("name: x\nbudget: {max_usd: -1}\n", "error: budget.max_usd: Input should be greater than or equal to 0"),
        ("name: x\ntrainig: {lr: 1}\n", "error: trainig: Extra inputs are not permitted"),
        ("name: x\n  training: [\n", "error: the spec is not valid YAML at line 2"),
    ],
)
def test_a_bad_spec_is_exit_2_with_one_line_and_nothing_submitted(service, spec_file, text, words):
    before = json.loads(trainyard("runs", "--format", "json", env=service.env).stdout)["total"]
    proc = trainyard("submit", spec_file(text), env=service.env)
    assert proc.returncode == 2
    assert one_error_line(proc).startswith(words)
    assert json.loads(trainyard("runs", "--format", "json", env=service.env).stdout)["total"] == before


def test_a_missing_spec_file_is_exit_2(service, tmp_path):
    proc = trainyard("submit", str(tmp_path / "nope.yaml"), env=service.env)
    assert proc.returncode == 2 and "cannot read" in one_error_line(proc)


def test_an_unknown_run_is_exit_3(service):
    for args in (("status", "nope"), ("cancel", "nope"), ("logs", "nope")):
        proc = trainyard(*args, env=service.env)
        assert proc.returncode == 3, args
        assert one_error_line(proc) == "error: no run with id 'nope'"


def test_an_unreachable_service_is_exit_5_saying_how_to_start_it(tmp_path):
    proc = trainyard("runs", env=cli_env(tmp_path, f"http://127.0.0.1:{free_port()}"))
    assert proc.returncode == 5
    line = one_error_line(proc)
    assert "cannot reach the trainyard service" in line and "trainyard serve" in line


def test_logs_print_follow_until_the_run_ends_and_tail(service, spec_file):
    run_id = submit(service, spec_file)
    service.add_log(run_id, "step 1 loss 10.1\n", "step 2 loss 9.5\nstep 3 ", "loss 9.0\n")
    proc = trainyard("logs", run_id, env=service.env)
    assert proc.returncode == 0 and proc.stdout == "step 1 loss 10.1\nstep 2 loss 9.5\nstep 3 loss 9.0\n"
    tail = trainyard("logs", run_id, "--tail", "2", env=service.env)
    assert tail.stdout == "step 2 loss 9.5\nstep 3 loss 9.0\n"

    # -f keeps polling while the run is live and returns once it ended and the log is drained
    follower = subprocess.Popen(
        [*TRAINYARD, "logs", run_id, "-f", "--format", "json"],
        env=service.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.5)
    assert follower.poll() is None
    service.add_log(run_id, "done\n")
    service.set_run(run_id, status="succeeded", finished_at=utcnow())
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    texts = [json.loads(line)["text"] for line in out.splitlines()]
    assert texts[-1] == "done\n" and len(texts) == 4


def test_status_watch_ends_with_the_run_and_exit_7_unless_it_succeeded(service, spec_file):
    ok, bad = submit(service, spec_file), submit(service, spec_file)
    service.set_run(
        ok, status="succeeded", tokens_done=50_000, target_tokens=50_000, test_loss=4.2, finished_at=utcnow()
    )
    service.set_run(bad, status="failed", status_reason="node lost twice", finished_at=utcnow())
    done = trainyard("status", ok, "--watch", "--format", "json", env=service.env)
    assert done.returncode == 0 and json.loads(done.stdout)["progress"]["test_loss"] == 4.2
    assert f"{ok} succeeded" in done.stderr  # the progress line, on stderr
    failed = trainyard("status", bad, "--watch", env=service.env)
    assert failed.returncode == 7
    assert failed.stderr.strip().splitlines()[-1] == f"error: run {bad} ended failed: node lost twice"


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_idle_serve_is_small_and_never_loads_torch(service):
    # the running `serve` process: no torch library mapped, and a small resident set
    maps = Path(f"/proc/{service.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "/torch/" not in maps
    assert _rss_bytes(service.proc.pid) < 150 * 1024 * 1024


def test_importing_the_service_and_the_cli_does_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "import orchestrator.api.app, orchestrator.cli.main, orchestrator.cli.quickstart\n"
        "from orchestrator.api.app import create_app\n"
        "from orchestrator.settings import Settings\n"
        f"create_app(Settings(data_dir={str(tmp_path)!r}))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_quickstart_against_an_unreachable_service_says_so(tmp_path):
    proc = trainyard("--api-url", f"http://127.0.0.1:{free_port()}", "quickstart", env=cli_env(tmp_path))
    assert proc.returncode == 5
    assert "cannot reach the trainyard service" in one_error_line(proc)
