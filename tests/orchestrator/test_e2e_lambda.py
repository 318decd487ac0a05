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

import contextlib
import os
import signal
import time
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator.costs import instance_cost
from orchestrator.db.models import CostEntry, Instance, utcnow
from orchestrator_helpers import (
    LIVE,
    admin,
    assert_nothing_left,
    lambda_spec,
    sim_instances,
    start_lambda_service,
    training,
)
from provision.simulator.sshd import descendants


@pytest.fixture(scope="module")
def svc(lsim, tmp_path_factory):
    service = start_lambda_service(lsim, tmp_path_factory.mktemp("lservice"))
    yield service
    service.close()


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
                if inst.status in LIVE:
                    used[(inst.instance_type, inst.region)] = used.get((inst.instance_type, inst.region), 0) + 1
            sim.capacity = {k: n - used.get(k, 0) for k, n in base.items()}

    reset()
    yield
    reset()


# -- helpers --------------------------------------------------------------------------------------
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
    run_id = svc.submit(
        lambda_spec(
            "lambda-ok",
            instance_type="gpu_1x_h100_pcie",
            fallbacks=("gpu_1x_a10",),
            regions=("us-west-1", "us-east-1"),
            train_tokens=16384,
        )
    )
    # 429s and 500s on the API while the run is placed: the client backs off, the controller retries
    admin(svc, "POST", "/faults", json={"kind": "rate_limit", "count": 3})
    admin(svc, "POST", "/faults", json={"kind": "server_error", "count": 3, "status": 500})

    svc.wait(run_id, training, timeout=180, what="training")
    faults = admin(svc, "GET", "/faults")
    assert (faults["rate_limited"], faults["server_errors"]) == (0, [])  # all were answered to us
    ids = [i.id for i in sim_instances(svc, run_id)]
    assert len(ids) == 2
    assert cut_ssh_connections(svc, ids) >= 1  # the controller's sessions to both nodes

    run = svc.wait_ended(run_id, timeout=240)
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
            row.name,
            booked.quantity,
            entry,
        )
    total = sum(Decimal(ledger[r.provider_instance_id]["cost_cents"]) for r in rows)
    assert cents(run["cost"]["cents"]) == cents(total) > 0
    # the live estimate (what GET /runs shows before an instance is booked) is the same rule:
    # asked about these rows as if unbooked, even an hour later, it says what was booked
    later = utcnow() + timedelta(hours=1)
    for row in rows:
        live = instance_cost(row, later)
        assert (live.minutes, cents(live.cents)) == (entries[row.id].quantity, cents(entries[row.id].cents))


def test_no_capacity_anywhere_fails_after_the_wait_with_nothing_running(svc):
    admin(svc, "POST", "/faults", json={"kind": "no_capacity", "instance_type": "*", "region": "*"})
    started = time.time()
    run_id = svc.submit(lambda_spec("lambda-nocap", fallbacks=("gpu_1x_a10",), placement_timeout_s=3))
    run = svc.wait_ended(run_id, timeout=60)
    assert run["status"] == "failed"
    assert run["status_reason"].startswith(f"no capacity to place ty-{run_id}-")
    assert "cpu_4x_general, gpu_1x_a10 in any region" in run["status_reason"]
    assert time.time() - started >= 3
    assert sim_instances(svc, run_id) == []


def test_an_instance_that_dies_mid_run_is_replaced_and_the_run_resumes_from_node_0s_checkpoint(svc):
    s = lambda_spec("lambda-dies", long=True)
    s["training"]["max_tokens"] = 25_000  # ~200 steps: time to kill a node mid-run, and not much more
    run_id = svc.submit(s)
    svc.wait(run_id, lambda r: training(r) and r["progress"]["step"] >= 16, timeout=180, what="training")
    victim = next(i for i in sim_instances(svc, run_id) if i.name.endswith("-1"))
    admin(svc, "POST", "/faults", json={"kind": "kill_instance", "instance_id": victim.id, "status": "unhealthy"})

    run = svc.wait_ended(run_id, timeout=240)
    assert run["status"] == "succeeded", (run["status_reason"], svc.log_tail())
    text = messages(svc, run_id)
    assert f"node 1 (ty-{run_id}-1) is unhealthy at provider lambda; replacing ty-{run_id}-1 with a new node" in text
    # no S3 store here: node 0 kept its checkpoints on its disk, and the trainer resumed from them
    assert "resumed from step" in text
    steps = [
        p["step"]
        for p in svc.client.get(f"/runs/{run_id}/metrics", params={"limit": 10000, "kind": "train"}).json()["points"]
    ]
    assert steps == sorted(set(steps))
    names = sorted(i.name for i in sim_instances(svc, run_id))
    assert names == [f"ty-{run_id}-0", f"ty-{run_id}-1", f"ty-{run_id}-1r1"]
    assert_nothing_left(svc, run_id)


def test_a_changed_host_key_is_refused(svc):
    run_id = svc.submit(lambda_spec("lambda-hostkey", nodes=1, long=True, test_loss=False))
    svc.wait(run_id, training, timeout=180, what="training")
    (inst,) = sim_instances(svc, run_id)
    sshd_pid = next(m["sshd_pid"] for m in admin(svc, "GET", "/machines") if m["id"] == inst.id)
    sessions = [p for p in descendants(sshd_pid) if Path(f"/proc/{p}/comm").read_text().strip() == "sshd"]
    admin(svc, "POST", "/faults", json={"kind": "rotate_host_key", "instance_id": inst.id})
    for pid in sessions:  # the open session would go on with the old key; a reconnect sees the new
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)

    run = svc.wait_ended(run_id, timeout=60)
    assert run["status"] == "failed", svc.log_tail()
    assert (
        f"SSH host key of [{inst.ip}]:{svc.sim.cloud.config.ssh_port} does not match the pinned one"
        in run["status_reason"]
    )
    assert "Refusing to connect" in run["status_reason"]
    assert_nothing_left(svc, run_id)


@pytest.mark.parametrize("phase", ["provisioning", "bootstrapping", "training"])
def test_cancel_terminates_every_launched_instance(svc, phase):
    if phase == "provisioning":
        # one cpu node can be had, the second waits for capacity: cancel while it waits
        admin(svc, "PUT", "/capacity", json={"instance_type": "cpu_4x_general", "region": "us-east-1", "count": 1})
        admin(svc, "PUT", "/capacity", json={"instance_type": "cpu_4x_general", "region": "us-west-1", "count": 0})
    run_id = svc.submit(lambda_spec(f"lambda-cancel-{phase}", nodes=2 if phase != "training" else 1, long=True))
    if phase == "provisioning":
        svc.wait(
            run_id,
            lambda r: r["status"] == "provisioning" and len(sim_instances(svc, run_id)) == 1,
            timeout=60,
            what="provisioning with one instance",
        )
        time.sleep(1.0)  # the first node is active by now; the second is still waiting
    elif phase == "bootstrapping":
        svc.wait(run_id, lambda r: r["status"] == "bootstrapping", timeout=60, what="bootstrapping")
    else:
        svc.wait(run_id, training, timeout=180, what="training")
    launched = sim_instances(svc, run_id)
    assert launched

    r = svc.client.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    run = svc.wait_ended(run_id, timeout=60)
    assert (run["status"], run["status_reason"]) == ("cancelled", "cancelled by the user")
    assert_nothing_left(svc, run_id)
    assert {i.status for i in sim_instances(svc, run_id)} == {"terminated"}
    assert len(sim_instances(svc, run_id)) == len(launched)  # nothing launched after the cancel
