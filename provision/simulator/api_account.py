"""Lambda's API for the account's other resources: file systems, images, regions, firewall.

The same guard (API key, faults, rate limit), envelope and validation as `api.py`; the state and
its rules live in `storage.py` and `cloud.py`. Firewall rules are kept, not enforced.
"""

from __future__ import annotations

from fastapi import APIRouter

from provision.simulator.api import JsonBody, Sim, ok, parse
from provision.simulator.bodies import (
    FilesystemCreateRequest,
    FirewallRulesPut,
    GlobalRulesetPatch,
    RulesetCreate,
    RulesetPatch,
)

router = APIRouter(prefix="/api/v1")


# -- file systems (Lambda lists at /file-systems but creates and deletes at /filesystems) ---------
@router.get("/file-systems")
def list_filesystems(sim: Sim) -> dict:
    return ok(sim.list_filesystems())


@router.post("/filesystems")
def create_filesystem(sim: Sim, data: JsonBody) -> dict:
    req: FilesystemCreateRequest = parse(FilesystemCreateRequest, data)
    return ok(sim.create_filesystem(req.name, req.region))


@router.delete("/filesystems/{filesystem_id}")
def delete_filesystem(filesystem_id: str, sim: Sim) -> dict:
    return ok(sim.delete_filesystem(filesystem_id))


# -- images and regions ---------------------------------------------------------------------------
@router.get("/images")
def list_images(sim: Sim) -> dict:
    return ok(sim.catalog.images_json())


@router.get("/regions")
def list_regions(sim: Sim) -> dict:
    return ok([sim.catalog.region_json(code) for code in sim.catalog.regions])


# -- firewall: the account-wide rules, and rulesets -----------------------------------------------
@router.get("/firewall-rules")
def list_firewall_rules(sim: Sim) -> dict:
    with sim.lock:
        return ok(sim.firewall.global_rules)


@router.put("/firewall-rules")
def set_firewall_rules(sim: Sim, data: JsonBody) -> dict:
    """Replaces the whole list (SkyPilot reads it, adds its ports, and puts it back)."""
    req: FirewallRulesPut = parse(FirewallRulesPut, data)
    with sim.lock:
        sim.firewall.global_rules = [rule.as_json() for rule in req.data]
        return ok(sim.firewall.global_rules)


@router.get("/firewall-rulesets")
def list_firewall_rulesets(sim: Sim) -> dict:
    return ok(sim.list_rulesets())


@router.post("/firewall-rulesets")
def create_firewall_ruleset(sim: Sim, data: JsonBody) -> dict:
    req: RulesetCreate = parse(RulesetCreate, data)
    with sim.lock:
        ruleset = sim.firewall.create(req.name, req.region, [rule.as_json() for rule in req.rules])
        return ok(sim.ruleset_json(ruleset.id))


# /global is declared before /{ruleset_id}, which would otherwise take it
@router.get("/firewall-rulesets/global")
def get_global_firewall_ruleset(sim: Sim) -> dict:
    with sim.lock:
        return ok(sim.firewall.global_json())


@router.patch("/firewall-rulesets/global")
def update_global_firewall_ruleset(sim: Sim, data: JsonBody) -> dict:
    req: GlobalRulesetPatch = parse(GlobalRulesetPatch, data)
    with sim.lock:
        if req.rules is not None:
            sim.firewall.global_rules = [rule.as_json() for rule in req.rules]
        return ok(sim.firewall.global_json())


@router.get("/firewall-rulesets/{ruleset_id}")
def get_firewall_ruleset(ruleset_id: str, sim: Sim) -> dict:
    return ok(sim.ruleset_json(ruleset_id))


@router.patch("/firewall-rulesets/{ruleset_id}")
def update_firewall_ruleset(ruleset_id: str, sim: Sim, data: JsonBody) -> dict:
    req: RulesetPatch = parse(RulesetPatch, data)
    with sim.lock:
        ruleset = sim.firewall.get(ruleset_id)
        if req.name is not None:
            ruleset.name = req.name
        if req.rules is not None:
            ruleset.rules = [rule.as_json() for rule in req.rules]
        return ok(sim.ruleset_json(ruleset_id))


@router.delete("/firewall-rulesets/{ruleset_id}")
def delete_firewall_ruleset(ruleset_id: str, sim: Sim) -> dict:
    sim.delete_ruleset(ruleset_id)
    return ok({})
