"""The `lambda` provider: Lambda Cloud (or its simulator) behind trainyard's `Provider` interface.

It maps the interface onto `LambdaClient` and hands out `SshNode`s over pinned-host-key Fabric
connections. Lambda has no tags we rely on, so instances are found again by `name`, which the
caller derives from the run (`ty-<run>-<rank>`).
"""

from __future__ import annotations

import builtins
import logging
from pathlib import Path

from provision.base import Instance, InstanceStatus, InstanceType, Provider
from provision.errors import InsufficientCapacity, InvalidRequest, NodeUnreachable, NotFound
from provision.lambda_cloud.client import LambdaClient
from provision.lambda_cloud.models import LambdaInstance
from provision.transport.connection import DEFAULT_SSH_TIMEOUTS, SshNode, SshTarget, SshTimeouts
from provision.transport.known_hosts import PinnedHostKeys

log = logging.getLogger("provision.lambda_cloud")


def to_instance(raw: LambdaInstance, *, ssh_port: int = 22) -> Instance:
    """Lambda's instance as a `provision.base.Instance`."""
    try:
        status = InstanceStatus(raw.status)
    except ValueError:
        # A status this code does not know: treat it as "not ready yet", which leads to waiting,
        # never to a destructive step.
        log.warning("instance %s has unknown status %r; treating it as booting", raw.id, raw.status)
        status = InstanceStatus.booting
    return Instance(
        id=raw.id,
        name=raw.name or "",
        instance_type=raw.instance_type.name,
        region=raw.region.name,
        status=status,
        price_cents_per_hour=raw.instance_type.price_cents_per_hour,
        public_ip=raw.ip,
        private_ip=raw.private_ip,
        ssh_port=ssh_port,
        extra={
            "hostname": raw.hostname,
            "raw_status": raw.status,
            "ssh_key_names": raw.ssh_key_names,
            "gpus": raw.instance_type.specs.gpus,
        },
    )


class LambdaProvider(Provider):
    """Rents Lambda Cloud instances.

    Idempotent: `instance_types`, `get`, `list` (reads) and `terminate` (ids already gone are
    ignored). NOT idempotent: `launch` rents a machine per call; after an unknown outcome, call
    `find_by_name` first (the client already does so itself when a launch got a 5xx or no answer).

    Blocking: each call is one API round trip (timeouts and retries included), except `launch`:
    a capacity check (GET /instance-types, so a launch slot is not spent on a sure refusal), the
    launch itself, which first waits for the client's launch slot (Lambda allows one per 12 s),
    and a GET of the new instance. `node()` does not connect; the node connects on first use, and
    `SshNode.wait_for_ssh(deadline)` blocks until a booting machine answers.
    """

    name = "lambda"

    def __init__(
        self,
        client: LambdaClient,
        *,
        ssh_key_name: str,
        private_key_file: str | Path,
        known_hosts: PinnedHostKeys,
        ssh_user: str = "ubuntu",
        ssh_port: int = 22,
        ssh_timeouts: SshTimeouts = DEFAULT_SSH_TIMEOUTS,
        check_capacity: bool = True,
    ):
        self.client = client
        self.ssh_key_name = ssh_key_name
        self.private_key_file = Path(private_key_file)
        self.known_hosts = known_hosts
        self.ssh_user = ssh_user
        self.ssh_port = ssh_port
        self.ssh_timeouts = ssh_timeouts
        self.check_capacity = check_capacity

    def __repr__(self) -> str:
        return f"LambdaProvider(client={self.client!r}, ssh_key_name={self.ssh_key_name!r})"

    # -- account setup ----------------------------------------------------------------------------
    def ensure_ssh_key(self, public_key: str) -> None:
        """Register `public_key` as `ssh_key_name` unless it already is. Idempotent.

        Raises `InvalidRequest` when that name holds a different key (never silently replaced).
        """
        wanted = public_key.split()[:2]
        for key in self.client.list_ssh_keys():
            if key.name == self.ssh_key_name:
                if key.public_key.split()[:2] != wanted:
                    raise InvalidRequest(
                        f"Lambda SSH key {self.ssh_key_name!r} exists with a different public key; "
                        "choose another key name or delete that key"
                    )
                return
        self.client.add_ssh_key(self.ssh_key_name, public_key)

    # -- Provider ---------------------------------------------------------------------------------
    def instance_types(self) -> list[InstanceType]:
        return [
            InstanceType(
                name=name,
                description=offer.instance_type.description,
                gpus=offer.instance_type.specs.gpus,
                gpu_description=offer.instance_type.gpu_description,
                price_cents_per_hour=offer.instance_type.price_cents_per_hour,
                regions_with_capacity=tuple(r.name for r in offer.regions_with_capacity_available),
            )
            for name, offer in self.client.instance_types().items()
        ]

    def launch(self, *, name: str, instance_type: str, region: str) -> Instance:
        if self.check_capacity:
            offer = self.client.instance_types().get(instance_type)
            if offer is None:
                raise InvalidRequest(f"Lambda offers no instance type {instance_type!r}")
            regions = [r.name for r in offer.regions_with_capacity_available]
            if region not in regions:
                raise InsufficientCapacity(
                    f"no capacity for {instance_type} in {region} "
                    f"(regions with capacity: {', '.join(regions) or 'none'})"
                )
        instance_id = self.client.launch(
            region=region, instance_type=instance_type, ssh_key_name=self.ssh_key_name, name=name
        )
        log.info("launched %s (%s in %s) as %s", name, instance_type, region, instance_id)
        return to_instance(self.client.get_instance(instance_id), ssh_port=self.ssh_port)

    def get(self, instance_id: str) -> Instance | None:
        try:
            return to_instance(self.client.get_instance(instance_id), ssh_port=self.ssh_port)
        except NotFound:
            return None

    def list(self) -> list[Instance]:
        return [to_instance(raw, ssh_port=self.ssh_port) for raw in self.client.list_instances()]

    def terminate(self, instance_ids: builtins.list[str]) -> None:
        ids = list(dict.fromkeys(instance_ids))
        if not ids:
            return
        try:
            ended = self.client.terminate(ids)
        except NotFound:
            # Lambda fails the whole request when one id is unknown: go one by one, skipping those
            ended = []
            for instance_id in ids:
                try:
                    ended.extend(self.client.terminate([instance_id]))
                except NotFound:
                    log.info("terminate: %s is already gone", instance_id)
        for raw in ended:
            # the address goes back to Lambda's pool; a new machine there will have a new key
            if raw.ip:
                self.known_hosts.forget(raw.ip, self.ssh_port)

    def node(self, instance: Instance) -> SshNode:
        if not instance.public_ip:
            raise NodeUnreachable(f"instance {instance.name or instance.id} has no IP yet ({instance.status.value})")
        target = SshTarget(
            host=instance.public_ip,
            user=self.ssh_user,
            key_file=self.private_key_file,
            port=instance.ssh_port,
            machine=instance.id,
        )
        return SshNode.to(
            target,
            self.known_hosts,
            label=f"{instance.name or instance.id}@{instance.public_ip}",
            timeouts=self.ssh_timeouts,
        )

    def close(self) -> None:
        self.client.close()
