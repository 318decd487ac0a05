"""End to end on the Lambda simulator: the service (REST API + controller, a real subprocess) runs
`provider: lambda` runs on simulated instances that are real sshd machines on 127.0.0.x, with
real torchrun (2 nodes x 1 gloo process) and the real trainer.

What is shown (issue 4): a 2-node run goes pending -> ... -> succeeded as one DDP group, placed in
a fallback type and region, surviving 429s, 500s and cut SSH connections, and its instance cost
equals the simulator's ledger to the cent; no capacity anywhere fails the run after its wait;
an instance that dies mid-run is replaced by a new one and the run finishes; a changed host key is refused; a cancel
in provisioning, bootstrapping or training terminates every instance launched.

One simulator and one service for the module. The simulator's billing minute is 20 s, so a run
bills a few "minutes"; the controller is told the same length. Its view of when an instance
turned active and when termination was asked is within ~10 ms of the simulator's, so the
minutes disagree only for a run ending that close to a minute boundary (about 1 in 1000).
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from orchestrator.db.migrations import upgrade
from orchestrator.db.models import CostEntry, Instance
from orchestrator.db.session import make_engine, make_sessionmaker
from provision.lambda_cloud.client import LambdaClient
from provision.simulator import SimulatorServer
from provision.simulator.sshd import descendants
from simhelpers import API_KEY, FAST_RETRY, NODE_PYTHON, TORCH_SITE, free_ssh_port, require_sshd, sim_config, \
    write_key_pair
from test_e2e_local import TERMINAL, Service

#: the simulator's (and so the controller's) billing minute, in seconds
MINUTE_S = 20.0
KEY_NAME = "trainyard-e2e"
LIVE = ("booting", "active", "unhealthy", "terminating")


@pytest.fixture(scope="module")
def lsim(tmp_path_factory):
    sshd = require_sshd()
    port = free_ssh_port()
    assert port is not None, "no free port for the simulated machines' sshd"
    server = SimulatorServer(sim_config(tmp_path_factory.mktemp("lsim"), sshd, port, boot_s=0.5,
                                        terminate_s=0.3, linger_s=600, minute_s=MINUTE_S, quota=8)).start()
    yield server
    server.stop()


def lambda_service(lsim, root: Path, **env: str) -> Service:
    """A started `trainyard serve` for runs on the simulator `lsim` (its SSH key registered there),
    with a database and data dir under `root`; `env`: more settings."""
    key_file, public = write_key_pair(root / "keys")
    with LambdaClient(API_KEY, base_url=lsim.url, retry=FAST_RETRY, launch_interval_s=0) as c:
        c.add_ssh_key(KEY_NAME, public)
    db_url = f"sqlite:///{root / 'trainyard.db'}"
    upgrade(db_url)
    service = Service(
        db_url, root / "data", root,
        TRAINYARD_LEASE_S="20",
        TRAINYARD_RECONCILE_INTERVAL_S="0.3",
        TRAINYARD_LAMBDA_API_KEY=API_KEY,
        TRAINYARD_LAMBDA_API_URL=lsim.url,
        TRAINYARD_LAMBDA_SSH_KEY_NAME=KEY_NAME,
        TRAINYARD_LAMBDA_SSH_PORT=str(lsim.cloud.config.ssh_port),
        TRAINYARD_LAMBDA_LAUNCH_INTERVAL_S="0.2",
        TRAINYARD_LAMBDA_RETRY_BASE_DELAY_S="0.05",
        TRAINYARD_LAMBDA_RETRY_MAX_DELAY_S="0.2",
        TRAINYARD_BILLING_MINUTE_S=str(MINUTE_S),
        TRAINYARD_PLACEMENT_POLL_S="0.5",
        TRAINYARD_SSH_PRIVATE_KEY_FILE=str(key_file),
        TRAINYARD_SSH_USER=getpass.getuser(),
        TRAINYARD_SSH_CONNECT_TIMEOUT_S="3",
        TRAINYARD_NODE_PYTHON=NODE_PYTHON,
        TRAINYARD_NODE_TORCH_SITE_PACKAGES=TORCH_SITE,
        TRAINYARD_NODE_SOCKET_IFNAME="lo",  # every simulated node is this machine
        TRAINYARD_NODE_ENV=json.dumps({"OMP_NUM_THREADS": "1"}),
        TRAINYARD_NODE_ACTIVE_POLL_S="0.02",
        TRAINYARD_NODE_SSH_TIMEOUT_S="30",
        **env,
    )
    service.sim = lsim
    service.db = make_sessionmaker(make_engine(db_url))
    return service.start()


@pytest.fixture(scope="module")
def svc(lsim, tmp_path_factory):
    service = lambda_service(lsim, tmp_path_factory.mktemp("lservice"))
    yield service
    service.stop()
    service.client.close()


@pytest.fixture(autouse=True)
def _sim_reset(request):
    """Capacity and faults as the catalog has them, before and after each test."""
    if "svc" not in request.fixturenames:
        yield
        return
    sim = request.getfixturevalue("lsim").cloud

    def reset():
        with sim.lock:
            sim.faults.rate_limited = 0
            sim.faults.server_errors.clear()
            sim.faults.no_capacity.clear()
            base = {(t, r): n for t, item in sim.catalog.instance_types.items() for r, n in item.capacity.items()}
            used = {}
            for inst in sim.instances.values():
                if inst.status in ("booting", "active", "unhealthy", "terminating"):
                    used[(inst.instance_type, inst.region)] = used.get((inst.instance_type, inst.region), 0) + 1
            sim.capacity = {k: n - used.get(k, 0) for k, n in base.items()}

    reset()
    yield
    reset()


def spec(name: str, *, nodes: int = 2, train_tokens: int = 8192, instance_type: str = "cpu_4x_general",
         fallbacks: tuple[str, ...] = (), regions: tuple[str, ...] = (), placement_timeout_s: float = 60,
         test_loss: bool = True, long: bool = False) -> dict:
    """A tiny 1-layer GPT; `long`: one sequence per step, hundreds of steps (the data holds ~53k
    training tokens), so there is time to act while it trains."""
    micro_batch, train_tokens = (1, 50_000) if long else (4, train_tokens)
    return {
        "name": name,
        "model": {"preset": "gpt2-tiny", "overrides": {"n_layer": 1, "n_embd": 64, "n_head": 2}},
        "data": {"source": "builtin:corpus", "max_tokens": 60000},
        "training": {"seq_len": 64, "micro_batch": micro_batch, "max_tokens": train_tokens, "lr": 2e-3,
                     "min_lr": 2e-4, "warmup_steps": 2, "log_every": 2, "eval_every": 1000,
                     "eval_tokens": 512, "checkpoint_every": 8},
        "compute": {"provider": "lambda", "instance_type": instance_type,
                    "fallback_instance_types": list(fallbacks), "regions": list(regions), "nodes": nodes,
                    "placement_timeout_s": placement_timeout_s},
        "evaluation": {"test_loss": test_loss, "test_max_tokens": 1024},
    }


# -- helpers --------------------------------------------------------------------------------------
def admin(svc, method: str, path: str, **kw) -> dict:
    r = httpx.request(method, svc.sim.url + "/sim/v1" + path, timeout=10, trust_env=False, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def sim_instances(svc, run_id: str) -> list:
    with svc.sim.cloud.lock:
        return [i for i in svc.sim.cloud.instances.values() if (i.name or "").startswith(f"ty-{run_id}-")]


def ended(svc, run_id: str, timeout: float = 120) -> dict:
    """The run once it ended and its lease is released (every instance confirmed terminated)."""
    run = svc.wait(run_id, lambda r: r["status"] in TERMINAL, timeout=timeout, what="ended")
    deadline = time.time() + 30
    while time.time() < deadline:
        with svc.db() as s:
            rows = s.scalars(select(Instance).where(Instance.run_id == run_id)).all()
        if all(r.terminated_at is not None for r in rows):
            return svc.run(run_id)
        time.sleep(0.2)
    raise AssertionError(f"instances of {run_id} not terminated:\n{svc.log_tail()}")


def assert_nothing_left(svc, run_id: str) -> None:
    deadline = time.time() + 10
    while any(i.status in LIVE for i in sim_instances(svc, run_id)):
        assert time.time() < deadline, [(i.name, i.status) for i in sim_instances(svc, run_id)]
        time.sleep(0.1)


def training(run: dict) -> bool:
    return run["status"] == "training" and run["progress"]["step"] > 0


def cut_ssh_connections(svc, instance_ids: list[str]) -> int:
    """Kill every open SSH connection to these machines (their per-connection sshd processes):
    to the controller, that is a network cut. The trainers are detached and live on."""
    sshd_pids = {m["id"]: m["sshd_pid"] for m in admin(svc, "GET", "/machines")}
    killed = 0
    for iid in instance_ids:
        for pid in descendants(sshd_pids[iid]) if sshd_pids.get(iid) else []:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            except OSError:
                pass
    return killed


def events(svc, run_id: str) -> list[dict]:
    return svc.events(run_id)


def messages(svc, run_id: str) -> str:
    return "\n".join(e["message"] for e in events(svc, run_id))


def cents(value) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


# -- the tests ------------------------------------------------------------------------------------
def test_a_two_node_lambda_run_succeeds_on_fallbacks_through_api_faults_and_cut_connections(svc):
    # the first region has no a10 left and the preferred h100 has none in either region
    admin(svc, "PUT", "/capacity", json={"instance_type": "gpu_1x_a10", "region": "us-west-1", "count": 0})
    run_id = svc.submit(spec("lambda-ok", instance_type="gpu_1x_h100_pcie", fallbacks=("gpu_1x_a10",),
                             regions=("us-west-1", "us-east-1"), train_tokens=16384))
    # 429s and 500s on the API while the run is placed: the client backs off, the controller retries
    admin(svc, "POST", "/faults", json={"kind": "rate_limit", "count": 3})
    admin(svc, "POST", "/faults", json={"kind": "server_error", "count": 3, "status": 500})

    svc.wait(run_id, training, timeout=180, what="training")
    faults = admin(svc, "GET", "/faults")
    assert (faults["rate_limited"], faults["server_errors"]) == (0, [])  # all were answered to us
    ids = [i.id for i in sim_instances(svc, run_id)]
    assert len(ids) == 2
    assert cut_ssh_connections(svc, ids) >= 1  # the controller's sessions to both nodes

    run = ended(svc, run_id, timeout=240)
    assert run["status"] == "succeeded", (run["status_reason"], svc.log_tail())
    path = [e["to_status"] for e in events(svc, run_id) if e["kind"] == "status"]
    assert path == ["pending", "provisioning", "bootstrapping", "training", "evaluating", "succeeded"]
    said = messages(svc, run_id)
    assert "gpu_1x_h100_pcie: no capacity in us-west-1, us-east-1" in said
    assert "gpu_1x_a10 in us-east-1 (fallback for gpu_1x_h100_pcie)" in said
    assert said.count("trainer launched on") == 2 and "restart" not in said  # one start per node

    # one DDP group: rank 0's log and metrics say world size 2, and each node ran its torchrun
    # (node 1 is terminated once rank 0 wrote DONE, possibly before its torchrun exited)
    assert run["progress"]["world_size"] == 2
    assert "world size 2" in said and "on 2 x cpu" in svc.logs(run_id)
    with svc.db() as s:
        rows = s.scalars(select(Instance).where(Instance.run_id == run_id).order_by(Instance.rank)).all()
        entries = {e.instance_id: e for e in s.scalars(select(CostEntry).where(CostEntry.run_id == run_id))}
    for row in rows:
        assert (row.instance_type, row.region) == ("gpu_1x_a10", "us-east-1")
        disk = Path(svc.sim.cloud.state_dir) / "instances" / row.provider_instance_id / "disk"
        run_dir = disk / "trainyard" / "runs" / row.name
        assert (run_dir / "train.pid").is_file()  # rank 1 prints nothing when all goes well
        assert not (run_dir / "train.exit").exists() or (run_dir / "train.exit").read_text().strip() == "0"
        assert (run_dir / "DONE").is_file() == (row.rank == 0)  # rank 0 writes the run directory

    # both instances terminated in the simulator, and billed to the cent as its ledger says
    assert {i.status for i in sim_instances(svc, run_id)} <= {"terminated"}
    ledger = {e["instance_id"]: e for e in admin(svc, "GET", "/billing")["entries"]}
    for row in rows:
        entry, booked = ledger[row.provider_instance_id], entries[row.id]
        assert not entry["running"]
        assert (booked.quantity, cents(booked.cents)) == (entry["billed_minutes"], cents(entry["cost_cents"])), (
            row.name, booked.quantity, entry)
    total = sum(Decimal(ledger[r.provider_instance_id]["cost_cents"]) for r in rows)
    assert cents(run["cost"]["cents"]) == cents(total) > 0


def test_no_capacity_anywhere_fails_after_the_wait_with_nothing_running(svc):
    admin(svc, "POST", "/faults", json={"kind": "no_capacity", "instance_type": "*", "region": "*"})
    started = time.time()
    run_id = svc.submit(spec("lambda-nocap", fallbacks=("gpu_1x_a10",), placement_timeout_s=3))
    run = ended(svc, run_id, timeout=60)
    assert run["status"] == "failed"
    assert run["status_reason"].startswith(f"no capacity to place ty-{run_id}-")
    assert "cpu_4x_general, gpu_1x_a10 in any region" in run["status_reason"]
    assert time.time() - started >= 3
    assert sim_instances(svc, run_id) == []


def test_an_instance_that_dies_mid_run_is_replaced_and_the_run_resumes_from_node_0s_checkpoint(svc):
    s = spec("lambda-dies", long=True)
    s["training"]["max_tokens"] = 25_000  # ~200 steps: time to kill a node mid-run, and not much more
    run_id = svc.submit(s)
    svc.wait(run_id, lambda r: training(r) and r["progress"]["step"] >= 16, timeout=180, what="training")
    victim = next(i for i in sim_instances(svc, run_id) if i.name.endswith("-1"))
    admin(svc, "POST", "/faults", json={"kind": "kill_instance", "instance_id": victim.id, "status": "unhealthy"})

    run = ended(svc, run_id, timeout=240)
    assert run["status"] == "succeeded", (run["status_reason"], svc.log_tail())
    text = messages(svc, run_id)
    assert f"node 1 (ty-{run_id}-1) is unhealthy at provider lambda; replacing ty-{run_id}-1 with a new node" in text
    # no S3 store here: node 0 kept its checkpoints on its disk, and the trainer resumed from them
    assert "resumed from step" in text
    steps = [p["step"] for p in svc.client.get(f"/runs/{run_id}/metrics", params={"limit": 10000, "kind": "train"})
             .json()["points"]]
    assert steps == sorted(set(steps))
    names = sorted(i.name for i in sim_instances(svc, run_id))
    assert names == [f"ty-{run_id}-0", f"ty-{run_id}-1", f"ty-{run_id}-1r1"]
    assert_nothing_left(svc, run_id)


def test_a_changed_host_key_is_refused(svc):
    run_id = svc.submit(spec("lambda-hostkey", nodes=1, long=True, test_loss=False))
    svc.wait(run_id, training, timeout=180, what="training")
    (inst,) = sim_instances(svc, run_id)
    sshd_pid = next(m["sshd_pid"] for m in admin(svc, "GET", "/machines") if m["id"] == inst.id)
    sessions = [p for p in descendants(sshd_pid) if Path(f"/proc/{p}/comm").read_text().strip() == "sshd"]
    admin(svc, "POST", "/faults", json={"kind": "rotate_host_key", "instance_id": inst.id})
    for pid in sessions:  # the open session would go on with the old key; a reconnect sees the new
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

    run = ended(svc, run_id, timeout=60)
    assert run["status"] == "failed", svc.log_tail()
    assert f"SSH host key of [{inst.ip}]:{svc.sim.cloud.config.ssh_port} does not match the pinned one" \
        in run["status_reason"]
    assert "Refusing to connect" in run["status_reason"]
    assert_nothing_left(svc, run_id)


@pytest.mark.parametrize("phase", ["provisioning", "bootstrapping", "training"])
def test_cancel_terminates_every_launched_instance(svc, phase):
    if phase == "provisioning":
        # one cpu node can be had, the second waits for capacity: cancel while it waits
        admin(svc, "PUT", "/capacity", json={"instance_type": "cpu_4x_general", "region": "us-east-1", "count": 1})
        admin(svc, "PUT", "/capacity", json={"instance_type": "cpu_4x_general", "region": "us-west-1", "count": 0})
    run_id = svc.submit(spec(f"lambda-cancel-{phase}", nodes=2 if phase != "training" else 1,
                             long=True))
    if phase == "provisioning":
        svc.wait(run_id, lambda r: r["status"] == "provisioning" and len(sim_instances(svc, run_id)) == 1,
                 timeout=60, what="provisioning with one instance")
        time.sleep(1.0)  # the first node is active by now; the second is still waiting
    elif phase == "bootstrapping":
        svc.wait(run_id, lambda r: r["status"] == "bootstrapping", timeout=60, what="bootstrapping")
    else:
        svc.wait(run_id, training, timeout=180, what="training")
    launched = sim_instances(svc, run_id)
    assert launched

    r = svc.client.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    run = ended(svc, run_id, timeout=60)
    assert (run["status"], run["status_reason"]) == ("cancelled", "cancelled by the user")
    assert_nothing_left(svc, run_id)
    assert {i.status for i in sim_instances(svc, run_id)} == {"terminated"}
    assert len(sim_instances(svc, run_id)) == len(launched)  # nothing launched after the cancel
