"""Bootstrap over real SSH on a simulated instance: wheel cache, venv on the preinstalled torch,
data, idempotence, and a changed host key refused.

The simulated machines are this machine, whose torch lives only in this checkout's `.venv` (its
base interpreter has none). So the node interpreter is that base interpreter and
`torch_site_packages` points the node venv at the `.venv`'s site-packages, the way a node whose
torch sits in a separate environment is set up.
"""

from __future__ import annotations

import getpass
import importlib.util
import sys
import time
from pathlib import Path

import pytest

from provision.base import InstanceStatus
from provision.bootstrap import BootstrapSpec, bootstrap
from provision.errors import HostKeyMismatch
from provision.lambda_cloud import LambdaProvider
from provision.placement import place
from provision.transport.connection import SshTimeouts
from provision.transport.known_hosts import PinnedHostKeys
from provision.wheels import WheelCache

#: the interpreter of the simulated nodes, and the folder holding the preinstalled torch
NODE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")
TORCH_SITE = str(Path(importlib.util.find_spec("torch").origin).parent.parent)
#: a small slice of the built-in corpus: enough for tiny trainings, quick to tokenise
PREPARE_ARGS = ("--max-tokens", "60000")


@pytest.fixture
def provider(client, key_pair, ssh_port, tmp_path):
    p = LambdaProvider(
        client,
        ssh_key_name="trainyard-bootstrap",
        private_key_file=key_pair[0],
        known_hosts=PinnedHostKeys(tmp_path / "known_hosts"),
        ssh_user=getpass.getuser(),
        ssh_port=ssh_port,
        ssh_timeouts=SshTimeouts(connect_s=2, command_s=60),
    )
    p.ensure_ssh_key(key_pair[1])
    return p


def active_node(provider, name):
    inst = place(provider, name=name, instance_types=["cpu_4x_general", "gpu_1x_a10"], timeout_s=10, poll_s=0.2)
    deadline = time.monotonic() + 15
    while (inst := provider.get(inst.id)).status is not InstanceStatus.active:
        assert time.monotonic() < deadline, inst
        time.sleep(0.05)
    node = provider.node(inst)
    node.wait_for_ssh(time.monotonic() + 15, interval_s=0.1)
    return inst, node


def test_bootstrap_builds_once_installs_and_is_idempotent(provider, admin, tmp_path):
    inst, node = active_node(provider, "ty-boot-0")
    spec = BootstrapSpec(
        run_dir="runs/r1", python=NODE_PYTHON, torch_site_packages=TORCH_SITE, prepare_args=PREPARE_ARGS
    )
    cache = tmp_path / "wheels"
    events: list[str] = []

    cold = bootstrap(node, spec, wheels=WheelCache(cache), on_event=events.append)
    assert cold.done == ("wheel", "upload", "venv", "install", "data", "run_dir")
    assert cold.installed_requirements == ()  # everything importable already: nothing downloaded
    assert cold.venv == f"{cold.home}/trainyard/venv" and cold.torch_version
    assert node.run(f"cd / && {cold.python} -c 'import trainer; print(trainer.__file__)'").startswith(cold.venv)
    assert node.exists(f"{cold.data_dir}/manifest.json") and node.exists(cold.run_dir)
    assert any("created venv" in e for e in events)

    again = bootstrap(node, spec, wheels=WheelCache(cache))
    assert again.no_op and set(again.timings) == {"wheel", "probe"}

    # a fresh node (another root) with the cache warm: the wheel is reused, not rebuilt; and the
    # data goes up as a prepared folder (here: the one the first bootstrap prepared, fetched back)
    local_data = tmp_path / "data"
    local_data.mkdir()
    for name in node.run(f"ls {cold.data_dir}").split():
        node.get(f"{cold.data_dir}/{name}", local_data / name)
    warm = bootstrap(
        node,
        BootstrapSpec(
            run_dir="runs/r2",
            root="trainyard2",
            python=NODE_PYTHON,
            torch_site_packages=TORCH_SITE,
            data_local_dir=local_data,
        ),
        wheels=WheelCache(cache),
    )
    assert "wheel" not in warm.done and warm.wheel_key == cold.wheel_key and "data" in warm.done
    assert node.run(f"cat {warm.data_dir}/manifest.json") == (local_data / "manifest.json").read_text()
    assert warm.timings["wheel"] < cold.timings["wheel"] / 5
    assert len(list(cache.glob("*/*.whl"))) == 1

    # the node changed its host key at the same address: refused, never trusted anew
    node.close()
    admin.post("/sim/v1/faults", json={"kind": "rotate_host_key", "instance_id": inst.id}).raise_for_status()
    with pytest.raises(HostKeyMismatch):
        bootstrap(node, spec, wheels=WheelCache(cache))


def test_changed_trainer_sources_get_a_new_wheel(tmp_path):
    src = tmp_path / "src"
    (src / "trainer").mkdir(parents=True)
    (src / "trainer" / "__init__.py").write_text('"""t"""\n')
    (src / "pyproject.toml").write_text(
        '[project]\nname = "trainyard"\nversion = "0.1.0"\n[project.optional-dependencies]\n'
        'trainer = ["pyyaml>=6"]\n[project.scripts]\ntrainyard = "orchestrator.cli.main:app"\n'
        '[tool.setuptools.packages.find]\ninclude = ["trainer*"]\n'
    )
    cache = WheelCache(tmp_path / "cache", source_root=src)
    first = cache.get()
    assert first.built and cache.get().built is False
    (src / "trainer" / "__pycache__").mkdir()
    (src / "trainer" / "__pycache__" / "x.pyc").write_bytes(b"noise")
    assert cache.key() == first.key  # bytecode is not source
    (src / "trainer" / "extra.py").write_text("X = 1\n")
    second = cache.get()
    assert second.built and second.key != first.key and cache.requirements() == ["pyyaml>=6"]
