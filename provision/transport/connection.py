"""Fabric connections made safe: timeouts everywhere, pinned host keys, typed errors.

Fabric's defaults are not safe for a service: no connect timeout, no command timeout, host keys
auto-added (`AutoAddPolicy`), and `~/.ssh/config` and `~/.fabric.yaml` silently changing what a
connection does. `make_connection` builds a `fabric.Connection` that reads no config files, uses
only the given private key (no agent, no key search), has connect / banner / auth / channel and
command timeouts, and checks the host key against `PinnedHostKeys`.

`SshNode` is the `provision.node.Node` for such a connection. It opens the connection itself
before each operation so that connection failures come out typed: `HostKeyMismatch` (never
retried), `NodeUnreachable` (retryable), or `NodeError` (e.g. the key was refused). `wait_for_ssh`
retries opening until a deadline, which is how a caller waits for a booting machine.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection
from paramiko.config import SSHConfig

from provision.errors import HostKeyMismatch, NodeError, NodeUnreachable
from provision.node import DEFAULT_COMMAND_TIMEOUT, Node
from provision.transport.known_hosts import PinnedHostKeys, host_key_name

log = logging.getLogger("provision.transport")


@dataclass(frozen=True)
class SshTimeouts:
    """Seconds allowed for each phase of an SSH session."""

    connect_s: float = 10.0  # TCP connect
    banner_s: float = 15.0  # the server's SSH banner after connecting
    auth_s: float = 15.0  # public-key authentication
    channel_s: float = 30.0  # opening a channel (a command or SFTP)
    command_s: float = DEFAULT_COMMAND_TIMEOUT  # one command, unless the caller says otherwise
    keepalive_s: int = 15  # keepalive packets, so a dead peer is noticed on long commands


DEFAULT_SSH_TIMEOUTS = SshTimeouts()


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str
    key_file: Path
    port: int = 22
    #: the provider's id of the machine at this address (rented machines): a different one than
    #: its pins were taken for means a new machine there (PinnedHostKeys.bind)
    machine: str | None = None

    @property
    def label(self) -> str:
        return f"{self.user}@{host_key_name(self.host, self.port)}"


def make_connection(
    target: SshTarget, known_hosts: PinnedHostKeys, timeouts: SshTimeouts = DEFAULT_SSH_TIMEOUTS
) -> Connection:
    """A fabric `Connection` to `target` with timeouts and pinned host keys. Does not connect yet."""
    config = Config(
        ssh_config=SSHConfig(),  # an explicit empty ssh_config: ~/.ssh/config is not read
        lazy=True,  # no /etc/fabric.yaml, ~/.fabric.yaml or FABRIC_* environment variables
        overrides={
            "timeouts": {"command": timeouts.command_s},
            "run": {"in_stream": False},
            "load_ssh_configs": False,
        },
    )
    conn = Connection(
        host=target.host,
        user=target.user,
        port=target.port,
        config=config,
        forward_agent=False,
        connect_kwargs={
            "key_filename": [str(target.key_file)],
            "look_for_keys": False,
            "allow_agent": False,
            # here and not via connect_timeout=, which fabric truncates to whole seconds
            "timeout": timeouts.connect_s,
            "banner_timeout": timeouts.banner_s,
            "auth_timeout": timeouts.auth_s,
            "channel_timeout": timeouts.channel_s,
        },
    )
    known_hosts.prepare(conn.client, target.host, target.port)
    return conn


def open_connection(conn: Connection, known_hosts: PinnedHostKeys, *, keepalive_s: int = 15) -> None:
    """Open `conn` (no-op when open), translating failures into `provision.errors`."""
    if conn.is_connected:
        return
    label = f"{conn.user}@{host_key_name(conn.host, conn.port)}"
    # reload the pins each time: another process may have pinned or forgotten this address
    known_hosts.prepare(conn.client, conn.host, conn.port)
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        _close_quietly(conn)
        raise known_hosts.mismatch(host_key_name(conn.host, conn.port), exc.expected_key, exc.key) from None
    except HostKeyMismatch:
        _close_quietly(conn)
        raise
    except paramiko.AuthenticationException as exc:
        _close_quietly(conn)
        raise NodeError(f"{label}: the key was refused ({exc})") from None
    except (OSError, socket.timeout, EOFError, paramiko.SSHException) as exc:
        _close_quietly(conn)
        raise NodeUnreachable(f"{label}: cannot open SSH: {type(exc).__name__}: {exc}") from None
    if conn.transport is not None and keepalive_s:
        conn.transport.set_keepalive(int(keepalive_s))


def wait_for_ssh(
    conn: Connection, known_hosts: PinnedHostKeys, *, deadline: float, interval_s: float = 2.0, keepalive_s: int = 15
) -> None:
    """Retry opening `conn` until it works or `deadline` (a `time.monotonic()` value) passes.

    Blocks. A refused key is retried too (a cloud machine installs the key while it boots).
    `HostKeyMismatch` is raised at once; running out of time raises `NodeUnreachable` with the
    last failure.
    """
    last: Exception | None = None
    attempts = 0
    while True:
        attempts += 1
        try:
            open_connection(conn, known_hosts, keepalive_s=keepalive_s)
            if attempts > 1:
                log.info("ssh: %s@%s answered after %d attempts", conn.user, conn.host, attempts)
            return
        except HostKeyMismatch:
            raise
        except NodeError as exc:
            last = exc
        left = deadline - time.monotonic()
        if left <= 0:
            raise NodeUnreachable(
                f"{conn.user}@{host_key_name(conn.host, conn.port)}: no SSH after {attempts} attempts: {last}"
            ) from None
        time.sleep(min(interval_s, left))


def _close_quietly(conn: Connection) -> None:
    # closing a half-open client may fail in many ways; none matters here
    with contextlib.suppress(Exception):
        conn.close()


class SshNode(Node):
    """A `Node` over a pinned-host-key fabric `Connection`.

    Each operation first makes sure the connection is open (raising `HostKeyMismatch`,
    `NodeUnreachable` or `NodeError`), then blocks for one command or transfer with its timeout.
    `close` is safe to call more than once; the next operation reconnects.
    """

    def __init__(
        self,
        connection: Connection,
        known_hosts: PinnedHostKeys,
        *,
        label: str | None = None,
        timeouts: SshTimeouts = DEFAULT_SSH_TIMEOUTS,
    ):
        super().__init__(
            connection, label=label or f"{connection.user}@{connection.host}", command_timeout=timeouts.command_s
        )
        self.known_hosts = known_hosts
        self.timeouts = timeouts

    @classmethod
    def to(
        cls,
        target: SshTarget,
        known_hosts: PinnedHostKeys,
        *,
        label: str | None = None,
        timeouts: SshTimeouts = DEFAULT_SSH_TIMEOUTS,
    ) -> "SshNode":
        if target.machine is not None:
            known_hosts.bind(target.host, target.port, target.machine)
        return cls(
            make_connection(target, known_hosts, timeouts), known_hosts, label=label or target.label, timeouts=timeouts
        )

    def connect(self) -> None:
        open_connection(self.runner, self.known_hosts, keepalive_s=self.timeouts.keepalive_s)

    def wait_for_ssh(self, deadline: float, *, interval_s: float = 2.0) -> None:
        """Block until SSH answers or `deadline` (`time.monotonic()`) passes (`NodeUnreachable`)."""
        wait_for_ssh(
            self.runner,
            self.known_hosts,
            deadline=deadline,
            interval_s=interval_s,
            keepalive_s=self.timeouts.keepalive_s,
        )

    def run(self, command: str, *, timeout: float | None = None, check: bool = True) -> str:
        self.connect()
        return super().run(command, timeout=timeout, check=check)

    def put(self, local_path: str | Path, remote_path: str) -> None:
        self.connect()
        super().put(local_path, remote_path)

    def get(self, remote_path: str, local_path: str | Path) -> None:
        self.connect()
        super().get(remote_path, local_path)

    def close(self) -> None:
        _close_quietly(self.runner)
