"""Pinned SSH host keys: a known_hosts file that trainyard keeps, and the paramiko policy using it.

Fabric's default (paramiko's `AutoAddPolicy`) accepts whatever key a host presents, every time,
which makes a man-in-the-middle invisible. Here instead:

- The first time we reach an address (`host`, or `[host]:port` off port 22) its key is stored
  in our file and logged: trust on first use, recorded.
- Later, the same address must present that key. A different key raises `HostKeyMismatch`
  naming both fingerprints and the file to edit. Nothing is replaced silently.
- A provider that gives a machine back calls `forget(host, port)`, because clouds hand the same
  address to a new machine (with a new key) later, and that one is a first sight again.
- That forgets the pin only in the file of the process that gave the machine back. Every other
  process (a worker on another host, with a file of its own) learns of the new machine from the
  provider's API instead: a session to a rented machine names it (`bind(host, port, machine)`,
  the provider's instance id), and pins taken at that address for another machine are dropped.
  The API is authenticated over HTTPS, so a man-in-the-middle on the SSH path cannot fake it.

The file is OpenSSH's known_hosts format, so `ssh -o UserKnownHostsFile=<file>` can use it too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from pathlib import Path

import paramiko

from provision.errors import HostKeyMismatch
from provision.state_files import atomic_write_text, locked

log = logging.getLogger("provision.transport")


def host_key_name(host: str, port: int) -> str:
    """The name OpenSSH and paramiko file an address under."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """`ED25519 SHA256:...`, as `ssh-keygen -l` prints it."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    kind = key.get_name().replace("ssh-", "").upper()
    return f"{kind} SHA256:{digest}"


class PinnedHostKeys:
    """The host keys trainyard has pinned, in one known_hosts file. Safe across processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"PinnedHostKeys({str(self.path)!r})"

    # -- reading ----------------------------------------------------------------------------------
    def _load(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        if self.path.exists():
            keys.load(str(self.path))
        return keys

    def keys_for(self, name: str) -> list[paramiko.PKey]:
        """Every key pinned for an address name (see `host_key_name`)."""
        entry = self._load().lookup(name)
        return list(entry.values()) if entry else []

    # -- changing ---------------------------------------------------------------------------------
    def check_or_pin(self, name: str, key: paramiko.PKey) -> None:
        """Accept `key` for `name` if it is the pinned one, or pin it if there is none yet.

        Raises `HostKeyMismatch` when a different key is pinned for that name (of any type).
        """
        with locked(self.path):
            keys = self._load()
            pinned = keys.lookup(name)
            if pinned:
                if any(k == key for k in pinned.values()):
                    return
                raise self.mismatch(name, next(iter(pinned.values())), key)
            keys.add(name, key.get_name(), key)
            self._save(keys)
        log.info("ssh: first sight of %s, pinned its host key %s in %s", name, fingerprint(key), self.path)

    def forget(self, host: str, port: int = 22) -> bool:
        """Drop the pinned key(s) for an address (the machine there was given back)."""
        name = host_key_name(host, port)
        with locked(self.path):
            removed = self._drop(name)
        if removed:
            log.info("ssh: forgot the pinned host key of %s", name)
        return removed

    def bind(self, host: str, port: int, machine: str) -> bool:
        """The provider says `machine` (its instance id) is at this address now. When the pins
        there were taken for another machine, they are dropped (the address was given to a new
        machine; see the module doc) and True is returned. Pins from before any machine was
        named for the address are kept: nothing says they belong to another machine."""
        name = host_key_name(host, port)
        with locked(self.path):
            machines = self._machines()
            before = machines.get(name)
            if before == machine:
                return False
            replaced = before is not None and self._drop(name)
            machines[name] = machine
            atomic_write_text(self._machines_path, json.dumps(machines, indent=1, sort_keys=True))
        if replaced:
            log.info("ssh: %s is machine %s now (was %s): forgot its old pinned host key", name, machine, before)
        return replaced

    @property
    def _machines_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.machines.json")

    def _machines(self) -> dict[str, str]:
        try:
            return dict(json.loads(self._machines_path.read_text()))
        except FileNotFoundError:
            return {}

    def _drop(self, name: str) -> bool:
        """Remove every pin of `name` (the caller holds the lock)."""
        keys = self._load()
        removed = False
        while True:
            try:
                del keys[name]
            except KeyError:
                break
            removed = True
        if removed:
            self._save(keys)
        return removed

    def _save(self, keys: paramiko.HostKeys) -> None:
        # HostKeys.save writes in place; write a sibling and rename so readers never see half a file
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys.save(str(tmp))
        tmp.chmod(0o600)
        tmp.replace(self.path)

    # -- paramiko glue ----------------------------------------------------------------------------
    def prepare(self, client: paramiko.SSHClient, host: str, port: int) -> None:
        """Make `client` check `host:port` against our pins only, and pin on first sight."""
        client.set_missing_host_key_policy(_PinPolicy(self))
        table = client.get_host_keys()
        table.clear()
        name = host_key_name(host, port)
        for key in self.keys_for(name):
            table.add(name, key.get_name(), key)

    def mismatch(self, name: str, pinned: paramiko.PKey, presented: paramiko.PKey) -> HostKeyMismatch:
        return HostKeyMismatch(
            f"SSH host key of {name} does not match the pinned one: pinned {fingerprint(pinned)}, "
            f"presented {fingerprint(presented)}. Refusing to connect: this may be a "
            f"man-in-the-middle, or the address now belongs to another machine. If the machine was "
            f"legitimately replaced, delete the line for {name} in {self.path}."
        )


class _PinPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko when the client's table has no key of the presented type for a host."""

    def __init__(self, store: PinnedHostKeys):
        self.store = store

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.store.check_or_pin(hostname, key)
