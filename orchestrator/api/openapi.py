"""The published schema (`/openapi.json`) names every error an operation can answer, each in the
one error shape (api/errors.py: ErrorBody). The routes declare what is theirs (404 for an unknown
id, 409, 502, 503); what the layers around every route add is filled in here, once for all:

    400  a Host header the service does not answer to (api/hosts.py)     every operation
    401  no token, or one that is not valid (api/auth.py)                every one not open to all
    403  a token whose scope is too low, a sign-in without our Origin    every one that changes
    404  nothing with this id                                            every one with a path parameter
    413  a request body over 1 MiB (api/limits.py)                       every one that takes a body
    422  a request that does not validate, each field named              every one with a parameter or body
    500  an unexpected error                                             every operation

and FastAPI's own 422 schema is replaced by ErrorBody, the shape the service really sends.

Links (`add_links`): an operation that makes an object (POST /runs, POST /comparisons) links to
the operations on the object itself (its path, then `/{id}`: GET /runs/{run_id}), so a client or
a stateful fuzzer (schemathesis, tests/orchestrator/test_schemathesis.py) can follow a new run.
Not to the pages under it: some rightly answer 404 for a new object (no IFT answers yet).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

from orchestrator import auth
from orchestrator.api.auth import required_scope
from orchestrator.api.errors import ErrorBody

_REF = "#/components/schemas/{model}"
_DESCRIPTIONS = {
    400: "the request names a host this service does not answer to",
    401: "no token, or one that is not valid",
    403: "the token's scope does not allow this",
    404: "nothing with this id",
    409: "the request does not fit the object's current state",
    413: "the request body is over 1 MiB",
    422: "the request does not validate; every field at fault is named",
    500: "an unexpected error (the service log has the details)",
    502: "a provider or outside service failed",
    503: "a service this needs is not configured",
}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def error_statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses the layers around every route can give this operation."""
    statuses = {400, 500}
    scope = required_scope(method.upper(), path)
    if scope is not None:
        statuses.add(401)
        if scope is not auth.Scope.read:
            statuses.add(403)
    if "{" in path:
        statuses.add(404)
    if "requestBody" in operation:
        statuses |= {413, 422}
    if operation.get("parameters"):
        statuses.add(422)
    return statuses


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (FastAPI's OpenAPI document) with every operation's error responses filled in."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorBody.model_json_schema(ref_template=_REF)
    components.update(error_schema.pop("$defs", {}))
    components["ErrorBody"] = error_schema
    content = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}}
    for path, item in schema.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status in error_statuses(path, method, operation):
                responses.setdefault(str(status), {"description": _DESCRIPTIONS[status]})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = content
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape: never sent
        components.pop(unused, None)
    return schema


def add_links(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with a link from each made object (a POST's 200 or 201 body) to the operations
    on it, whose parameter the body holds (by the parameter's name, else its `id`)."""
    paths = schema.get("paths", {})
    components = schema.get("components", {}).get("schemas", {})
    for path, item in paths.items():
        for status, response in item.get("post", {}).get("responses", {}).items():
            ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
            fields = components.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
            if status not in ("200", "201") or not fields:
                continue
            for under, operations in paths.items():
                named = re.fullmatch(re.escape(path) + r"/\{(\w+)\}", under)
                if named is None:
                    continue
                param = named.group(1)
                field = param if param in fields else "id" if "id" in fields else None
                for method in _METHODS:
                    operation = operations.get(method)
                    if field is None or operation is None or "operationId" not in operation:
                        continue
                    response.setdefault("links", {})[operation["operationId"]] = {
                        "operationId": operation["operationId"],
                        "parameters": {param: f"$response.body#/{field}"},
                    }
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve FastAPI's document with the errors and links filled in (built once, when first asked)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_links(document_errors(build()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customize it
