"""Wiring: the FastAPI app over a `Cloud`, and a uvicorn server to run it in a thread or a process.

`create_app` only wires (routers, error handlers, the lifespan that starts the cloud's ticker and
destroys every machine on shutdown). `SimulatorServer` runs the app on a loopback port in a
background thread; tests use it, and `python -m provision.simulator` runs the same app in the
foreground.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from typing import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from provision.simulator import admin, api, api_account
from provision.simulator.cloud import Cloud, SimConfig
from provision.simulator.errors import ApiError, internal_error, route_not_found

log = logging.getLogger("provision.simulator")


def create_app(sim: Cloud) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sim.start()
        try:
            yield
        finally:
            sim.shutdown()

    app = FastAPI(title="Lambda Cloud API (trainyard simulator)", lifespan=lifespan)
    app.state.cloud = sim
    app.include_router(api.router)
    app.include_router(api_account.router)
    app.include_router(admin.router)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> Response:
        return api.error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err = route_not_found()
        else:  # 405 and the like, in Lambda's envelope
            err = ApiError(exc.status_code, "global/invalid-parameters", str(exc.detail))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> Response:
        # a bug in the simulator still answers in Lambda's envelope, never a plain-text 500
        log.error("simulator bug: %r", exc, exc_info=exc)
        return JSONResponse(internal_error().body(), status_code=500)

    return app


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of `app` serves at `path` (for a 405's Allow header)."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^/}]+\}", "[^/]+", template), path):
            methods.update(m.upper() for m in operations)
    return sorted(methods)


class SimulatorServer:
    """The simulator on `host:port` (port 0: a free one) in a background thread.

    `start()` blocks until it answers; `stop()` shuts it down, which destroys every machine.
    Usable as a context manager.
    """

    def __init__(self, config: SimConfig, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.cloud = Cloud(config)
        self.app = create_app(self.cloud)
        # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only
        # then, and without it every response waits ~40 ms for a delayed ACK
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level=log_level, lifespan="on"))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> "SimulatorServer":
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="simulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self._sock.close()

    def __enter__(self) -> "SimulatorServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
