"""LocalNode: the shell-command node that the local provider uses and the SSH providers share."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from provision.errors import NodeError
from provision.node import LocalNode


@pytest.fixture
def node() -> LocalNode:
    return LocalNode(label="test", command_timeout=20)


def _wait(predicate, timeout: float = 10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _pids_in_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            found.append(int(entry.name))
    return found


def test_run_returns_stdout_and_raises_on_failure(node):
    assert node.run("echo hello").strip() == "hello"
    with pytest.raises(NodeError, match=r"command failed \(3\).*boom"):
        node.run("echo boom >&2; exit 3")
    assert node.run("exit 3", check=False) == ""


def test_run_times_out_as_node_error(node):
    with pytest.raises(NodeError, match="test:"):
        node.run("sleep 5", timeout=0.5)


def test_files(node, tmp_path):
    d = str(tmp_path / "a b")  # a space: paths must be quoted
    node.mkdir(d)
    assert node.exists(d)
    assert not node.exists(d + "/nope")
    assert node.read_text(d + "/nope") is None
    (tmp_path / "src.txt").write_text("payload\n")
    node.put(tmp_path / "src.txt", d + "/copy.txt")
    assert node.read_text(d + "/copy.txt") == "payload\n"
    node.get(d + "/copy.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "payload\n"
    with pytest.raises(NodeError):
        node.get(d + "/missing", tmp_path / "x")


def test_json_and_private_files(node, tmp_path):
    d = tmp_path / "a b"
    node.mkdir(str(d))
    node.write_json(str(d / "c.json"), {"lr": 0.1})
    assert node.read_json(str(d / "c.json")) == {"lr": 0.1} and not (d / "c.json.tmp").exists()
    assert node.read_json_list(str(d / "c.json")) is None  # an object, not a list
    node.write_json(str(d / "answers.json"), [1, 2])
    assert node.read_json_list(str(d / "answers.json")) == [1, 2] and node.read_json(str(d / "answers.json")) is None
    (d / "half.json").write_text('{"cut off')
    assert node.read_json(str(d / "half.json")) is None and node.read_json(str(d / "missing.json")) is None
    secret = d / "new" / "creds"  # its folder is made too
    node.write_private(str(secret), "[default]\nkey = s\n")
    assert secret.read_text() == "[default]\nkey = s\n" and secret.stat().st_mode & 0o777 == 0o600
    assert (secret.parent.stat().st_mode & 0o077) == 0  # made under umask 077


def test_detached_process_reports_its_exit_code(node, tmp_path):
    wd = str(tmp_path)
    pid = node.start_detached("echo started; sleep 0.3; exit 3", workdir=wd, name="job")
    assert pid > 0 and (tmp_path / "job.pid").read_text().strip() == str(pid)
    status = _wait(lambda: (s := node.status(workdir=wd, name="job")).exit_code is not None and s)
    assert status.running is False and status.exit_code == 3
    assert "started" in (tmp_path / "job.log").read_text()


def test_status_of_a_never_started_process_is_gone(node, tmp_path):
    status = node.status(workdir=str(tmp_path), name="never")
    assert status.running is False and status.exit_code is None


def test_detached_process_outlives_the_command_and_is_running(node, tmp_path):
    wd = str(tmp_path)
    node.start_detached("sleep 30", workdir=wd, name="long")
    try:
        assert node.status(workdir=wd, name="long").running
    finally:
        node.stop(workdir=wd, name="long", grace_s=2)


def test_stop_kills_the_whole_group_and_is_idempotent(node, tmp_path):
    wd = str(tmp_path)
    # a child that ignores SIGTERM: stop must escalate to SIGKILL after the grace period
    pid = node.start_detached("sleep 60 & (trap '' TERM; sleep 60) & wait", workdir=wd, name="grp")
    _wait(lambda: len(_pids_in_group(pid)) >= 3)
    t0 = time.time()
    node.stop(workdir=wd, name="grp", grace_s=1)
    assert time.time() - t0 < 5
    assert _pids_in_group(pid) == []
    status = node.status(workdir=wd, name="grp")
    assert status.running is False and status.exit_code is None  # killed: no exit code written
    node.stop(workdir=wd, name="grp", grace_s=1)  # again: nothing to do, no error
    node.stop(workdir=wd, name="never-started", grace_s=1)


def test_stop_returns_at_once_when_the_process_exits_on_sigterm(node, tmp_path):
    wd = str(tmp_path)
    node.start_detached("sleep 60", workdir=wd, name="quick")
    t0 = time.time()
    node.stop(workdir=wd, name="quick", grace_s=10)
    assert time.time() - t0 < 3  # the group is gone (its leader a zombie at most): no waiting


def test_restart_appends_to_the_log_and_clears_the_old_exit_code(node, tmp_path):
    wd = str(tmp_path)
    node.start_detached("echo one; exit 1", workdir=wd, name="r")
    _wait(lambda: node.status(workdir=wd, name="r").exit_code == 1)
    node.start_detached("echo two; sleep 0.5", workdir=wd, name="r")
    assert node.status(workdir=wd, name="r").exit_code is None
    _wait(lambda: node.status(workdir=wd, name="r").exit_code == 0)
    assert (tmp_path / "r.log").read_text().split() == ["one", "two"]


def test_read_from_returns_whole_lines_and_advances_by_bytes(node, tmp_path):
    f = tmp_path / "m.jsonl"
    assert node.read_from(str(f), 0) == ("", 0)  # missing file reads as empty
    f.write_bytes("α line one\nline two\npart".encode())
    text, off = node.read_from(str(f), 0)
    assert text == "α line one\nline two\n"
    assert off == len("α line one\nline two\n".encode())
    assert node.read_from(str(f), off) == ("", off)  # the partial line waits
    with open(f, "ab") as fh:
        fh.write(b"ial\n")
    text, off2 = node.read_from(str(f), off)
    assert text == "partial\n" and off2 == os.path.getsize(f)
    # a small max_bytes still returns only whole lines
    text, off3 = node.read_from(str(f), 0, max_bytes=15)
    assert text == "α line one\n" and off3 == len("α line one\n".encode())
