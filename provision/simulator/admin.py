"""Simulator-only admin API under `/sim/v1`: faults, capacity, the billing ledger, machines.

Not part of Lambda's API, and not authenticated (the simulator listens on loopback only). Tests
and the `trainyard sim` command use it to make the cloud misbehave and to check the bill:

    GET    /sim/v1/health      ok, the ssh users (Lambda's `ubuntu` first where it works) and port
    GET    /sim/v1/billing     the ledger: billed minutes and cost per instance, and the total
    GET    /sim/v1/machines    where each instance's sshd, disk and host key are
    GET    /sim/v1/capacity    launchable count per (type, region)
    PUT    /sim/v1/capacity    {"instance_type", "region", "count"}
    GET    /sim/v1/faults      faults waiting to happen
    DELETE /sim/v1/faults      clear them (capacity counts stay as set)
    POST   /sim/v1/faults      one of:
        {"kind": "rate_limit", "count": N}                 the next N API responses are 429
        {"kind": "server_error", "count": N, "status": 500} the next N are that 5xx
        {"kind": "no_capacity", "instance_type": "*", "region": "*"}   "*" means any
        {"kind": "kill_instance", "instance_id": ID, "status": "unhealthy"|"preempted"|"terminated"}
        {"kind": "rotate_host_key", "instance_id": ID}   the machine's sshd gets a new host key
        {"kind": "slow", "operation": "launch"|"terminate", "delay_s": S, "count": N}
            the next N such calls are done at once (the instance exists, or its billing ended)
            and answered S seconds later: the window where a client that dies acted unknowingly
"""

from __future__ import annotations

import time
from typing import Annotated, Literal, Union

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from provision.simulator.api import cloud
from provision.simulator.cloud import Cloud
from provision.simulator.errors import ApiError
from provision.simulator.sshd import login_users

router = APIRouter(prefix="/sim/v1")
SimAdmin = Annotated[Cloud, Depends(cloud)]


class RateLimitFault(BaseModel):
    kind: Literal["rate_limit"]
    count: int = Field(ge=1, le=1000)


class ServerErrorFault(BaseModel):
    kind: Literal["server_error"]
    count: int = Field(ge=1, le=1000)
    status: int = Field(default=500, ge=500, le=599)


class NoCapacityFault(BaseModel):
    kind: Literal["no_capacity"]
    instance_type: str = "*"
    region: str = "*"


class KillInstanceFault(BaseModel):
    kind: Literal["kill_instance"]
    instance_id: str
    status: Literal["unhealthy", "preempted", "terminated"] = "unhealthy"


class RotateHostKeyFault(BaseModel):
    kind: Literal["rotate_host_key"]
    instance_id: str


class SlowFault(BaseModel):
    kind: Literal["slow"]
    operation: Literal["launch", "terminate"]
    delay_s: float = Field(gt=0, le=300)
    count: int = Field(default=1, ge=1, le=1000)


Fault = Annotated[
    Union[RateLimitFault, ServerErrorFault, NoCapacityFault, KillInstanceFault, RotateHostKeyFault, SlowFault],
    Field(discriminator="kind"),
]


class CapacitySetting(BaseModel):
    instance_type: str
    region: str
    count: int = Field(ge=0)


@router.get("/health")
def health(sim: SimAdmin) -> dict:
    return {
        "status": "ok",
        "ssh_user": login_users()[0],
        "ssh_users": login_users(),
        "ssh_port": sim.config.ssh_port,
        "boot_seconds": sim.config.boot_s,
        "minute_seconds": sim.config.minute_s,
    }


@router.get("/billing")
def billing(sim: SimAdmin) -> dict:
    return sim.ledger.snapshot(time.time())


@router.get("/machines")
def machines(sim: SimAdmin) -> list[dict]:
    return sim.machines()


@router.get("/capacity")
def get_capacity(sim: SimAdmin) -> list[dict]:
    with sim.lock:
        return [{"instance_type": t, "region": r, "count": n} for (t, r), n in sorted(sim.capacity.items())]


@router.put("/capacity")
def set_capacity(setting: CapacitySetting, sim: SimAdmin) -> dict:
    if setting.instance_type not in sim.catalog.instance_types or setting.region not in sim.catalog.regions:
        raise ApiError(404, "global/object-does-not-exist", "Unknown instance type or region.")
    with sim.lock:
        sim.capacity[(setting.instance_type, setting.region)] = setting.count
    return setting.model_dump()


def _describe(sim: Cloud) -> dict:
    with sim.lock:
        return {**sim.faults.describe(), "slow": sim.describe_slow()}


@router.get("/faults")
def get_faults(sim: SimAdmin) -> dict:
    return _describe(sim)


@router.delete("/faults")
def clear_faults(sim: SimAdmin) -> dict:
    with sim.lock:
        sim.faults.rate_limited = 0
        sim.faults.server_errors.clear()
        sim.faults.no_capacity.clear()
        sim.slow.clear()
    return _describe(sim)


@router.post("/faults")
def add_fault(fault: Fault, sim: SimAdmin) -> dict:
    if isinstance(fault, KillInstanceFault):
        return {"instance": sim.kill(fault.instance_id, fault.status)}
    if isinstance(fault, RotateHostKeyFault):
        return {"host_public_key": sim.rotate_host_key(fault.instance_id)}
    with sim.lock:
        if isinstance(fault, RateLimitFault):
            sim.faults.rate_limited += fault.count
        elif isinstance(fault, ServerErrorFault):
            sim.faults.server_errors.extend([fault.status] * fault.count)
        elif isinstance(fault, SlowFault):
            sim.slow.setdefault(fault.operation, []).extend([fault.delay_s] * fault.count)
        else:
            sim.faults.no_capacity.add((fault.instance_type, fault.region))
    return _describe(sim)
