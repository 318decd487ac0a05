"""The names the service answers to (the Host header): a defence against DNS rebinding, where a
web page makes its own name resolve to 127.0.0.1 and then calls the service as if same-origin.
Such a request names the attacker's host, so it is refused with 400 before anything else runs.

Trusted: localhost, any loopback address, the address the service listens on, and
`settings.trusted_hosts` (what it is reached by from elsewhere: a DNS name, a public address).
Starlette's TrustedHostMiddleware does the same, but misreads bracketed IPv6 hosts (`[::1]:8000`)
and answers in plain text rather than the API's error body.
"""

from __future__ import annotations

import ipaddress

import starlette.types as asgi
from fastapi.responses import JSONResponse

from orchestrator.api.errors import error_body
from orchestrator.settings import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("", "0.0.0.0", "::")


def trusted_hosts(settings: Settings) -> frozenset[str]:
    bound = settings.host.strip("[]").lower()
    names = {*LOOPBACK_NAMES, *(h.strip("[]").lower() for h in settings.trusted_hosts)}
    return frozenset(names | ({bound} if bound not in _WILDCARDS else set()))


def host_name(header: str) -> str:
    """The host of a Host header, without its port: `[::1]:8000` -> `::1`, `a.b:80` -> `a.b`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_loopback_address(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class TrustedHostMiddleware:
    def __init__(self, app: asgi.ASGIApp, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "http":
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            name = host_name(header)
            if not (name in self.allowed or _is_loopback_address(name)):
                # the name is not echoed: it is the caller's text
                body = error_body(
                    "this service does not answer to the host the request names (TRAINYARD_TRUSTED_HOSTS)"
                )
                await JSONResponse(body, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)
