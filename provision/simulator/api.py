"""Lambda Cloud's public REST API, served from the simulated cloud: instances, types, SSH keys.

Same paths, envelope (`{"data": ...}` / `{"error": {code, message, suggestion}}`), error codes and
HTTP statuses as Lambda's OpenAPI spec (`lambda-cloud-openapi.json` beside this module; the tests
check every response against it). Request bodies are validated here, not by FastAPI, because
Lambda answers bad input with 400 `global/invalid-parameters`, not FastAPI's 422. The account's
other resources (file systems, images, regions, firewall) are served by `api_account.py`.

Order of checks on every `/api/v1` request: the API key (401), injected faults (forced 429 or
5xx), the general rate limit (429), then for launches the launch rate limit (429), then the call.
A launch or terminate whose answer a `slow` fault holds back is done first, then answered late.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ValidationError

from provision.simulator.bodies import AddKeyRequest, InstanceIdsRequest, LaunchRequest, RenameRequest
from provision.simulator.cloud import Cloud
from provision.simulator.errors import ApiError, internal_error, invalid
from provision.simulator.limits import retry_after_header

INVALID_KEY = ApiError(
    401,
    "global/invalid-api-key",
    "API key was invalid, expired, or deleted.",
    "Check your API key or create a new one, then try again.",
)


def rate_limited(wait_s: float) -> ApiError:
    # Lambda's 429 body is undocumented; the usual envelope keeps clients' parsing uniform
    return ApiError(
        429,
        "global/too-many-requests",
        "Too many requests.",
        "Slow down and try again later.",
        headers=retry_after_header(wait_s),
    )


def presented_key(header: str | None) -> str | None:
    """The API key in `Authorization`: Bearer, Basic base64("key:"), or Basic with the raw key."""
    if not header or " " not in header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
            return decoded.split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return value
    return None


def cloud(request: Request) -> Cloud:
    return request.app.state.cloud


def guard(request: Request, sim: Annotated[Cloud, Depends(cloud)]) -> Cloud:
    """Auth, forced faults, and the general rate limit, for every /api/v1 route."""
    key = presented_key(request.headers.get("authorization"))
    expected = sim.config.api_key.get_secret_value()
    if key is None or not hmac.compare_digest(key.encode(), expected.encode()):
        raise INVALID_KEY
    with sim.lock:
        forced = sim.faults.take_forced_status()
    if forced == 429:
        raise rate_limited(1)
    if forced is not None:
        raise internal_error(forced)
    wait = sim.requests.take()
    if wait is not None:
        raise rate_limited(wait)
    return sim


Sim = Annotated[Cloud, Depends(guard)]


async def body_json(request: Request) -> Any:
    try:
        data = json.loads(await request.body() or b"null")
        # a lone surrogate (a JSON escape such as \\ud800) is not text: it could not be answered
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # bad JSON or UTF-8, a 5,000-digit number, deep nesting
        raise invalid(suggestion="The request body is not valid JSON text.") from None
    return data


def parse(model: type[BaseModel], data: Any) -> Any:
    """`data` as `model`, or 400 `global/invalid-parameters` naming each bad field (up to 5)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:5]:
            field = ".".join(str(p) for p in error["loc"]) or "body"
            problems.append(f"{field}: {error['msg'].removeprefix('Value error, ')}")
        raise invalid(suggestion="; ".join(problems)) from None


def ok(data: Any) -> dict[str, Any]:
    return {"data": data}


JsonBody = Annotated[Any, Depends(body_json)]


router = APIRouter(prefix="/api/v1")


@router.get("/instance-types")
def list_instance_types(sim: Sim) -> dict:
    return ok(sim.instance_types())


@router.get("/instances")
def list_instances(sim: Sim, cluster_id: str | None = None) -> dict:
    return ok(sim.list(cluster_id))


@router.get("/instances/{instance_id}")
def get_instance(instance_id: str, sim: Sim) -> dict:
    return ok(sim.get(instance_id))


@router.post("/instances/{instance_id}")
def update_instance(instance_id: str, sim: Sim, data: JsonBody) -> dict:
    req: RenameRequest = parse(RenameRequest, data)
    return ok(sim.rename(instance_id, req.name))


@router.post("/instance-operations/launch")
def launch(sim: Sim, data: JsonBody) -> dict:
    wait = sim.launches.take()
    if wait is not None:
        raise rate_limited(wait)
    req: LaunchRequest = parse(LaunchRequest, data)
    if req.quantity is not None and req.quantity > 1:
        raise invalid("Requested too many instances.")
    instance_id = sim.launch(req)
    _hold_answer(sim, "launch")
    return ok({"instance_ids": [instance_id]})


@router.post("/instance-operations/terminate")
def terminate(sim: Sim, data: JsonBody) -> dict:
    req: InstanceIdsRequest = parse(InstanceIdsRequest, data)
    terminated = sim.terminate(req.instance_ids)
    _hold_answer(sim, "terminate")
    return ok({"terminated_instances": terminated})


def _hold_answer(sim: Cloud, operation: str) -> None:
    """Fault `slow`: the operation is done (the instance exists, or its billing ended); its answer waits. The
    routes are plain functions, run on the server's thread pool, so the wait holds up no other call."""
    delay = sim.answer_delay(operation)
    if delay > 0:
        time.sleep(delay)


@router.post("/instance-operations/restart")
def restart(sim: Sim, data: JsonBody) -> dict:
    req: InstanceIdsRequest = parse(InstanceIdsRequest, data)
    return ok({"restarted_instances": sim.restart(req.instance_ids)})


@router.get("/ssh-keys")
def list_ssh_keys(sim: Sim) -> dict:
    return ok(sim.list_keys())


@router.post("/ssh-keys")
def add_ssh_key(sim: Sim, data: JsonBody) -> dict:
    req: AddKeyRequest = parse(AddKeyRequest, data)
    return ok(sim.add_key(req.name, req.public_key))


@router.delete("/ssh-keys/{key_id}")
def delete_ssh_key(key_id: str, sim: Sim) -> dict:
    sim.delete_key(key_id)
    return ok({})


def error_response(exc: ApiError) -> JSONResponse | HTMLResponse:
    if exc.status in (502, 503, 504):
        # what a proxy in front of an API says: not JSON, which clients must survive too
        return HTMLResponse(
            f"<html><body><h1>{exc.status}</h1>upstream unavailable</body></html>",
            status_code=exc.status,
            headers=exc.headers,
        )
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
