"""The `ssh` provider: machines the user already has, listed by address in a config file.

There is no API to rent from, so "launch" claims a free listed host and "terminate" releases it.
Claims live in a small JSON state file (locked, written atomically), so several trainyard
processes share the hosts without claiming one twice, and a restarted service still knows which
host runs what. Each host is its own "instance type" unless the config groups them; the price is
what the config says (0 by default: the machine is already paid for).

Config (YAML or JSON):

    hosts:
      - name: box1            # unique
        host: 192.0.2.10
        port: 22
        user: ubuntu
        key_file: ~/.ssh/id_ed25519
        gpus: 8
        instance_type: gpu_8x_a100   # optional, default "ssh_<gpus>x"
        region: home                 # optional, default "ssh"
        price_cents_per_hour: 0      # optional

Releasing a host does not touch the machine: the caller stops what it started (`Node.stop`)
before terminating, since the machine is not ours to wipe.
"""

from __future__ import annotations

import builtins
import json
import secrets
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from provision.base import Instance, InstanceStatus, InstanceType, Provider
from provision.errors import InsufficientCapacity, InvalidRequest
from provision.state_files import locked, read_json, write_json
from provision.transport.connection import DEFAULT_SSH_TIMEOUTS, SshNode, SshTarget, SshTimeouts
from provision.transport.known_hosts import PinnedHostKeys


class SshHost(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1)
    key_file: Path
    gpus: int = Field(default=0, ge=0)
    instance_type: str | None = None
    region: str = "ssh"
    price_cents_per_hour: int = Field(default=0, ge=0)
    gpu_description: str = ""

    @field_validator("key_file")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def type_name(self) -> str:
        return self.instance_type or f"ssh_{self.gpus}x"


class SshHostsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hosts: list[SshHost]

    @model_validator(mode="after")
    def _unique(self) -> "SshHostsConfig":
        names = [h.name for h in self.hosts]
        if len(names) != len(set(names)):
            raise ValueError("host names must be unique")
        return self


def load_hosts(path: str | Path) -> SshHostsConfig:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    return SshHostsConfig.model_validate(data)


class SshProvider(Provider):
    """Hands out the user's own machines.

    Idempotent: every read, and `terminate` (releasing a free host is a no-op). NOT idempotent:
    `launch` claims one more host per call (call `find_by_name` first when retrying).
    Blocking: no call touches the network; each reads or writes the state file under a lock.
    `node()` does not connect; the node connects on first use with pinned host keys.
    """

    name = "ssh"
    keeps_machines = True  # releasing a host leaves it running: the caller stops its processes

    def __init__(
        self,
        hosts: SshHostsConfig | list[SshHost],
        *,
        state_file: str | Path,
        known_hosts: PinnedHostKeys,
        ssh_timeouts: SshTimeouts = DEFAULT_SSH_TIMEOUTS,
    ):
        self.hosts = hosts.hosts if isinstance(hosts, SshHostsConfig) else list(hosts)
        self.by_name = {h.name: h for h in self.hosts}
        self.state_file = Path(state_file)
        self.known_hosts = known_hosts
        self.ssh_timeouts = ssh_timeouts

    # -- state ------------------------------------------------------------------------------------
    def _claims(self) -> dict[str, dict]:
        """host name -> claim; claims on hosts no longer in the config are kept but ignored."""
        return read_json(self.state_file, {}).get("claims", {})

    def _instance(self, host: SshHost, claim: dict) -> Instance:
        return Instance(
            id=claim["instance_id"],
            name=claim["name"],
            instance_type=host.type_name,
            region=host.region,
            status=InstanceStatus.active,
            price_cents_per_hour=host.price_cents_per_hour,
            public_ip=host.host,
            private_ip=host.host,
            ssh_port=host.port,
            extra={"host_name": host.name, "user": host.user, "claimed_at": claim["claimed_at"], "gpus": host.gpus},
        )

    # -- Provider ---------------------------------------------------------------------------------
    def instance_types(self) -> list[InstanceType]:
        claims = self._claims()
        types: dict[str, list[SshHost]] = {}
        for host in self.hosts:
            types.setdefault(host.type_name, []).append(host)
        return [
            InstanceType(
                name=name,
                description=f"{len(hosts)} listed host(s): {', '.join(h.name for h in hosts)}",
                gpus=hosts[0].gpus,
                gpu_description=hosts[0].gpu_description,
                price_cents_per_hour=hosts[0].price_cents_per_hour,
                regions_with_capacity=tuple(sorted({h.region for h in hosts if h.name not in claims})),
            )
            for name, hosts in types.items()
        ]

    def launch(self, *, name: str, instance_type: str, region: str) -> Instance:
        with locked(self.state_file):
            state = read_json(self.state_file, {})
            claims = state.setdefault("claims", {})
            free = [
                h for h in self.hosts if h.type_name == instance_type and h.region == region and h.name not in claims
            ]
            if not free:
                if not any(h.type_name == instance_type for h in self.hosts):
                    raise InvalidRequest(f"no listed host has instance type {instance_type!r}")
                raise InsufficientCapacity(f"every {instance_type} host in {region} is claimed")
            host = free[0]
            claim = {"instance_id": f"ssh-{secrets.token_hex(8)}", "name": name, "claimed_at": time.time()}
            claims[host.name] = claim
            write_json(self.state_file, state)
        return self._instance(host, claim)

    def get(self, instance_id: str) -> Instance | None:
        for host_name, claim in self._claims().items():
            if claim["instance_id"] == instance_id and host_name in self.by_name:
                return self._instance(self.by_name[host_name], claim)
        return None

    def list(self) -> list[Instance]:
        return [self._instance(self.by_name[h], c) for h, c in self._claims().items() if h in self.by_name]

    def terminate(self, instance_ids: builtins.list[str]) -> None:
        wanted = set(instance_ids)
        if not wanted:
            return
        with locked(self.state_file):
            state = read_json(self.state_file, {})
            claims = state.get("claims", {})
            released = [h for h, c in claims.items() if c["instance_id"] in wanted]
            for host_name in released:
                del claims[host_name]
            if released:
                write_json(self.state_file, state)

    def node(self, instance: Instance) -> SshNode:
        host = self.by_name.get(instance.extra.get("host_name", ""))
        if host is None:
            raise InvalidRequest(f"instance {instance.id} is not on a listed host")
        target = SshTarget(host=host.host, user=host.user, key_file=host.key_file, port=host.port)
        return SshNode.to(target, self.known_hosts, label=f"{instance.name}@{host.name}", timeouts=self.ssh_timeouts)
