"""A session on one machine: run commands, move and write files, start the trainer detached, read its
output.

Every operation is a plain shell command through a *runner* with Fabric's API (`run`, `put`,
`get`): a `fabric.Connection` for SSH hosts, or invoke's local `Context` for this machine (see
`LocalNode`). So the local provider exercises the very code the SSH providers use.

Why detached: the trainer must survive the SSH connection dropping, so it is started with `setsid
nohup`, its pid written to a file, and its exit code written to another file when it ends. The
controller then polls (`status`) instead of holding a connection open.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from provision.errors import NodeError, ProvisionError

#: seconds any single command may take unless the caller says otherwise
DEFAULT_COMMAND_TIMEOUT = 60

_J = TypeVar("_J", dict, list)  # what a JSON file read from a node may hold


def _alive(pid: str) -> str:
    """Shell test: is process `pid` alive (exists and is not a zombie)?"""
    return f"ps -o stat= -p {pid} 2>/dev/null | grep -qv '^Z'"


def _session_alive(sid: str) -> str:
    """Shell test: does session `sid` have a live (non-zombie) member?"""
    return f"ps -eo sid=,stat= 2>/dev/null | awk -v s={sid} '$1 == s && $2 !~ /^Z/ {{f=1}} END {{exit !f}}'"


#: the detached processes a run starts in its run directory (Node.start_detached names), which
#: ending a run on a machine that stays up (local, the ssh provider's hosts) must stop
RUN_PROCESSES = ("prepare", "train", "eval", "ift")


@dataclass(frozen=True)
class ProcessStatus:
    running: bool
    exit_code: int | None  # None while running, or when it died without writing one (killed)


class Node:
    """Drives one machine through a Fabric-compatible runner. Methods block for one command."""

    def __init__(self, runner: Any, *, label: str, command_timeout: float = DEFAULT_COMMAND_TIMEOUT):
        self.runner = runner
        self.label = label
        self.command_timeout = command_timeout

    # -- commands ---------------------------------------------------------------------------------
    def run(self, command: str, *, timeout: float | None = None, check: bool = True) -> str:
        """Run `command` with bash; return stdout. Raises NodeError on a non-zero exit when `check`."""
        try:
            result = self.runner.run(
                command,
                hide=True,
                warn=True,
                in_stream=False,
                timeout=timeout or self.command_timeout,
            )
        except ProvisionError:  # already typed (HostKeyMismatch, NodeUnreachable): keep it
            raise
        except Exception as exc:  # invoke's CommandTimedOut, paramiko's socket errors, ...
            raise NodeError(f"{self.label}: {type(exc).__name__}: {exc}".strip()) from exc
        if check and result.exited != 0:
            tail = (result.stderr or result.stdout or "").strip().splitlines()[-5:]
            raise NodeError(f"{self.label}: command failed ({result.exited}): {' | '.join(tail)}")
        return result.stdout

    def close(self) -> None:
        """Release the connection, if the runner holds one. Safe to call more than once; the
        next operation reconnects."""

    def put(self, local_path: str | Path, remote_path: str) -> None:
        try:
            self.runner.put(str(local_path), remote=remote_path)
        except ProvisionError:
            raise
        except Exception as exc:
            raise NodeError(f"{self.label}: upload of {local_path} failed: {exc}") from exc

    def get(self, remote_path: str, local_path: str | Path) -> None:
        try:
            self.runner.get(remote_path, local=str(local_path))
        except ProvisionError:
            raise
        except Exception as exc:
            raise NodeError(f"{self.label}: download of {remote_path} failed: {exc}") from exc

    def mkdir(self, path: str) -> None:
        self.run(f"mkdir -p {shlex.quote(path)}")

    def exists(self, path: str) -> bool:
        return self.run(f"test -e {shlex.quote(path)} && echo yes || echo no").strip() == "yes"

    def read_text(self, path: str) -> str | None:
        out = self.run(f"cat {shlex.quote(path)} 2>/dev/null || printf '\\0missing'", check=False)
        return None if out.endswith("\0missing") else out

    # -- files the service writes and reads ------------------------------------------------------
    def read_json(self, path: str) -> dict | None:
        """A JSON file holding an object, or None if missing or not one."""
        return self._read_json_as(path, dict)

    def read_json_list(self, path: str) -> list | None:
        """A JSON file holding a list (e.g. trainer.ift's answers.json), or None if missing or not one."""
        return self._read_json_as(path, list)

    def _read_json_as(self, path: str, kind: type[_J]) -> _J | None:
        text = self.read_text(path)
        if text is None:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:  # half a file, or not JSON: the caller treats it as absent
            return None
        return value if isinstance(value, kind) else None

    def write_json(self, path: str, value: dict | list) -> None:
        """Replace `path` with `value` as JSON; a reader never sees half a file (sibling, then rename)."""
        tmp = path + ".tmp"
        self._upload_text(json.dumps(value, indent=2), tmp)
        self.run(f"mv {shlex.quote(tmp)} {shlex.quote(path)}")

    def write_private(self, path: str, text: str) -> None:
        """Replace `path` with `text`, readable by its owner only (mode 600 from its first byte)."""
        q, tmp = shlex.quote, path + ".tmp"
        # created empty under umask 077 before any byte goes in, so the secret is never readable by others
        self.run(f"umask 077 && mkdir -p {q(posixpath.dirname(path) or '.')} && : > {q(tmp)}")
        self._upload_text(text, tmp)
        self.run(f"chmod 600 {q(tmp)} && mv {q(tmp)} {q(path)}")

    def _upload_text(self, text: str, remote_path: str) -> None:
        # through a local file because `put` is the one transfer every runner has (SFTP or a copy)
        fd, local = tempfile.mkstemp()
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            self.put(local, remote_path)
        finally:
            os.unlink(local)

    # -- the detached trainer ---------------------------------------------------------------------
    def start_detached(self, command: str, *, workdir: str, name: str = "train") -> int:
        """Start `command` in its own session, outliving this connection. Returns its pid.

        Writes `<name>.log` (stdout+stderr), `<name>.pid`, and `<name>.exit` when it ends.
        """
        wd = shlex.quote(workdir)
        # The subshell keeps `exit N` inside `command` from skipping the exit-code write. Each
        # statement is separate (`;`, not `&&`) so only the trainer goes to the background and
        # nothing holds this connection's stdout open. The log is appended to, so readers'
        # byte offsets stay valid across restarts.
        inner = f"({command}); echo $? > {name}.exit.tmp && mv {name}.exit.tmp {name}.exit"
        script = (
            f"cd {wd} || exit 1; rm -f {name}.exit; "
            f"setsid nohup bash -c {shlex.quote(inner)} >> {name}.log 2>&1 < /dev/null & "
            f"echo $! > {wd}/{name}.pid; cat {wd}/{name}.pid"
        )
        out = self.run(script).strip()
        try:
            return int(out.splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise NodeError(f"{self.label}: could not read the pid of {name!r}: {out!r}") from exc

    def status(self, *, workdir: str, name: str = "train") -> ProcessStatus:
        """Is the detached process still running, and if not, how did it end?"""
        wd = shlex.quote(workdir)
        # The exit file is the wrapper's last act, so it is checked first. A process that ended
        # is a zombie until someone reaps it, and where PID 1 does not reap orphans (containers
        # without an init) it stays one forever; `kill -0` succeeds on zombies, so liveness is
        # read from the process state instead. The exit file is read again after the liveness
        # test: a process that ends between the two tests is not "gone" (and started again).
        out = self.run(
            f"cd {wd} && pid=$(cat {name}.pid 2>/dev/null); "
            f"if [ -f {name}.exit ]; then echo exit $(cat {name}.exit); "
            f'elif [ -n "$pid" ] && {_alive("$pid")}; then echo running; '
            f"elif [ -f {name}.exit ]; then echo exit $(cat {name}.exit); else echo gone; fi"
        ).split()
        if out and out[0] == "running":
            return ProcessStatus(running=True, exit_code=None)
        if len(out) == 2 and out[0] == "exit" and out[1].lstrip("-").isdigit():
            return ProcessStatus(running=False, exit_code=int(out[1]))
        return ProcessStatus(running=False, exit_code=None)

    def stop(self, *, workdir: str, name: str = "train", grace_s: int = 10) -> None:
        """Stop the detached process's session: SIGTERM, then SIGKILL after `grace_s`. Idempotent.

        Signals go to the members of the session that `start_detached`'s setsid made (its id is
        the recorded pid), not to a process group of that number: long after the process ended,
        its pid may belong to an unrelated group leader (a CI job, a shell), which a stale pid
        file must never reach."""
        wd = shlex.quote(workdir)
        self.run(
            f'cd {wd} && pid=$(cat {name}.pid 2>/dev/null) && [ -n "$pid" ] || exit 0; '
            f"pkill -TERM -s $pid 2>/dev/null; "
            f"for i in $(seq {grace_s * 5}); do {_session_alive('$pid')} || exit 0; sleep 0.2; done; "
            f"pkill -KILL -s $pid 2>/dev/null; exit 0",
            timeout=grace_s + 30,
        )

    def read_from(self, path: str, offset: int, max_bytes: int = 1 << 20) -> tuple[str, int]:
        """Complete lines of `path` from byte `offset`; returns (text, new offset).

        A trailing partial line is left for the next call, so a line being written is never
        half-read. A missing file reads as empty.
        """
        out = self.run(
            f"tail -c +{int(offset) + 1} {shlex.quote(path)} 2>/dev/null | head -c {int(max_bytes)}",
            check=False,
        )
        cut = out.rfind("\n")
        if cut < 0:
            return "", offset
        text = out[: cut + 1]
        return text, offset + len(text.encode("utf-8"))


class LocalNode(Node):
    """This machine, through invoke's local `Context` (same `run` API as Fabric's Connection)."""

    def __init__(self, *, label: str = "local", command_timeout: float = DEFAULT_COMMAND_TIMEOUT):
        from invoke import Context

        super().__init__(Context(), label=label, command_timeout=command_timeout)

    def put(self, local_path: str | Path, remote_path: str) -> None:
        try:
            shutil.copyfile(local_path, remote_path)
        except OSError as exc:
            raise NodeError(f"{self.label}: copy of {local_path} failed: {exc}") from exc

    def get(self, remote_path: str, local_path: str | Path) -> None:
        try:
            shutil.copyfile(remote_path, local_path)
        except OSError as exc:
            raise NodeError(f"{self.label}: copy of {remote_path} failed: {exc}") from exc
