"""File systems and firewall rules: the account's resources besides instances and SSH keys.

A file system is a directory under the state directory (`filesystems/<id>`) that outlives every
instance; an instance launched with it shows it at its mount point taken under the instance disk
(`/lambda/nfs/<name>` is `~/lambda/nfs/<name>`), so data written by one instance is there for the
next, as on Lambda. Firewall rules and rulesets are kept and validated as Lambda's API does but
not enforced: every simulated machine is on loopback. The account-wide rules of
`/firewall-rules` and the `global` ruleset are one list, as the newer API presents the older one.

Not thread-safe: the cloud's lock guards both stores.
"""

from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from provision.simulator.bodies import LaunchRequest
from provision.simulator.catalog import Catalog, iso_time
from provision.simulator.errors import ApiError, invalid, launch_resource_missing, quota_exceeded

FILESYSTEM_QUOTA = 24  # "up to 24 filesystems" per account
SIM_USER = {"id": "5d1a0b3c7e9f4a2b8c6d0e1f2a3b4c5d", "email": "simulator@example.com", "status": "active"}
DEFAULT_RULES: list[dict[str, Any]] = [
    {"protocol": "tcp", "port_range": [22, 22], "source_network": "0.0.0.0/0", "description": "Allow SSH"},
    {"protocol": "icmp", "source_network": "0.0.0.0/0", "description": "Allow ICMP"},
]


def iso(at: float) -> str:
    return iso_time(datetime.fromtimestamp(at, timezone.utc))


def filesystem_missing() -> ApiError:
    return ApiError(404, "global/object-does-not-exist", "Filesystem was not found.")


def ruleset_missing() -> ApiError:
    return ApiError(
        404,
        "global/object-does-not-exist",
        "Firewall ruleset does not exist or you do not have permission to access it.",
        "Check your firewall ruleset ID and try again.",
    )


@dataclass
class SimFilesystem:
    id: str
    name: str
    region: str
    created: float
    path: Path

    @property
    def mount_point(self) -> str:
        return f"/lambda/nfs/{self.name}"


class Filesystems:
    def __init__(self, root: Path, catalog: Catalog):
        self.root = root
        self.catalog = catalog
        self.items: dict[str, SimFilesystem] = {}

    def create(self, name: str, region: str) -> SimFilesystem:
        if region not in self.catalog.regions:
            raise invalid(suggestion=f"Unknown region {region!r}; GET /api/v1/regions lists them.")
        if any(fs.name == name for fs in self.items.values()):
            raise ApiError(400, "global/duplicate", f"A filesystem named {name!r} already exists.")
        if len(self.items) >= FILESYSTEM_QUOTA:
            raise quota_exceeded(f"An account holds at most {FILESYSTEM_QUOTA} filesystems.")
        fs_id = secrets.token_hex(16)
        fs = SimFilesystem(fs_id, name, region, time.time(), self.root / fs_id)
        fs.path.mkdir(parents=True, exist_ok=True)
        self.items[fs_id] = fs
        return fs

    def by_name(self, name: str) -> SimFilesystem | None:
        return next((fs for fs in self.items.values() if fs.name == name), None)

    def mounts_for(self, req: LaunchRequest) -> list[dict[str, str]]:
        """A launch's file systems, by name and by mount, each at its mount point, all in the
        launch's region: `[{"mount_point", "file_system_id"}]`."""
        chosen: dict[str, str] = {}  # file system id -> mount point
        for name in req.file_system_names:
            fs = self.by_name(name)
            if fs is None:
                raise launch_resource_missing(
                    f"Filesystem {name!r} was not found.", "Create it with POST /api/v1/filesystems first."
                )
            chosen[fs.id] = fs.mount_point
        for mount in req.file_system_mounts:  # these win over the default mount point
            if mount.file_system_id not in self.items:
                raise launch_resource_missing(
                    f"Filesystem {mount.file_system_id!r} was not found.", "Check GET /api/v1/file-systems."
                )
            chosen[mount.file_system_id] = mount.mount_point
        for fs_id in chosen:
            fs = self.items[fs_id]
            if fs.region != req.region_name:
                raise ApiError(
                    400,
                    "instance-operations/launch/file-system-in-wrong-region",
                    f"Filesystem {fs.name!r} is in {fs.region}, not {req.region_name}.",
                    "Launch in the filesystem's region, or use a filesystem of this region.",
                )
        return [{"mount_point": mp, "file_system_id": fs_id} for fs_id, mp in chosen.items()]

    def delete(self, fs_id: str, *, in_use: bool) -> None:
        if fs_id not in self.items:
            raise filesystem_missing()
        if in_use:
            raise ApiError(
                400,
                "filesystems/filesystem-in-use",
                "Filesystem is in use by one or more instances.",
                "Terminate every instance that mounts it, then try again.",
            )
        fs = self.items.pop(fs_id)
        shutil.rmtree(fs.path, ignore_errors=True)

    def json(self, fs: SimFilesystem, *, in_use: bool) -> dict[str, Any]:
        return {
            "id": fs.id,
            "name": fs.name,
            "mount_point": fs.mount_point,
            "created": iso(fs.created),
            "created_by": dict(SIM_USER),
            "is_in_use": in_use,
            "region": self.catalog.region_json(fs.region),
        }


@dataclass
class Ruleset:
    id: str
    name: str
    region: str
    rules: list[dict[str, Any]]
    created: float = field(default_factory=time.time)


class Firewall:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.global_rules: list[dict[str, Any]] = [dict(r) for r in DEFAULT_RULES]
        self.rulesets: dict[str, Ruleset] = {}

    def global_json(self) -> dict[str, Any]:
        return {"id": "global", "name": "Default Workspace Global Rules", "rules": self.global_rules}

    def create(self, name: str, region: str, rules: list[dict[str, Any]]) -> Ruleset:
        if region not in self.catalog.regions:
            raise invalid(suggestion=f"Unknown region {region!r}; GET /api/v1/regions lists them.")
        ruleset = Ruleset(secrets.token_hex(16), name, region, rules)
        self.rulesets[ruleset.id] = ruleset
        return ruleset

    def get(self, ruleset_id: str) -> Ruleset:
        ruleset = self.rulesets.get(ruleset_id)
        if ruleset is None:
            raise ruleset_missing()
        return ruleset

    def rulesets_for(self, req: LaunchRequest) -> list[str]:
        """The ids of a launch's rulesets, each existing and in the launch's region."""
        ids = list(dict.fromkeys(r.id for r in req.firewall_rulesets))
        for ruleset_id in ids:
            ruleset = self.rulesets.get(ruleset_id)
            if ruleset is None:
                raise launch_resource_missing(
                    f"Firewall ruleset {ruleset_id!r} does not exist.", "Check GET /api/v1/firewall-rulesets."
                )
            if ruleset.region != req.region_name:
                raise invalid(
                    suggestion=f"Firewall ruleset {ruleset_id!r} is in {ruleset.region}, not {req.region_name}."
                )
        return ids

    def delete(self, ruleset_id: str, *, in_use: bool) -> None:
        self.get(ruleset_id)
        if in_use:
            raise ApiError(
                400,
                "firewall-rulesets/firewall-ruleset-in-use",
                "Firewall ruleset is in use by one or more instances.",
                "Terminate all instances that are using the ruleset before deleting it.",
            )
        del self.rulesets[ruleset_id]

    def json(self, ruleset: Ruleset, instance_ids: list[str]) -> dict[str, Any]:
        return {
            "id": ruleset.id,
            "name": ruleset.name,
            "region": self.catalog.region_json(ruleset.region),
            "rules": ruleset.rules,
            "created": iso(ruleset.created),
            "instance_ids": instance_ids,
        }
