"""`trainyard sim` and `trainyard instance-types`, as a user runs them: the real simulator CLI,
the real service (API only) configured for the `lambda` provider, and the CLI asking it."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from orchestrator_helpers import TRAINYARD, api_service, cli_env, free_port, one_error_line, trainyard, wait_http

SIM_KEY = "sim-key-for-instance-types"


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    state = tmp_path_factory.mktemp("sim")
    port = free_port()
    env = {**cli_env(state), "LAMBDA_SIM_API_KEY": SIM_KEY}
    log = state / "sim.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*TRAINYARD, "sim", "--port", str(port), "--state-dir", str(state), "--requests-per-second", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/sim/v1/health", proc, "trainyard sim", log.read_text, timeout_s=30)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def lambda_service(tmp_path_factory, simulator):
    data = tmp_path_factory.mktemp("svc")
    key = data / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    svc = api_service(
        data,
        TRAINYARD_LAMBDA_API_URL=simulator,
        TRAINYARD_LAMBDA_API_KEY=SIM_KEY,
        TRAINYARD_LAMBDA_SSH_KEY_NAME="trainyard",
        TRAINYARD_SSH_PRIVATE_KEY_FILE=str(key),
    )
    yield svc
    svc.close()


def test_instance_types_lists_prices_gpus_and_capacity_from_the_provider(lambda_service):
    done = trainyard("instance-types", "--format", "json", env=lambda_service.env)
    assert done.returncode == 0, done.stderr
    page = json.loads(done.stdout)
    assert page["provider"] == "lambda"
    by_name = {t["name"]: t for t in page["instance_types"]}
    h100 = by_name["gpu_8x_h100_sxm5"]
    assert h100["gpus"] == 8 and h100["price_cents_per_hour"] > 0
    assert all(isinstance(r, str) for r in h100["regions_with_capacity"])
    assert any(t["regions_with_capacity"] for t in page["instance_types"]), "the catalog has capacity"
    prices = [t["price_cents_per_hour"] for t in page["instance_types"]]
    assert prices == sorted(prices), "cheapest first"

    table = trainyard("instance-types", env=lambda_service.env)
    assert table.returncode == 0 and "gpu_8x_h100_sxm5" in table.stdout
    assert f"${h100['price_cents_per_hour'] / 100:,.2f}" in table.stdout


def test_the_api_key_never_appears_in_the_answer(lambda_service):
    answer = httpx.get(lambda_service.url + "/api/v1/instance-types", params={"provider": "lambda"})
    assert answer.status_code == 200 and SIM_KEY not in answer.text


def test_an_unconfigured_provider_is_exit_2_naming_the_setting(tmp_path):
    svc = api_service(tmp_path)
    try:
        done = trainyard("instance-types", "--provider", "lambda", env=svc.env)
        assert done.returncode == 2
        assert "TRAINYARD_LAMBDA_API_KEY" in one_error_line(done)
        unknown = trainyard("instance-types", "--provider", "azure", env=svc.env)
        assert unknown.returncode == 2 and "provider" in one_error_line(unknown)
    finally:
        svc.close()
