"""The simulated cloud: instances, SSH keys, capacity, the lifecycle clock, and faults.

HTTP knows nothing of this module's internals and this module knows nothing of HTTP: the routes
(`api.py`, `admin.py`) call these methods, which raise `ApiError` with Lambda's code and status.

Lifecycle, driven by a background ticker (every 50 ms):
    launch -> booting (no ip yet) -- boot_s --> sshd started on a free 127.0.0.x -> active
    terminate -> terminating (sshd and every process of the instance killed at once)
              -- terminate_s --> terminated (still listed for linger_s, then forgotten: 404)
    kill fault -> unhealthy (billing goes on until terminated), or preempted / terminated
    slow fault -> a launch or terminate is done at once, its answer held back (`answer_delay`)
    restart (active or unhealthy) -> every process killed, sshd back at the same address -> active
Billing (`ledger.py`) runs from `active` until the terminate call (or a preempting kill).
File systems and firewall rules live in `storage.py`; launches check them here.
"""

from __future__ import annotations

import builtins
import hashlib
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from provision.simulator.bodies import LaunchRequest
from provision.simulator.catalog import Catalog
from provision.simulator.errors import (
    ApiError,
    conflict,
    invalid,
    launch_resource_missing,
    not_found,
    quota_exceeded,
    route_not_found,
)
from provision.simulator.keys import openssh_public_key
from provision.simulator.ledger import Ledger
from provision.simulator.limits import Faults, LaunchLimiter, TokenBucket
from provision.simulator.sshd import SIM_ENV, Machine, SshdError, address_free, generate_key_pair, kill_marked
from provision.simulator.storage import Filesystems, Firewall

log = logging.getLogger("provision.simulator")

LIVE = ("booting", "active", "unhealthy")
HOLDS_STORAGE = (*LIVE, "terminating")  # file systems and rulesets stay in use until terminated
SSH_KEY_QUOTA = 1024


@dataclass
class SimConfig:
    state_dir: Path
    catalog: Catalog
    api_key: SecretStr
    boot_s: float = 5.0
    terminate_s: float = 2.0
    linger_s: float = 300.0
    minute_s: float = 60.0
    launch_interval_s: float = 12.0
    requests_per_s: float = 1.0
    burst: int = 10
    quota: int = 10
    ssh_port: int = 22
    first_ip: str = "127.0.0.11"
    last_ip: str = "127.0.0.254"
    sshd: str = "/usr/sbin/sshd"


@dataclass
class SimInstance:
    id: str
    name: str | None
    instance_type: str
    region: str
    ssh_key_names: list[str]
    public_key: str
    launched_at: float
    status: str = "booting"
    hostname: str | None = None
    tags: list[dict] = field(default_factory=list)
    #: [{"mount_point", "file_system_id"}], in the order the launch gave them
    mounts: list[dict[str, str]] = field(default_factory=list)
    ruleset_ids: list[str] = field(default_factory=list)
    cluster_id: str | None = None  # the simulator has no 1-Click Clusters: always None
    machine: Machine | None = None
    ip: str | None = None
    ended_at: float | None = None  # when it became terminating / preempted / terminated
    capacity_returned: bool = False
    jupyter_token: str = field(default_factory=lambda: secrets.token_hex(16))


class Cloud:
    """All simulator state behind one lock; `start()` runs the lifecycle ticker."""

    def __init__(self, config: SimConfig):
        self.config = config
        self.catalog = config.catalog
        self.lock = threading.RLock()
        self.instances: dict[str, SimInstance] = {}
        self.ssh_keys: dict[str, dict[str, str]] = {}
        self.capacity = {(t, r): n for t, item in self.catalog.instance_types.items() for r, n in item.capacity.items()}
        self.faults = Faults()
        #: fault `slow` (admin.py): per operation ("launch", "terminate"), how long each of its
        #: next answers is held back, in order. Guarded by the lock.
        self.slow: dict[str, list[float]] = {}
        self.requests = TokenBucket(config.requests_per_s, config.burst)
        self.launches = LaunchLimiter(config.launch_interval_s)
        self.state_dir = config.state_dir.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.state_dir / "ledger.json", minute_s=config.minute_s)
        self.filesystems = Filesystems(self.state_dir / "filesystems", self.catalog)
        self.firewall = Firewall(self.catalog)
        # marks every process of this simulator's machines, so stale ones can be swept
        # (derived from the state directory, so a restarted simulator can sweep a crashed one's)
        self.sim_tag = "sim-" + hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._booting: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        stale = kill_marked(SIM_ENV, self.sim_tag)
        if stale:
            log.warning("killed %d processes left by an earlier simulator on %s", stale, self.state_dir)
        self._ticker = threading.Thread(target=self._tick_loop, name="sim-ticker", daemon=True)
        self._ticker.start()

    def shutdown(self) -> None:
        """Stop the ticker and destroy every machine (no sshd or instance process outlives us)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=10)
        now = time.time()
        with self.lock:
            for inst in self.instances.values():
                if inst.machine is not None:
                    inst.machine.destroy()
                    inst.machine = None
                self.ledger.stop(inst.id, at=now)
        kill_marked(SIM_ENV, self.sim_tag)

    def _tick_loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.tick()
            except Exception:  # the ticker must survive one bad instance
                log.exception("simulator tick failed")

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        to_boot = []
        with self.lock:
            for inst in list(self.instances.values()):
                if (
                    inst.status == "booting"
                    and inst.id not in self._booting
                    and now >= inst.launched_at + self.config.boot_s
                ):
                    self._booting.add(inst.id)
                    to_boot.append(inst)
                elif inst.status == "terminating" and now >= (inst.ended_at or now) + self.config.terminate_s:
                    inst.status = "terminated"
                    self._return_capacity(inst)
                elif (
                    inst.status in ("terminated", "preempted")
                    and now >= (inst.ended_at or now) + self.config.terminate_s + self.config.linger_s
                ):
                    del self.instances[inst.id]
        for inst in to_boot:  # starting sshd takes a moment: not under the lock
            self._boot(inst)

    def _boot(self, inst: SimInstance) -> None:
        error: Exception | None = None
        try:
            machine = Machine(self.state_dir / "instances" / inst.id, inst.id, inst.public_key, sim_tag=self.sim_tag)
            for mount in inst.mounts:
                fs = self.filesystems.items.get(mount["file_system_id"])
                if fs is not None:
                    machine.link_filesystem(mount["mount_point"], fs.path)
            for address in self._free_addresses():
                try:
                    machine.start(address, self.config.ssh_port, sshd=self.config.sshd)
                    break
                except SshdError as exc:  # lost a race for the address: try the next one
                    error = exc
            else:
                error = error or SshdError("no free loopback address left")
        except OSError as exc:  # the state directory is unwritable, or the like
            error = exc
            machine = None
        with self.lock:
            self._booting.discard(inst.id)
            if inst.status != "booting":  # terminated while booting
                if machine is not None:
                    machine.destroy()
                return
            if machine is None or machine.address is None:
                log.error("instance %s failed to boot: %s", inst.id, error)
                inst.status = "unhealthy"
                return
            inst.machine, inst.ip, inst.status = machine, machine.address, "active"
            inst.hostname = inst.hostname or machine.address
            self.ledger.start(
                instance_id=inst.id,
                name=inst.name,
                instance_type=inst.instance_type,
                region=inst.region,
                at=time.time(),
                price_cents_per_hour=self.catalog.instance_types[inst.instance_type].price_cents_per_hour,
            )

    def _free_addresses(self) -> Iterator[str]:
        first = int(ipaddress.IPv4Address(self.config.first_ip))
        last = int(ipaddress.IPv4Address(self.config.last_ip))
        for n in range(first, last + 1):
            address = str(ipaddress.IPv4Address(n))
            with self.lock:
                taken = any(i.machine is not None and i.machine.address == address for i in self.instances.values())
            if not taken and address_free(address, self.config.ssh_port):
                yield address

    def _return_capacity(self, inst: SimInstance) -> None:
        if not inst.capacity_returned:
            inst.capacity_returned = True
            key = (inst.instance_type, inst.region)
            self.capacity[key] = self.capacity.get(key, 0) + 1

    def answer_delay(self, operation: str) -> float:
        """Seconds to hold back the answer to this `operation`, which is already done (fault `slow`:
        the cloud acted, and the caller hears of it late, or never if it dies meanwhile)."""
        with self.lock:
            delays = self.slow.get(operation)
            return delays.pop(0) if delays else 0.0

    def describe_slow(self) -> list[dict[str, Any]]:
        with self.lock:
            return [{"operation": op, "delay_s": d} for op, delays in sorted(self.slow.items()) for d in delays]

    # -- instance types ---------------------------------------------------------------------------
    def has_capacity(self, instance_type: str, region: str) -> bool:
        return self.capacity.get((instance_type, region), 0) > 0 and not self.faults.capacity_blocked(
            instance_type, region
        )

    def instance_types(self) -> dict[str, Any]:
        with self.lock:
            return {
                name: {
                    "instance_type": self.catalog.type_json(name),
                    "regions_with_capacity_available": [
                        self.catalog.region_json(r) for r in self.catalog.regions if self.has_capacity(name, r)
                    ],
                }
                for name in self.catalog.instance_types
            }

    # -- instances --------------------------------------------------------------------------------
    def launch(self, req: LaunchRequest) -> str:
        """Check the request against the account's resources, as Lambda does, and start booting."""
        with self.lock:
            if req.instance_type_name not in self.catalog.instance_types:
                raise launch_resource_missing(
                    f"Instance type {req.instance_type_name!r} does not exist.",
                    "Check GET /api/v1/instance-types for the instance types offered.",
                )
            if req.region_name not in self.catalog.regions:
                raise invalid(suggestion=f"Unknown region_name {req.region_name!r}.")
            keys = [k for k in self.ssh_keys.values() if k["name"] == req.ssh_key_names[0]]
            if not keys:
                raise launch_resource_missing(
                    f"SSH key {req.ssh_key_names[0]!r} does not exist.",
                    "Add the key with POST /api/v1/ssh-keys, then try again.",
                )
            self._check_image(req)
            mounts = self.filesystems.mounts_for(req)
            ruleset_ids = self.firewall.rulesets_for(req)
            if sum(1 for i in self.instances.values() if i.status in LIVE) >= self.config.quota:
                raise quota_exceeded()
            if not self.has_capacity(req.instance_type_name, req.region_name):
                raise ApiError(
                    400,
                    "instance-operations/launch/insufficient-capacity",
                    "Not enough capacity to fulfill launch request.",
                    "Try another region or instance type, or try again later.",
                )
            self.capacity[(req.instance_type_name, req.region_name)] -= 1
            inst = SimInstance(
                id=secrets.token_hex(16),
                name=req.name,
                instance_type=req.instance_type_name,
                region=req.region_name,
                ssh_key_names=list(req.ssh_key_names),
                public_key=keys[0]["public_key"],
                launched_at=time.time(),
                hostname=req.hostname,
                tags=[t.model_dump() for t in req.tags],
                mounts=mounts,
                ruleset_ids=ruleset_ids,
            )
            self.instances[inst.id] = inst
            log.info("launched %s (%s, %s, name=%r)", inst.id, inst.instance_type, inst.region, inst.name)
            return inst.id

    def _check_image(self, req: LaunchRequest) -> None:
        if req.image is None:
            return  # Lambda's default: the latest Lambda Stack
        here = [i for i in self.catalog.images_json() if i["region"]["name"] == req.region_name]
        if not any(req.image.id in (None, i["id"]) and req.image.family in (None, i["family"]) for i in here):
            wanted = f"id {req.image.id!r}" if req.image.id is not None else f"family {req.image.family!r}"
            raise launch_resource_missing(
                f"Image with {wanted} does not exist in {req.region_name}.",
                "Check GET /api/v1/images for the images offered in each region.",
            )

    def get(self, instance_id: str) -> dict[str, Any]:
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None:
                raise not_found()
            return self.instance_json(inst)

    def list(self, cluster_id: str | None = None) -> list[dict[str, Any]]:
        """Every instance, or only the members of a 1-Click Cluster (none: the simulator has none)."""
        with self.lock:
            return [
                self.instance_json(i)
                for i in sorted(self.instances.values(), key=lambda i: i.launched_at)
                if cluster_id is None or i.cluster_id == cluster_id
            ]

    def rename(self, instance_id: str, name: str | None) -> dict[str, Any]:
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None:
                raise not_found()
            if name is not None:
                inst.name = name
            return self.instance_json(inst)

    def restart(self, instance_ids: builtins.list[str]) -> builtins.list[dict[str, Any]]:
        """All or nothing: unknown ids give 404, an instance that cannot restart gives 409.

        A restart is a reboot: every process of the machine dies, the disk stays, and sshd comes
        back at the same address with the same host key. An unhealthy instance comes back active.
        """
        with self.lock:
            if any(i not in self.instances for i in instance_ids):
                raise not_found()
            unique = [self.instances[i] for i in dict.fromkeys(instance_ids)]
            for inst in unique:
                if inst.status not in ("active", "unhealthy") or inst.machine is None:
                    raise conflict(f"Instance {inst.id} is {inst.status}; only a running instance restarts.")
            for inst in unique:
                try:
                    killed = inst.machine.reboot(sshd=self.config.sshd) if inst.machine else 0
                    inst.status = "active"
                    log.info("instance %s restarted (%d processes killed)", inst.id, killed)
                except SshdError as exc:
                    log.error("instance %s did not come back from a restart: %s", inst.id, exc)
                    inst.status = "unhealthy"
            return [self.instance_json(inst) for inst in unique]

    def terminate(self, instance_ids: builtins.list[str]) -> builtins.list[dict[str, Any]]:
        """All or nothing: any unknown id fails the whole request with 404."""
        with self.lock:
            missing = [i for i in instance_ids if i not in self.instances]
            if missing:
                raise not_found()
            now = time.time()
            for instance_id in dict.fromkeys(instance_ids):
                inst = self.instances[instance_id]
                if inst.status in LIVE:
                    self._end(inst, "terminating", now)
            return [self.instance_json(self.instances[i]) for i in dict.fromkeys(instance_ids)]

    def _end(self, inst: SimInstance, status: str, now: float, *, stop_billing: bool = True) -> None:
        """Destroy the machine and move the instance to `status`."""
        if inst.machine is not None:
            n = inst.machine.destroy()
            log.info("instance %s: machine destroyed (%d processes killed)", inst.id, n)
        if status != "unhealthy":
            inst.ended_at = now
            inst.machine = None
        if stop_billing:
            self.ledger.stop(inst.id, at=now)
        inst.status = status
        if status in ("terminated", "preempted"):
            self._return_capacity(inst)

    def kill(self, instance_id: str, status: str) -> dict[str, Any]:
        """Fault: the machine dies under a running instance (hardware, host, preemption)."""
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None:
                raise not_found()
            if inst.status not in LIVE:
                raise ApiError(409, "global/conflict", f"Instance is {inst.status}; nothing to kill.")
            # unhealthy: Lambda still bills it until someone terminates it
            self._end(inst, status, time.time(), stop_billing=(status != "unhealthy"))
            return self.instance_json(inst)

    def rotate_host_key(self, instance_id: str) -> str:
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None or inst.machine is None or inst.status != "active":
                raise ApiError(409, "global/conflict", "Only an active instance's host key can change.")
            return inst.machine.rotate_host_key(sshd=self.config.sshd)

    # -- SSH keys ---------------------------------------------------------------------------------
    def list_keys(self) -> builtins.list[dict[str, str]]:
        with self.lock:
            return [dict(k) for k in self.ssh_keys.values()]

    def add_key(self, name: str, public_key: str | None) -> dict[str, str]:
        """Store a public key (OpenSSH, RFC4716, PEM or PKCS#8, kept as its OpenSSH line), or
        generate a pair and return the private half once."""
        private_key = None
        if public_key is None:
            private_key, public_key = generate_key_pair(name)
        else:
            try:
                public_key = openssh_public_key(public_key)
            except ValueError:
                raise invalid(
                    "Invalid request data.", "public_key is not a public key in OpenSSH, RFC4716, PKCS8 or PEM format."
                ) from None
        with self.lock:
            if any(k["name"] == name for k in self.ssh_keys.values()):
                raise invalid("SSH key name already in use.", "Choose another name or delete the existing key.")
            if len(self.ssh_keys) >= SSH_KEY_QUOTA:
                # the spec documents only 400 invalid-parameters for this call
                raise invalid("Quota exceeded.", f"An account holds at most {SSH_KEY_QUOTA} SSH keys.")
            key = {"id": secrets.token_hex(16), "name": name, "public_key": public_key}
            self.ssh_keys[key["id"]] = key
            out = dict(key)
        if private_key is not None:
            out["private_key"] = private_key
        return out

    def delete_key(self, key_id: str) -> None:
        with self.lock:
            if self.ssh_keys.pop(key_id, None) is None:
                raise route_not_found()  # the spec's 404 for this call is `global/not-found`

    # -- file systems and firewall rulesets -------------------------------------------------------
    def _holding(self, *, file_system_id: str = "", ruleset_id: str = "") -> builtins.list[str]:
        """Ids of the instances that hold a file system or a ruleset (until they are terminated)."""
        return [
            i.id
            for i in sorted(self.instances.values(), key=lambda i: i.launched_at)
            if i.status in HOLDS_STORAGE
            and (ruleset_id in i.ruleset_ids or any(m["file_system_id"] == file_system_id for m in i.mounts))
        ]

    def list_filesystems(self) -> builtins.list[dict[str, Any]]:
        with self.lock:
            fss = self.filesystems
            return [fss.json(fs, in_use=bool(self._holding(file_system_id=fs.id))) for fs in fss.items.values()]

    def create_filesystem(self, name: str, region: str) -> dict[str, Any]:
        with self.lock:
            return self.filesystems.json(self.filesystems.create(name, region), in_use=False)

    def delete_filesystem(self, fs_id: str) -> dict[str, Any]:
        with self.lock:
            self.filesystems.delete(fs_id, in_use=bool(self._holding(file_system_id=fs_id)))
            return {"deleted_ids": [fs_id]}

    def list_rulesets(self) -> builtins.list[dict[str, Any]]:
        with self.lock:
            return [self.ruleset_json(r) for r in self.firewall.rulesets]

    def ruleset_json(self, ruleset_id: str) -> dict[str, Any]:
        with self.lock:
            ruleset = self.firewall.get(ruleset_id)
            return self.firewall.json(ruleset, self._holding(ruleset_id=ruleset_id))

    def delete_ruleset(self, ruleset_id: str) -> None:
        with self.lock:
            self.firewall.delete(ruleset_id, in_use=bool(self._holding(ruleset_id=ruleset_id)))

    def instance_json(self, inst: SimInstance) -> dict[str, Any]:
        booting = inst.status == "booting"
        gone = inst.status in ("terminating", "terminated", "preempted")
        reason = "vm-has-not-launched" if booting else "vm-is-terminating" if gone else None
        action = (
            {"available": False, "reason_code": reason, "reason_description": reason.replace("-", " ")}
            if reason
            else {"available": True}
        )
        mounted = [self.filesystems.items.get(m["file_system_id"]) for m in inst.mounts]
        names = [fs.name for fs in mounted if fs is not None]
        data: dict[str, Any] = {
            "id": inst.id,
            "status": inst.status,
            "ssh_key_names": inst.ssh_key_names,
            "file_system_names": names,
            "region": self.catalog.region_json(inst.region),
            "instance_type": self.catalog.type_json(inst.instance_type),
            "actions": {a: dict(action) for a in ("migrate", "rebuild", "restart", "cold_reboot", "terminate")},
            "tags": inst.tags,
            "firewall_rulesets": [{"id": r} for r in inst.ruleset_ids],
            "is_reserved": False,
            "jupyter_token": inst.jupyter_token,
            "jupyter_url": f"https://jupyter-{inst.id}.lambdaspaces.com/?token={inst.jupyter_token}",
        }
        if inst.mounts:  # "If no filesystems are mounted, this parameter will be missing"
            data["file_system_mounts"] = [dict(m) for m in inst.mounts]
        if inst.name is not None:
            data["name"] = inst.name
        if inst.ip is not None and not booting:  # Lambda shows no address while booting
            data.update(ip=inst.ip, private_ip=inst.ip, hostname=inst.hostname or inst.ip)
        return data

    def machines(self) -> builtins.list[dict[str, Any]]:
        """Simulator-only view: where each instance's sshd and disk are."""
        with self.lock:
            return [
                {
                    "id": i.id,
                    "name": i.name,
                    "status": i.status,
                    "address": i.ip,
                    "ssh_port": self.config.ssh_port,
                    "sshd_pid": i.machine.sshd_pid if i.machine else None,
                    "root": str(self.state_dir / "instances" / i.id),
                    "disk": str(self.state_dir / "instances" / i.id / "disk"),
                    "host_public_key": i.machine.host_public_key if i.machine else None,
                }
                for i in self.instances.values()
            ]
