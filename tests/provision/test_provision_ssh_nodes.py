"""Simulated machines driven over real SSH: pinned host keys, detached processes, termination."""

from __future__ import annotations

import getpass
import threading
import time
from pathlib import Path

import pytest

from provision.errors import HostKeyMismatch, NodeError, NodeUnreachable
from provision.simulator.sshd import Machine, address_free, generate_key_pair
from provision.transport.connection import SshNode, SshTarget, SshTimeouts
from provision.transport.known_hosts import PinnedHostKeys
from provision_helpers import pid_alive, wait_status

FAST = SshTimeouts(connect_s=2, banner_s=5, auth_s=5, channel_s=5, command_s=20)


@pytest.fixture
def machine(client, registered_key, admin):
    """An active simulated instance: (lambda instance, its simulator record)."""
    iid = client.launch(
        region="us-west-1",
        instance_type="gpu_1x_a100",
        ssh_key_name=registered_key,
        name=f"ty-ssh-{time.monotonic_ns()}",
    )
    inst = wait_status(client, iid, "active")
    record = next(m for m in admin.get("/sim/v1/machines").json() if m["id"] == iid)
    return inst, record


def node_for(inst, key_pair, known_hosts: PinnedHostKeys, port: int, machine: str | None = None) -> SshNode:
    target = SshTarget(host=inst.ip, user=getpass.getuser(), key_file=key_pair[0], port=port, machine=machine)
    return SshNode.to(target, known_hosts, timeouts=FAST)


def test_node_runs_commands_and_moves_files(machine, key_pair, ssh_port, tmp_path):
    inst, record = machine
    known = PinnedHostKeys(tmp_path / "known_hosts")
    node = node_for(inst, key_pair, known, ssh_port)
    try:
        assert node.run("echo hi") == "hi\n"
        assert node.run("pwd").strip() == record["disk"]  # sessions start in the instance's disk
        # first sight pinned the key, and it is the machine's own
        pinned = known.keys_for(f"[{inst.ip}]:{ssh_port}")
        assert [f"{k.get_name()} {k.get_base64()}" for k in pinned] == [record["host_public_key"]]
        (tmp_path / "up.txt").write_text("payload\n")
        node.put(tmp_path / "up.txt", f"{record['disk']}/up.txt")
        node.get(f"{record['disk']}/up.txt", tmp_path / "down.txt")
        assert (tmp_path / "down.txt").read_text() == "payload\n"
        with pytest.raises(NodeError):
            node.run("exit 3")
    finally:
        node.close()


def test_detached_process_survives_closing_the_connection(machine, key_pair, ssh_port, tmp_path):
    inst, record = machine
    known = PinnedHostKeys(tmp_path / "known_hosts")
    node = node_for(inst, key_pair, known, ssh_port)
    pid = node.start_detached("sleep 600", workdir=record["disk"])
    node.close()
    time.sleep(0.2)
    again = node_for(inst, key_pair, known, ssh_port)
    try:
        assert again.status(workdir=record["disk"]).running
        assert pid_alive(pid)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"TY_INSTANCE={inst.id}".encode() in environ
    finally:
        again.close()


def test_changed_host_key_at_the_same_address_is_refused(machine, key_pair, ssh_port, tmp_path, admin):
    inst, _ = machine
    known = PinnedHostKeys(tmp_path / "known_hosts")
    node = node_for(inst, key_pair, known, ssh_port)
    assert node.run("echo first") == "first\n"
    node.close()
    before = (tmp_path / "known_hosts").read_text()
    resp = admin.post("/sim/v1/faults", json={"kind": "rotate_host_key", "instance_id": inst.id})
    assert resp.status_code == 200
    fresh = node_for(inst, key_pair, known, ssh_port)
    with pytest.raises(HostKeyMismatch) as exc:
        fresh.run("echo second")
    text = str(exc.value)
    assert f"[{inst.ip}]:{ssh_port}" in text and "pinned ED25519 SHA256:" in text and "presented" in text
    assert str(tmp_path / "known_hosts") in text
    # never retried as if unreachable, and the pin is untouched
    with pytest.raises(HostKeyMismatch):
        fresh.wait_for_ssh(time.monotonic() + 5)
    assert (tmp_path / "known_hosts").read_text() == before


def test_a_new_machine_at_a_pinned_address_is_accepted_when_the_provider_names_it(
    machine, key_pair, ssh_port, tmp_path, admin
):
    """A worker that never terminated the old machine (its pin file was not told) meets a new
    machine at the same address: the provider names another machine there, so the stale pin goes
    and the new key is pinned. The same machine presenting another key is still refused."""
    inst, record = machine
    known = PinnedHostKeys(tmp_path / "known_hosts")
    first = node_for(inst, key_pair, known, ssh_port, machine=inst.id)
    assert first.run("echo first") == "first\n"
    first.close()
    assert admin.post("/sim/v1/faults", json={"kind": "rotate_host_key", "instance_id": inst.id}).status_code == 200
    with pytest.raises(HostKeyMismatch):  # the provider still says it is the same machine
        node_for(inst, key_pair, known, ssh_port, machine=inst.id).run("echo again")
    renamed = node_for(inst, key_pair, known, ssh_port, machine="a-new-machine")
    try:
        assert renamed.run("echo second") == "second\n"
    finally:
        renamed.close()
    (pinned,) = known.keys_for(f"[{inst.ip}]:{ssh_port}")
    rotated = next(m for m in admin.get("/sim/v1/machines").json() if m["id"] == inst.id)["host_public_key"]
    assert f"{pinned.get_name()} {pinned.get_base64()}" == rotated != record["host_public_key"]


def test_terminate_kills_the_sshd_and_its_processes(machine, client, key_pair, ssh_port, tmp_path):
    inst, record = machine
    node = node_for(inst, key_pair, PinnedHostKeys(tmp_path / "known_hosts"), ssh_port)
    pid = node.start_detached("sleep 600", workdir=record["disk"])
    # a process that escapes its session and process group entirely
    other = int(node.run("setsid sh -c 'sleep 600 >/dev/null 2>&1 & echo $!' < /dev/null").split()[-1])
    assert pid_alive(pid) and pid_alive(other) and pid_alive(record["sshd_pid"])
    client.terminate([inst.id])
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in (pid, other, record["sshd_pid"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid) and not pid_alive(other) and not pid_alive(record["sshd_pid"])
    with pytest.raises(NodeError):
        node.run("echo still there?")
    with pytest.raises(NodeUnreachable):
        node_for(inst, key_pair, PinnedHostKeys(tmp_path / "k2"), ssh_port).wait_for_ssh(
            time.monotonic() + 0.5, interval_s=0.1
        )


@pytest.mark.parametrize("status", ["unhealthy", "preempted"])
def test_kill_instance_fault(machine, client, key_pair, ssh_port, tmp_path, admin, status):
    inst, record = machine
    node = node_for(inst, key_pair, PinnedHostKeys(tmp_path / "known_hosts"), ssh_port)
    pid = node.start_detached("sleep 600", workdir=record["disk"])
    resp = admin.post("/sim/v1/faults", json={"kind": "kill_instance", "instance_id": inst.id, "status": status})
    assert resp.json()["instance"]["status"] == status
    time.sleep(0.1)
    assert not pid_alive(pid) and not pid_alive(record["sshd_pid"])
    assert client.get_instance(inst.id).status == status
    entry = next(e for e in admin.get("/sim/v1/billing").json()["entries"] if e["instance_id"] == inst.id)
    # Lambda keeps billing an unhealthy instance until it is terminated; a preempted one stops
    assert entry["running"] is (status == "unhealthy")
    if status == "unhealthy":
        client.terminate([inst.id])
        entry = next(e for e in admin.get("/sim/v1/billing").json()["entries"] if e["instance_id"] == inst.id)
        assert entry["running"] is False


def test_wait_for_ssh_retries_until_the_machine_answers(sshd_path, ssh_port, key_pair, tmp_path):
    address = next(f"127.0.0.{n}" for n in range(200, 250) if address_free(f"127.0.0.{n}", ssh_port))
    box = Machine(tmp_path / "box", "late-box", key_pair[1], sim_tag="test-late-box")
    starter = threading.Timer(0.6, box.start, args=(address, ssh_port), kwargs={"sshd": sshd_path})
    starter.start()
    node = SshNode.to(
        SshTarget(address, getpass.getuser(), key_pair[0], ssh_port),
        PinnedHostKeys(tmp_path / "known_hosts"),
        timeouts=FAST,
    )
    try:
        t0 = time.monotonic()
        node.wait_for_ssh(t0 + 10, interval_s=0.1)
        assert time.monotonic() - t0 >= 0.5
        assert node.run("echo up") == "up\n"
    finally:
        starter.join()
        node.close()
        box.destroy()


def test_unreachable_and_refused_keys_are_typed(sshd_path, ssh_port, key_pair, tmp_path):
    address = next(f"127.0.0.{n}" for n in range(200, 250) if address_free(f"127.0.0.{n}", ssh_port))
    known = PinnedHostKeys(tmp_path / "known_hosts")
    nobody = SshNode.to(SshTarget(address, getpass.getuser(), key_pair[0], ssh_port), known, timeouts=FAST)
    t0 = time.monotonic()
    with pytest.raises(NodeUnreachable) as exc:
        nobody.wait_for_ssh(t0 + 0.5, interval_s=0.1)
    assert time.monotonic() - t0 < 3 and "attempts" in str(exc.value)
    # a machine that does not know our key: a NodeError, not "unreachable"
    box = Machine(tmp_path / "box", "other-key-box", generate_key_pair("other")[1], sim_tag="test-other-key")
    box.start(address, ssh_port, sshd=sshd_path)
    try:
        stranger = SshNode.to(SshTarget(address, getpass.getuser(), key_pair[0], ssh_port), known, timeouts=FAST)
        with pytest.raises(NodeError) as exc2:
            stranger.run("true")
        assert not isinstance(exc2.value, NodeUnreachable) and "refused" in str(exc2.value)
    finally:
        box.destroy()
