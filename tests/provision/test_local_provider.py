"""The local provider keeps the provider rules the controller relies on (provision/base.py)."""

from __future__ import annotations

import sys

import pytest

from provision.base import InstanceStatus
from provision.errors import InvalidRequest, NotFound
from provision.local import LocalProvider
from provision.node import LocalNode


@pytest.fixture
def provider(tmp_path) -> LocalProvider:
    return LocalProvider(tmp_path / "runs", python=sys.executable, stop_grace_s=2)


def test_one_free_instance_type_always_has_capacity(provider):
    (t,) = provider.instance_types()
    assert (t.name, t.price_cents_per_hour, t.regions_with_capacity) == ("local", 0, ("local",))


def test_launch_get_list_and_find_by_name(provider, tmp_path):
    assert provider.list() == [] and provider.find_by_name("ty-abc-0") is None
    inst = provider.launch(name="ty-abc-0", instance_type="local", region="local")
    assert (inst.id, inst.name, inst.status) == ("ty-abc-0", "ty-abc-0", InstanceStatus.active)
    assert inst.extra["workdir"] == str(tmp_path / "runs" / "ty-abc-0")
    assert inst.extra["python"] == sys.executable
    assert provider.get("ty-abc-0") == inst
    assert provider.get("ty-nope-0") is None
    assert provider.get("../escape") is None
    assert [i.id for i in provider.list()] == ["ty-abc-0"]
    assert provider.find_by_name("ty-abc-0") == inst
    (tmp_path / "runs" / "stray").mkdir()  # a directory that is not an instance is ignored
    assert [i.id for i in provider.list()] == ["ty-abc-0"]


def test_bad_launch_requests_are_refused(provider):
    with pytest.raises(InvalidRequest, match="not a valid directory name"):
        provider.launch(name="../x", instance_type="local", region="local")
    with pytest.raises(InvalidRequest, match="one instance type"):
        provider.launch(name="ty-a-0", instance_type="gpu_8x_h100_sxm5", region="local")


def test_a_node_runs_the_trainers_python_with_the_source_on_its_path(provider):
    inst = provider.launch(name="ty-py-0", instance_type="local", region="local")
    node = provider.node(inst)
    assert isinstance(node, LocalNode)
    env = " ".join(f"{k}={v}" for k, v in inst.extra["env"].items())
    out = node.run(f"env {env} {inst.extra['python']} -c 'import trainer, provision; print(trainer.__name__)'")
    assert out.strip() == "trainer"


def test_terminate_stops_processes_keeps_the_directory_and_is_idempotent(provider, tmp_path):
    inst = provider.launch(name="ty-t-0", instance_type="local", region="local")
    node = provider.node(inst)
    wd = inst.extra["workdir"]
    node.start_detached("sleep 300", workdir=wd, name="train")
    node.start_detached("sleep 300", workdir=wd, name="eval")
    node.start_detached("sleep 300", workdir=wd, name="ift")  # a cancel during the fine-tune
    (tmp_path / "runs" / "ty-t-0" / "train.log").write_text("kept\n")

    provider.terminate(["ty-t-0", "ty-never-0"])
    assert not node.status(workdir=wd, name="train").running
    assert not node.status(workdir=wd, name="eval").running
    assert not node.status(workdir=wd, name="ift").running
    gone = provider.get("ty-t-0")
    assert gone.status == InstanceStatus.terminated and gone.status.is_gone
    assert (tmp_path / "runs" / "ty-t-0" / "train.log").read_text() == "kept\n"
    assert provider.find_by_name("ty-t-0") is None
    provider.terminate(["ty-t-0"])  # again: nothing to do
    with pytest.raises(NotFound):
        provider.node(gone)
