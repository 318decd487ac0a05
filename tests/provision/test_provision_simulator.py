"""The simulator itself: Lambda's wire behaviour, its lifecycle, limits, ledger, and its CLI."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from provision.simulator import SimulatorServer
from provision.simulator.catalog import load_catalog
from provision_helpers import API_KEY, MINUTE_S, pid_alive, sim_config, wait_status

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def api(sim, method, path, **kw):
    return httpx.request(method, f"{sim.url}/api/v1{path}", headers=AUTH, trust_env=False, timeout=10, **kw)


def test_launch_validation_speaks_lambda_not_fastapi(sim, registered_key):
    time.sleep(0.2)  # the launch limit
    body = {
        "region_name": "us-east-1",
        "instance_type_name": "gpu_1x_a10",
        "ssh_key_names": [registered_key],
        "quantity": 2,
    }
    resp = api(sim, "POST", "/instance-operations/launch", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"] == {"code": "global/invalid-parameters", "message": "Requested too many instances."}
    time.sleep(0.2)
    resp = api(sim, "POST", "/instance-operations/launch", json={"region_name": "us-east-1"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "global/invalid-parameters"
    assert "instance_type_name" in resp.json()["error"]["suggestion"]
    resp = api(sim, "POST", "/instance-operations/terminate", content=b"{not json")
    assert resp.status_code == 400
    resp = api(sim, "GET", "/no-such-thing")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "global/not-found"
    resp = api(sim, "GET", "/instances/" + "0" * 32)
    assert resp.json() == {
        "error": {"code": "global/object-does-not-exist", "message": "Specified instance does not exist."}
    }


def test_instance_shape_and_lifecycle(sim, client, registered_key):
    iid = client.launch(region="us-east-1", instance_type="gpu_1x_a10", ssh_key_name=registered_key, name="ty-life-0")
    raw = api(sim, "GET", f"/instances/{iid}").json()["data"]
    assert raw["status"] == "booting" and "ip" not in raw
    assert raw["actions"]["terminate"] == {
        "available": False,
        "reason_code": "vm-has-not-launched",
        "reason_description": "vm has not launched",
    }
    assert {"id", "status", "ssh_key_names", "file_system_names", "region", "instance_type", "actions"} <= set(raw)
    wait_status(client, iid, "active")
    raw = api(sim, "GET", f"/instances/{iid}").json()["data"]
    assert raw["ip"] == raw["private_ip"] == raw["hostname"] and raw["actions"]["restart"] == {"available": True}
    client.terminate([iid])
    wait_status(client, iid, "terminated")
    # terminated instances linger (1 s here), then Lambda no longer knows them
    deadline = time.monotonic() + 5
    while iid in [i["id"] for i in api(sim, "GET", "/instances").json()["data"]]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert api(sim, "GET", f"/instances/{iid}").status_code == 404


def test_general_rate_limit(tmp_path, sshd_path, ssh_port):
    config = sim_config(tmp_path / "sim", sshd_path, ssh_port, requests_per_s=2.0, burst=3)
    with SimulatorServer(config) as server:
        codes = [api(server, "GET", "/instances").status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        resp = api(server, "GET", "/instances")
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
        assert resp.json()["error"]["code"] == "global/too-many-requests"
        time.sleep(0.6)
        assert api(server, "GET", "/instances").status_code == 200


def test_ledger_counts_started_minutes(sim, client, registered_key, admin):
    iid = client.launch(
        region="us-east-1", instance_type="gpu_1x_a100_sxm4", ssh_key_name=registered_key, name="ty-led"
    )
    wait_status(client, iid, "active")
    time.sleep(1.5 * MINUTE_S)
    running = next(e for e in admin.get("/sim/v1/billing").json()["entries"] if e["instance_id"] == iid)
    assert running["running"] and running["billed_minutes"] >= 2  # 1.5 minutes up: 2 started minutes
    client.terminate([iid])
    first = next(e for e in admin.get("/sim/v1/billing").json()["entries"] if e["instance_id"] == iid)
    time.sleep(2 * MINUTE_S)  # nothing accrues after the terminate call
    snap = admin.get("/sim/v1/billing").json()
    done = next(e for e in snap["entries"] if e["instance_id"] == iid)
    assert done == first and not done["running"]
    up = done["ended_at"] - done["started_at"]
    assert done["billed_minutes"] == math.ceil(up / MINUTE_S - 1e-9)  # every started minute
    assert Decimal(done["cost_cents"]) == (Decimal(129) * done["billed_minutes"] / 60).quantize(Decimal("0.000001"))
    assert snap["minute_seconds"] == MINUTE_S
    assert Path(sim.cloud.state_dir / "ledger.json").exists()


@pytest.mark.usefixtures("sim")
def test_capacity_is_counted_and_settable(client, registered_key, admin):
    admin.put("/sim/v1/capacity", json={"instance_type": "gpu_8x_b200_sxm6", "region": "us-south-2", "count": 1})
    client.launch(region="us-south-2", instance_type="gpu_8x_b200_sxm6", ssh_key_name=registered_key, name="b200")
    assert client.instance_types()["gpu_8x_b200_sxm6"].regions_with_capacity_available == []
    counts = {(c["instance_type"], c["region"]): c["count"] for c in admin.get("/sim/v1/capacity").json()}
    assert counts[("gpu_8x_b200_sxm6", "us-south-2")] == 0


def test_catalog_from_yaml(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "regions: {us-east-1: 'Virginia, USA'}\n"
        "instance_types:\n"
        "  gpu_1x_a100:\n"
        "    description: 1x A100 (40 GB PCIe)\n"
        "    gpu_description: A100 (40 GB PCIe)\n"
        "    price_cents_per_hour: 129\n"
        "    specs: {vcpus: 30, memory_gib: 200, storage_gib: 512, gpus: 1}\n"
        "    capacity: {us-east-1: 3}\n"
    )
    catalog = load_catalog(path)
    assert catalog.instance_types["gpu_1x_a100"].capacity == {"us-east-1": 3}
    path.write_text(path.read_text().replace("us-east-1: 3", "mars-1: 3"))
    with pytest.raises(ValueError, match="unknown region"):
        load_catalog(path)


@pytest.mark.usefixtures("sshd_path")
def test_cli_serves_and_cleans_up_on_sigterm(tmp_path, ssh_port, key_pair):
    """`python -m provision.simulator`: serves the API; SIGTERM destroys every machine."""
    port = _free_port()
    env = dict(os.environ, LAMBDA_SIM_API_KEY=API_KEY, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [
        sys.executable,
        "-m",
        "provision.simulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--state-dir",
        str(tmp_path / "state"),
        "--boot-seconds",
        "0.2",
        "--launch-interval",
        "0",
        "--requests-per-second",
        "0",
        "--ssh-port",
        str(ssh_port),
        "--first-ip",
        "127.0.0.60",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/sim/v1/health", trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.1)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        r = httpx.post(
            f"{base}/api/v1/ssh-keys", json={"name": "k", "public_key": key_pair[1]}, headers=headers, trust_env=False
        )
        assert r.status_code == 200
        r = httpx.post(
            f"{base}/api/v1/instance-operations/launch",
            headers=headers,
            trust_env=False,
            json={"region_name": "us-east-1", "instance_type_name": "gpu_1x_a100", "ssh_key_names": ["k"]},
        )
        iid = r.json()["data"]["instance_ids"][0]
        deadline = time.monotonic() + 10
        url = f"{base}/api/v1/instances/{iid}"
        while httpx.get(url, headers=headers, trust_env=False).json()["data"]["status"] != "active":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sshd_pid = httpx.get(f"{base}/sim/v1/machines", trust_env=False).json()[0]["sshd_pid"]
        assert pid_alive(sshd_pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode in (0, -signal.SIGTERM), out  # uvicorn re-raises the signal after a clean shutdown
    assert "Traceback" not in out, out
    assert not pid_alive(sshd_pid)
    assert API_KEY not in out


def test_cli_refuses_to_start_without_sshd(tmp_path):
    env = dict(os.environ, TRAINYARD_SSHD="/nonexistent/sshd", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(
        [sys.executable, "-m", "provision.simulator", "--state-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "install-sshd.sh" in proc.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
