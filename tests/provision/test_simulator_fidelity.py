"""The simulator answers as Lambda's own OpenAPI spec says: every response is checked against it.

Every call goes through `call`, which validates the answer's body against the response schema
that Lambda's spec (`provision/simulator/lambda-cloud-openapi.json`, a copy of Lambda's 1.10.0)
gives for that operation and status: an undocumented status or a body of the wrong shape fails.
Launches here need no spacing, so the module runs its own simulator without the launch limit.
"""

from __future__ import annotations

import getpass
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from jsonschema import Draft202012Validator

import provision.simulator
from provision.simulator import SimulatorServer
from provision.simulator.sshd import can_add_lambda_user
from provision.transport.connection import SshNode, SshTarget, SshTimeouts
from provision.transport.known_hosts import PinnedHostKeys
from provision_helpers import API_KEY, pid_alive, sim_config

SPEC = json.loads((Path(provision.simulator.__file__).parent / "lambda-cloud-openapi.json").read_text())
AUTH = {"Authorization": f"Bearer {API_KEY}"}
FAST_SSH = SshTimeouts(connect_s=2, banner_s=5, auth_s=5, channel_s=5, command_s=20)
REGION, OTHER_REGION, TYPE = "us-east-1", "us-west-1", "cpu_4x_general"
HTTP = httpx.Client(headers=AUTH, trust_env=False, timeout=10)  # one client: each new one costs 0.1 s


def check_against_spec(method: str, template: str, resp: httpx.Response) -> None:
    """The response's status is documented for the operation and its body matches the schema."""
    responses = SPEC["paths"][template][method.lower()]["responses"]
    assert str(resp.status_code) in responses, f"{method} {template}: {resp.status_code} is not in the spec"
    schema = responses[str(resp.status_code)]["content"]["application/json"]["schema"]
    # the schema's "#/components/..." references resolve against the spec's components
    validator = Draft202012Validator(
        {**schema, "components": SPEC["components"]}, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(resp.json())]
    assert not errors, f"{method} {template} {resp.status_code}: {errors[:3]}"


def call(sim, method: str, template: str, *, ids: dict[str, str] | None = None, **kw) -> httpx.Response:
    """One Lambda API call, its answer checked against the spec."""
    path = template
    for name, value in (ids or {}).items():
        path = path.replace("{" + name + "}", value)
    resp = HTTP.request(method, sim.url + path, **kw)
    check_against_spec(method, template, resp)
    return resp


def error_of(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    return resp.json()["error"]["code"]


def data_of(resp: httpx.Response):
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


@pytest.fixture(scope="module")
def fsim(tmp_path_factory, sshd_path, ssh_port):
    config = sim_config(
        tmp_path_factory.mktemp("fidelity"),
        sshd_path,
        ssh_port,
        launch_interval_s=0,
        first_ip="127.0.0.120",
        last_ip="127.0.0.139",
    )
    with SimulatorServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def key_name(fsim, key_pair) -> str:
    data_of(call(fsim, "POST", "/api/v1/ssh-keys", json={"name": "fidelity", "public_key": key_pair[1]}))
    return "fidelity"


def launch(fsim, key_name: str, **extra) -> httpx.Response:
    body = {"region_name": REGION, "instance_type_name": TYPE, "ssh_key_names": [key_name], **extra}
    return call(fsim, "POST", "/api/v1/instance-operations/launch", json=body)


def wait_for(fsim, iid: str, status: str, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (inst := data_of(call(fsim, "GET", "/api/v1/instances/{id}", ids={"id": iid})))["status"] != status:
        assert time.monotonic() < deadline, inst
        time.sleep(0.05)
    return inst


def rfc4716(openssh_line: str, comment: str) -> str:
    """RFC4716's SSH2 armour as `ssh-keygen -e` writes it, with a header continued over two lines."""
    b64 = openssh_line.split()[1]
    body = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    half = len(comment) // 2
    head = [f'Comment: "{comment[:half]}\\', f'{comment[half:]}"', "x-made-by: trainyard-tests"]
    return "\n".join(["---- BEGIN SSH2 PUBLIC KEY ----", *head, *body, "---- END SSH2 PUBLIC KEY ----", ""])


def pem(key, fmt: serialization.PublicFormat) -> str:
    return key.public_bytes(serialization.Encoding.PEM, fmt).decode()


def openssh(key) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def test_ssh_keys_in_every_format_lambda_accepts(fsim):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    accepted = {
        "rfc4716-rsa": (rfc4716(openssh(rsa_key), "me@laptop"), openssh(rsa_key) + " me@laptop"),
        "pkcs8-ec": (pem(ec_key, serialization.PublicFormat.SubjectPublicKeyInfo), openssh(ec_key)),
        "pem-rsa": (pem(rsa_key, serialization.PublicFormat.PKCS1), openssh(rsa_key)),
        "openssh-ec": (openssh(ec_key) + " a comment", openssh(ec_key) + " a comment"),
    }
    for name, (text, stored) in accepted.items():
        key = data_of(call(fsim, "POST", "/api/v1/ssh-keys", json={"name": name, "public_key": text}))
        assert key["public_key"] == stored, name  # what goes into authorized_keys
    listed = {k["name"]: k for k in data_of(call(fsim, "GET", "/api/v1/ssh-keys"))}
    assert set(accepted) <= set(listed)

    x25519_pem = pem(x25519.X25519PrivateKey.generate().public_key(), serialization.PublicFormat.SubjectPublicKeyInfo)
    junk = [
        "not a key",
        "ssh-ed25519 AAAA",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        "---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----",
        x25519_pem,  # a real public key, but not one SSH can log in with
        "",
    ]
    for text in junk:
        resp = call(fsim, "POST", "/api/v1/ssh-keys", json={"name": "junk", "public_key": text})
        assert error_of(resp, 400) == "global/invalid-parameters", text
    # a body that is not JSON, or not text, is refused the same way, never a plain-text 500
    for raw in (
        b"{",
        b'{"name": "k", "public_key": "\\ud800"}',
        b'{"name": "\\ud800"}',
        b'{"name": ' + b"9" * 5000 + b"}",
        b"[" * 100_000,
    ):
        resp = call(fsim, "POST", "/api/v1/ssh-keys", content=raw)
        assert error_of(resp, 400) == "global/invalid-parameters"
    resp = call(fsim, "DELETE", "/api/v1/ssh-keys/{id}", ids={"id": "0" * 32})
    assert error_of(resp, 404) == "global/not-found"
    assert data_of(call(fsim, "DELETE", "/api/v1/ssh-keys/{id}", ids={"id": listed["pem-rsa"]["id"]})) == {}


@pytest.mark.parametrize(
    ("extra", "status", "code", "field"),
    [
        ({"tags": [{"key": "Team", "value": "x"}]}, 400, "global/invalid-parameters", "tags.0.key"),
        ({"tags": [{"key": "k" * 56, "value": "x"}]}, 400, "global/invalid-parameters", "tags.0.key"),
        ({"tags": [{"key": "team", "value": "v" * 129}]}, 400, "global/invalid-parameters", "tags.0.value"),
        ({"tags": [{"key": "team"}]}, 400, "global/invalid-parameters", "tags.0.value"),
        ({"name": "n" * 65}, 400, "global/invalid-parameters", "name"),
        ({"name": 7}, 400, "global/invalid-parameters", "name"),
        ({"hostname": "Head_Node"}, 400, "global/invalid-parameters", "hostname"),
        ({"user_data": "x" * (1024 * 1024 + 1)}, 400, "global/invalid-parameters", "user_data"),
        ({"image": {"family": "windows-2022"}}, 404, "global/object-does-not-exist", "windows-2022"),
        ({"image": {"id": "not-an-image"}}, 404, "global/object-does-not-exist", "not-an-image"),
        ({"image": {}}, 400, "global/invalid-parameters", "image"),
        ({"firewall_rulesets": [{"id": "f" * 32}]}, 404, "global/object-does-not-exist", "f" * 32),
        ({"file_system_names": ["no-such-fs"]}, 404, "global/object-does-not-exist", "no-such-fs"),
        (
            {"file_system_mounts": [{"mount_point": "/etc/evil", "file_system_id": "x"}]},
            400,
            "global/invalid-parameters",
            "file_system_mounts.0.mount_point",
        ),
        (
            {"file_system_mounts": [{"mount_point": "/data/x", "file_system_id": "no-such-id"}]},
            404,
            "global/object-does-not-exist",
            "no-such-id",
        ),
        ({"quantity": 2}, 400, "global/invalid-parameters", "too many"),
    ],
)
def test_launch_refuses_what_the_spec_forbids(fsim, key_name, extra, status, code, field):
    before = data_of(call(fsim, "GET", "/api/v1/instances"))
    resp = launch(fsim, key_name, **extra)
    assert error_of(resp, status) == code
    error = resp.json()["error"]
    assert field in error["message"] + error.get("suggestion", "")
    assert len(data_of(call(fsim, "GET", "/api/v1/instances"))) == len(before)  # nothing launched


def test_storage_firewall_and_images_follow_the_spec(fsim, key_name):
    regions = data_of(call(fsim, "GET", "/api/v1/regions"))
    assert {"name": REGION, "description": "Virginia, USA"} in regions
    images = data_of(call(fsim, "GET", "/api/v1/images"))
    assert {i["region"]["name"] for i in images} == {r["name"] for r in regions}
    here = [i for i in images if i["region"]["name"] == REGION]

    # file systems: names per the spec's pattern, one per name, in a known region
    fs = data_of(call(fsim, "POST", "/api/v1/filesystems", json={"name": "shared", "region": REGION}))
    assert fs["mount_point"] == "/lambda/nfs/shared" and fs["is_in_use"] is False
    data_of(call(fsim, "POST", "/api/v1/filesystems", json={"name": "far", "region": OTHER_REGION}))
    dup = call(fsim, "POST", "/api/v1/filesystems", json={"name": "shared", "region": REGION})
    assert error_of(dup, 400) == "global/duplicate"
    for bad in ({"name": "1st", "region": REGION}, {"name": "ok", "region": "mars-1"}, {"name": "ok"}):
        assert error_of(call(fsim, "POST", "/api/v1/filesystems", json=bad), 400) == "global/invalid-parameters"
    missing = call(fsim, "DELETE", "/api/v1/filesystems/{id}", ids={"id": "0" * 32})
    assert error_of(missing, 404) == "global/object-does-not-exist"
    assert missing.json()["error"]["message"] == "Filesystem was not found."

    # the account-wide firewall rules, read and put back with a port added (as SkyPilot opens ports)
    rules = data_of(call(fsim, "GET", "/api/v1/firewall-rules"))
    assert {"protocol": "tcp", "port_range": [22, 22], "source_network": "0.0.0.0/0"}.items() <= rules[0].items()
    web = {"protocol": "tcp", "port_range": [8000, 8000], "source_network": "203.0.113.7", "description": "web"}
    put = data_of(call(fsim, "PUT", "/api/v1/firewall-rules", json={"data": [*rules, web]}))
    assert put[-1] == {**web, "source_network": "203.0.113.7/32"}  # no mask means /32
    assert data_of(call(fsim, "GET", "/api/v1/firewall-rulesets/global"))["rules"] == put
    bad_rules = [
        {"protocol": "icmp", "port_range": [1, 2], "source_network": "0.0.0.0/0", "description": ""},
        {"protocol": "udp", "source_network": "0.0.0.0/0", "description": ""},
        {"protocol": "tcp", "port_range": [1, 70000], "source_network": "0.0.0.0/0", "description": ""},
        {"protocol": "tcp", "port_range": [9, 1], "source_network": "0.0.0.0/0", "description": ""},
        {"protocol": "tcp", "port_range": [1, 2], "source_network": "fe80::/64", "description": ""},
        {"protocol": "gre", "source_network": "0.0.0.0/0", "description": ""},
    ]
    for rule in bad_rules:
        resp = call(fsim, "PUT", "/api/v1/firewall-rules", json={"data": [rule]})
        assert error_of(resp, 400) == "global/invalid-parameters", rule
    patched = call(fsim, "PATCH", "/api/v1/firewall-rulesets/global", json={"rules": rules})
    assert data_of(patched)["rules"] == rules == data_of(call(fsim, "GET", "/api/v1/firewall-rules"))

    # rulesets: per region, attached at launch, in use until the instance is gone
    body = {"name": "train", "region": REGION, "rules": [web]}
    ruleset = data_of(call(fsim, "POST", "/api/v1/firewall-rulesets", json=body))
    elsewhere = data_of(call(fsim, "POST", "/api/v1/firewall-rulesets", json={**body, "region": OTHER_REGION}))
    unknown = call(fsim, "GET", "/api/v1/firewall-rulesets/{id}", ids={"id": "0" * 32})
    assert error_of(unknown, 404) == "global/object-does-not-exist"
    renamed = call(fsim, "PATCH", "/api/v1/firewall-rulesets/{id}", ids={"id": ruleset["id"]}, json={"name": "t2"})
    assert data_of(renamed)["name"] == "t2"

    wrong = launch(fsim, key_name, file_system_names=["far"])
    assert error_of(wrong, 400) == "instance-operations/launch/file-system-in-wrong-region"
    wrong = launch(fsim, key_name, firewall_rulesets=[{"id": elsewhere["id"]}])
    assert error_of(wrong, 400) == "global/invalid-parameters"

    tags = [{"key": "trainyard:run", "value": "r-1"}]
    iid = data_of(
        launch(
            fsim,
            key_name,
            name="fidelity-storage",
            tags=tags,
            image={"id": here[0]["id"]},
            file_system_names=["shared"],
            file_system_mounts=[{"mount_point": "/data/shared", "file_system_id": fs["id"]}],
            firewall_rulesets=[{"id": ruleset["id"]}],
        )
    )["instance_ids"][0]
    inst = data_of(call(fsim, "GET", "/api/v1/instances/{id}", ids={"id": iid}))
    assert inst["tags"] == tags and inst["file_system_names"] == ["shared"]
    assert inst["file_system_mounts"] == [{"mount_point": "/data/shared", "file_system_id": fs["id"]}]
    assert inst["firewall_rulesets"] == [{"id": ruleset["id"]}]
    assert data_of(call(fsim, "GET", "/api/v1/firewall-rulesets/{id}", ids={"id": ruleset["id"]}))["instance_ids"] == [
        iid
    ]
    assert [f["is_in_use"] for f in data_of(call(fsim, "GET", "/api/v1/file-systems")) if f["id"] == fs["id"]] == [True]
    in_use = call(fsim, "DELETE", "/api/v1/filesystems/{id}", ids={"id": fs["id"]})
    assert error_of(in_use, 400) == "filesystems/filesystem-in-use"
    in_use = call(fsim, "DELETE", "/api/v1/firewall-rulesets/{id}", ids={"id": ruleset["id"]})
    assert error_of(in_use, 400) == "firewall-rulesets/firewall-ruleset-in-use"
    # ?cluster_id= lists only that 1-Click Cluster's members: this instance is in none
    assert [i["id"] for i in data_of(call(fsim, "GET", "/api/v1/instances"))] == [iid]
    assert data_of(call(fsim, "GET", "/api/v1/instances", params={"cluster_id": "c" * 32})) == []
    # rename (POST /instances/{id})
    renamed = call(fsim, "POST", "/api/v1/instances/{id}", ids={"id": iid}, json={"name": "renamed"})
    assert data_of(renamed)["name"] == "renamed"
    too_long = call(fsim, "POST", "/api/v1/instances/{id}", ids={"id": iid}, json={"name": "n" * 65})
    assert error_of(too_long, 400) == "global/invalid-parameters"
    gone = call(fsim, "POST", "/api/v1/instances/{id}", ids={"id": "0" * 32}, json={"name": "x"})
    assert error_of(gone, 404) == "global/object-does-not-exist"
    restart = call(fsim, "POST", "/api/v1/instance-operations/restart", json={"instance_ids": ["0" * 32]})
    assert error_of(restart, 404) == "global/object-does-not-exist"

    data_of(call(fsim, "POST", "/api/v1/instance-operations/terminate", json={"instance_ids": [iid]}))
    wait_for(fsim, iid, "terminated")
    restart = call(fsim, "POST", "/api/v1/instance-operations/restart", json={"instance_ids": [iid]})
    assert error_of(restart, 409) == "global/conflict"  # only a running instance restarts
    assert data_of(call(fsim, "DELETE", "/api/v1/filesystems/{id}", ids={"id": fs["id"]})) == {
        "deleted_ids": [fs["id"]]
    }
    assert data_of(call(fsim, "DELETE", "/api/v1/firewall-rulesets/{id}", ids={"id": ruleset["id"]})) == {}
    assert [r["id"] for r in data_of(call(fsim, "GET", "/api/v1/firewall-rulesets"))] == [elsewhere["id"]]
    assert data_of(call(fsim, "GET", "/api/v1/instance-types"))[TYPE]["instance_type"]["name"] == TYPE


def test_log_in_as_ubuntu_with_an_rfc4716_key_and_restart(fsim, key_pair, ssh_port, tmp_path):
    """Lambda's user logs in with the key as Lambda stores it; a restart kills every process and
    keeps the disk, the file system and the host key."""
    health = HTTP.get(fsim.url + "/sim/v1/health").json()
    me = getpass.getuser()
    if not can_add_lambda_user():
        assert health["ssh_users"] == [me]
        pytest.skip("machines accept `ubuntu` only where the simulator runs as root (as on the dev and CI machines)")
    assert health["ssh_user"] == "ubuntu" and health["ssh_users"] == ["ubuntu", me]
    b64 = key_pair[1].split()[1]
    rfc = "\n".join(["---- BEGIN SSH2 PUBLIC KEY ----", *[b64[i : i + 70] for i in range(0, len(b64), 70)]])
    rfc += "\n---- END SSH2 PUBLIC KEY ----\n"
    data_of(call(fsim, "POST", "/api/v1/ssh-keys", json={"name": "rfc", "public_key": rfc}))
    fs = data_of(call(fsim, "POST", "/api/v1/filesystems", json={"name": "persist", "region": REGION}))
    iid = data_of(launch(fsim, "rfc", file_system_names=["persist"]))["instance_ids"][0]
    inst = wait_for(fsim, iid, "active")
    known = PinnedHostKeys(tmp_path / "known_hosts")

    def node(user: str) -> SshNode:
        return SshNode.to(SshTarget(inst["ip"], user, key_pair[0], ssh_port), known, timeouts=FAST_SSH)

    ubuntu = node("ubuntu")
    try:
        assert ubuntu.run("echo $USER; pwd").split() == ["ubuntu", ubuntu.run("echo $HOME").strip()]
        ubuntu.run("echo kept > on-disk.txt && echo shared > lambda/nfs/persist/hello.txt")
        pid = ubuntu.start_detached("sleep 600", workdir=".")
    finally:
        ubuntu.close()
    assert (fs_dir := fsim.cloud.filesystems.items[fs["id"]].path / "hello.txt").read_text() == "shared\n"
    assert node(me).run("echo $USER").strip() == me  # the simulator's own user still works
    assert pid_alive(pid)

    restarted = call(fsim, "POST", "/api/v1/instance-operations/restart", json={"instance_ids": [iid]})
    assert [i["status"] for i in data_of(restarted)["restarted_instances"]] == ["active"]
    assert not pid_alive(pid)  # a reboot ends every process
    again = node("ubuntu")  # same host key: the pinned key still matches
    try:
        assert again.run("cat on-disk.txt lambda/nfs/persist/hello.txt").split() == ["kept", "shared"]
    finally:
        again.close()
    data_of(call(fsim, "POST", "/api/v1/instance-operations/terminate", json={"instance_ids": [iid]}))
    wait_for(fsim, iid, "terminated")
    assert fs_dir.exists()  # the file system outlives the instance


def test_every_operation_of_the_spec_is_served(fsim):
    own = fsim.app.openapi()["paths"]  # the simulator's routes, as FastAPI publishes them
    served = {(m, re.sub(r"\{[a-z_]+\}", "{id}", p)) for p, ops in own.items() for m in ops}
    in_spec = {
        (m, p) for p, ops in SPEC["paths"].items() for m in ops if m in ("get", "post", "put", "patch", "delete")
    }
    assert len(in_spec) == 24 and in_spec <= served
    wrong_key = HTTP.get(fsim.url + "/api/v1/instances", headers={"Authorization": "Bearer not-the-key"})
    check_against_spec("GET", "/api/v1/instances", wrong_key)
    assert wrong_key.status_code == 401 and wrong_key.json()["error"]["code"] == "global/invalid-api-key"
    # a wrong method gets Lambda's envelope and the Allow header, as HTTP says
    resp = HTTP.put(fsim.url + "/api/v1/ssh-keys")
    assert resp.status_code == 405 and set(resp.headers["allow"].split(", ")) == {"GET", "POST"}
    assert resp.json()["error"]["code"] == "global/invalid-parameters"
