"""`trainyard plan` and the plan `trainyard submit` checks, as a user runs them: the CLI, the real
service (API only) with the `lambda` provider on the simulator's catalog (in process, loopback)."""

from __future__ import annotations

import json

import httpx
import pytest

from orchestrator_helpers import api_service, one_error_line, trainyard
from plan_helpers import start_simulator

SPEC = """
name: seed-gpt2-small
model: {{preset: gpt2-small}}
training: {{seq_len: 1024, micro_batch: auto, max_tokens: chinchilla, eval_every: 0}}
compute: {{provider: lambda, instance_type: {instance_type}, procs_per_node: 8}}
budget: {{max_usd: {max_usd}}}
"""


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    server = start_simulator(tmp_path_factory.mktemp("sim"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory, sim):
    data = tmp_path_factory.mktemp("svc")
    key = data / "id_ed25519"
    key.write_text("not used: nothing is launched\n")
    svc = api_service(
        data,
        TRAINYARD_LAMBDA_API_URL=sim.url,
        TRAINYARD_LAMBDA_API_KEY=sim.cloud.config.api_key.get_secret_value(),
        TRAINYARD_LAMBDA_SSH_KEY_NAME="trainyard",
        TRAINYARD_SSH_PRIVATE_KEY_FILE=str(key),
        TRAINYARD_LAMBDA_RETRY_ATTEMPTS="2",
        TRAINYARD_LAMBDA_RETRY_BASE_DELAY_S="0.01",
        TRAINYARD_LAMBDA_RETRY_MAX_DELAY_S="0.02",
    )
    yield svc
    svc.close()


@pytest.fixture
def spec_file(tmp_path):
    def write(instance_type: str = "auto", max_usd: float = 60) -> str:
        path = tmp_path / f"{instance_type}-{max_usd}.yaml"
        path.write_text(SPEC.format(instance_type=instance_type, max_usd=max_usd))
        return str(path)

    return write


def runs_total(service) -> int:
    return service.client.get("/runs").json()["total"]


def test_plan_as_json_and_as_a_table(service, spec_file):
    done = trainyard("plan", spec_file(), "--format", "json", env=service.env)
    assert done.returncode == 0, done.stderr
    page = json.loads(done.stdout)
    assert page["provider"] == "lambda" and len(page["rows"]) == 19
    fastest = next(r for r in page["rows"] if r["fastest"])
    assert fastest["instance_type"] == "gpu_8x_b200_sxm6" and fastest["source"] == "prior"

    table = trainyard("plan", spec_file(), env=service.env)
    assert table.returncode == 0, table.stderr
    for text in ("TYPE", "TOK/S", "RANGE US$", "gpu_8x_b200_sxm6", "8x B200", "fastest", "cheapest", "prior ±40%"):
        assert text in table.stdout, text
    assert "gpu_1x_h100_sxm5: compute.procs_per_node is 8; gpu_1x_h100_sxm5 has 1 GPU(s)" in table.stdout
    b200 = next(line for line in table.stdout.splitlines() if line.strip().startswith("gpu_8x_b200_sxm6"))
    assert "cheapest" in b200 or "fastest" in b200, "one row, one line: marks at its end"
    assert f"${fastest['usd']:.2f}" in table.stdout
    assert "auto chose" in table.stderr


def test_probe_caps_without_a_probe_are_bad_input(service, spec_file):
    done = trainyard("plan", spec_file(), "--max-usd", "5", env=service.env)
    assert done.returncode == 2 and "--probe" in one_error_line(done)


def test_submit_over_budget_is_refused_with_the_figures_unless_forced(service, spec_file):
    before = runs_total(service)
    done = trainyard("submit", spec_file("gpu_8x_a100", 10), env=service.env)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the plan estimates US$") and "over budget.max_usd 10" in line
    assert "gpu_8x_a100" in done.stderr and runs_total(service) == before

    forced = trainyard("submit", spec_file("gpu_8x_a100", 10), "--force", env=service.env)
    assert forced.returncode == 0, forced.stderr
    assert "submitting anyway (--force)" in forced.stderr and runs_total(service) == before + 1


def test_submit_auto_shows_the_objectives_row_and_records_the_objective(service, spec_file):
    done = trainyard("submit", spec_file(), "--objective", "fastest", "--format", "json", env=service.env)
    assert done.returncode == 0, done.stderr
    assert "auto chose gpu_8x_b200_sxm6 (fastest)" in done.stderr
    run = json.loads(done.stdout)  # the row went to stderr: stdout is the run, as JSON
    assert run["spec"]["compute"]["objective"] == "fastest"

    broke = trainyard("submit", spec_file("auto", 5), env=service.env)
    assert broke.returncode == 2 and "cheapest estimate is" in broke.stderr and "budget.max_usd 5" in broke.stderr


def test_submit_without_a_plan_says_so_and_submits(service, sim, spec_file):
    before = runs_total(service)
    httpx.post(sim.url + "/sim/v1/faults", json={"kind": "server_error", "count": 50}).raise_for_status()
    try:
        done = trainyard("submit", spec_file("gpu_8x_a100", 10), env=service.env)
    finally:
        httpx.delete(sim.url + "/sim/v1/faults").raise_for_status()
    assert done.returncode == 0, done.stderr
    assert "no cost estimate (provider lambda could not list instance types" in done.stderr
    assert runs_total(service) == before + 1
