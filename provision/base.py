"""The provider interface: rent machines, find them again, give them back.

One small abstract class, one module per provider (`local`, `lambda_cloud`, `ssh`). The controller
only ever talks to this interface, so every provider behaves the same above it.

Rules every provider keeps (the controller relies on them):
- Instances are named by the caller (`ty-<run>-<rank>`). `launch` is NOT idempotent, so a caller
  that does not know whether an earlier launch went through first calls `find_by_name`.
- `terminate` IS idempotent: terminating what is already gone is not an error.
- Calls block only for one API round trip (with a timeout); waiting for an instance to become
  active is the caller's loop, not the provider's.
- Errors are `ProvisionError` subclasses (`provision.errors`); anything else is a bug.
"""

from __future__ import annotations

import abc
import builtins
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - imports for type hints only
    from provision.node import Node


class InstanceStatus(str, enum.Enum):
    """Lambda's instance states; the other providers map onto them."""

    booting = "booting"
    active = "active"
    unhealthy = "unhealthy"
    terminating = "terminating"
    terminated = "terminated"
    preempted = "preempted"

    @property
    def is_gone(self) -> bool:
        return self in (InstanceStatus.terminated, InstanceStatus.preempted)


@dataclass(frozen=True)
class InstanceType:
    name: str  # e.g. "gpu_8x_h100_sxm5"
    description: str
    gpus: int
    gpu_description: str
    price_cents_per_hour: int
    regions_with_capacity: tuple[str, ...] = ()


@dataclass(frozen=True)
class Instance:
    id: str
    name: str
    instance_type: str
    region: str
    status: InstanceStatus
    price_cents_per_hour: int
    public_ip: str | None = None
    private_ip: str | None = None
    ssh_port: int = 22
    extra: dict = field(default_factory=dict, compare=False)


class Provider(abc.ABC):
    """What the controller needs from a place that runs nodes."""

    #: the name used in run specs (`compute.provider`)
    name: str
    #: False where the nodes already run this checkout's trainer (`local`); True where a node
    #: must be bootstrapped (provision.bootstrap) before the trainer can run on it
    needs_bootstrap: bool = True
    #: True where `terminate` only gives the machine back and leaves its processes running
    #: (`ssh`: the user's own machines), so the caller stops what it started first
    keeps_machines: bool = False

    @abc.abstractmethod
    def instance_types(self) -> list[InstanceType]:
        """Every type with its price and the regions that have capacity now. One round trip."""

    @abc.abstractmethod
    def launch(self, *, name: str, instance_type: str, region: str) -> Instance:
        """Start one instance. Not idempotent: call `find_by_name` first when retrying.

        Raises `InsufficientCapacity` when the type has no capacity in the region.
        Returns as soon as the provider accepted the request (the instance is usually `booting`).
        """

    @abc.abstractmethod
    def get(self, instance_id: str) -> Instance | None:
        """The instance as the provider sees it now, or None when the provider no longer knows it."""

    @abc.abstractmethod
    def list(self) -> list[Instance]:
        """Every instance this account has that is not long gone."""

    @abc.abstractmethod
    def terminate(self, instance_ids: builtins.list[str]) -> None:
        """Ask for termination. Idempotent: ids that are already gone are ignored."""

    @abc.abstractmethod
    def node(self, instance: Instance) -> "Node":
        """A session that runs commands and moves files on an active instance."""

    def find_by_name(self, name: str) -> Instance | None:
        """The live instance called `name`, if any (how a retried launch avoids launching twice)."""
        for inst in self.list():
            if inst.name == name and not inst.status.is_gone:
                return inst
        return None

    def close(self) -> None:  # noqa: B027 - optional: most providers hold nothing to release
        """Release clients and connections. Safe to call more than once."""
