"""The web app: `create_app(settings)` wires the API, the error edge, the dashboard, and the door
in front of them all: trusted hosts (api/hosts.py), then who may call (api/auth.py).

Settings are passed in (never read from globals here) so tests and `serve` choose the database.
It does not check the schema: `trainyard serve` does that before it builds the app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware

from orchestrator.api.auth import AuthMiddleware
from orchestrator.api.database import open_database
from orchestrator.api.errors import install_error_handlers
from orchestrator.api.hosts import TrustedHostMiddleware, trusted_hosts
from orchestrator.api.limits import LimitsMiddleware
from orchestrator.api.openapi import install_openapi
from orchestrator.api.routes import api_router
from orchestrator.api.version import VERSION
from orchestrator.auth import is_loopback_host
from orchestrator.settings import Settings
from orchestrator.ui.routes import router as ui_router


def create_app(settings: Settings) -> FastAPI:
    database = open_database(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await database.dispose()

    app = FastAPI(
        title="trainyard",
        version=VERSION,
        summary="Train GPT-2-class models on rented GPUs; know what each run cost and how good it is.",
        openapi_url="/openapi.json",
        # the interactive docs pages load their scripts from a CDN, which this service must not need
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.engine = database.engine
    # JSON and the dashboard's files gzipped; a checkpoint's bytes stream as they are (incompressible)
    app.add_middleware(
        GZipMiddleware,
        minimum_size=1024,
        exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/octet-stream"),
    )
    app.add_middleware(LimitsMiddleware, settings=settings)  # 413 over 1 MiB; specs checked at the door
    # added last, so they run first: a foreign Host is refused before anyone is asked who they are
    app.add_middleware(AuthMiddleware, database=database, require_tokens=not is_loopback_host(settings.host))
    app.add_middleware(TrustedHostMiddleware, allowed=trusted_hosts(settings))
    install_error_handlers(app)
    install_openapi(app)  # every error status of every operation documented, in the one error shape
    app.include_router(api_router)
    app.include_router(ui_router)
    return app
