"""The commands that run the service itself: `serve`, `worker`, `db upgrade`.

`serve` is the API, the dashboard and (unless --no-controller) the controller, in one process:
uvicorn in the main thread, the controller's Worker in a background thread. On SQLite (the
embedded default) both bring the database to the migrations' head themselves, saying so in the
log; on PostgreSQL they refuse to start unless it is at the head (`trainyard db upgrade`).

`serve` checks what it can before it says it is serving: the settings (a bad port: exit 2), that
a service with no API tokens listens on loopback only (docs/security.md; else exit 2), and that
its port is free (it binds the socket itself and hands it to uvicorn; in use: exit 1).
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from sqlalchemy import Engine

from orchestrator import auth
from orchestrator.cli.errors import BAD_INPUT, FAILURE, CliError, cli_errors
from orchestrator.cli.output import Format, FormatOpt, message, print_json
from orchestrator.db.session import make_engine, make_sessionmaker
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:  # pragma: no cover - imported when needed: the controller is optional
    from orchestrator.controller.worker import Worker

log = logging.getLogger("trainyard.serve")

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # alembic narrates its plugin setup at INFO on every schema check; only its problems matter here
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


def checked_engine(settings: Settings) -> Engine:
    """An engine on the configured database, after checking its schema is current: a SQLite
    database is migrated first (a fresh data dir has none yet), PostgreSQL only by `db upgrade`."""
    from orchestrator.db.migrations import ensure_current, upgrade_sqlite

    engine = make_engine(settings.resolved_database_url)
    try:
        migrated = upgrade_sqlite(engine)
        if migrated is not None:
            before, head = migrated
            log.info(
                "migrated the SQLite database %s from %s to revision %s",
                _describe_db(engine),
                f"revision {before}" if before else "nothing (a new database)",
                head,
            )
        ensure_current(engine)
    except Exception:
        engine.dispose()
        raise
    return engine


def _describe_db(engine: Engine) -> str:
    # hide_password: the URL may carry PostgreSQL credentials, which must never be logged
    return engine.url.render_as_string(hide_password=True)


def _serve_settings(host: str | None, port: int | None) -> Settings:
    try:
        settings = get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "TRAINYARD_" + "_".join(str(p) for p in first["loc"]).upper()
        raise CliError(f"invalid setting {name}: {first['msg']}", BAD_INPUT) from None
    settings = settings.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    if not 0 <= settings.port <= 65535:
        raise CliError(f"invalid port {settings.port}: use 1-65535 (0: any free port)", BAD_INPUT)
    return settings


def _check_exposure(settings: Settings, engine: Engine) -> None:
    """Without a token anyone who reaches the port could spend money: then loopback only."""
    if auth.is_loopback_host(settings.host):
        return
    with make_sessionmaker(engine)() as session:
        if auth.any_active_token(session):
            return
    raise CliError(
        f"refusing to listen on {settings.host}: this service has no API tokens, so anyone who reaches it "
        f"could use it; create one (`trainyard token create --name NAME --scope admin`) or listen on 127.0.0.1",
        BAD_INPUT,
    )


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is one clear line before any
    `serving on`; uvicorn serves on it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart through TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                f"port {port} on {host} is in use (another `trainyard serve`?); stop it or choose another "
                f"with --port / TRAINYARD_PORT",
                FAILURE,
            ) from None
        if isinstance(exc, socket.gaierror):
            raise CliError(f"cannot listen on {host}: no such address ({exc.strerror})", BAD_INPUT) from None
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", FAILURE) from None
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def make_worker(settings: Settings, engine: Engine) -> Worker:
    try:
        from orchestrator.controller.worker import Worker
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("orchestrator.controller"):
            raise
        raise CliError(
            "the controller is not part of this install (orchestrator.controller.worker is missing); "
            "use `trainyard serve --no-controller` to serve the API only",
            FAILURE,
        ) from exc
    return Worker(settings, make_sessionmaker(engine))


@cli_errors
def serve(
    host: Annotated[
        str | None, typer.Option(help="address to listen on [default: TRAINYARD_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port, 0 for any free one [default: TRAINYARD_PORT or 8000]")] = None,
    controller: Annotated[
        bool, typer.Option("--controller/--no-controller", help="also run the controller in this process")
    ] = True,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="log every HTTP request")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    fmt: FormatOpt = Format.table,
) -> None:
    """Run the REST API, the dashboard and the controller."""
    _setup_logging(log_level)
    settings = _serve_settings(host, port)
    engine = checked_engine(settings)
    try:
        _check_exposure(settings, engine)
        sock = _bind(settings.host, settings.port)
    except BaseException:
        engine.dispose()
        raise
    settings = settings.model_copy(update={"port": sock.getsockname()[1]})  # what port 0 chose
    import uvicorn  # only now: a refusal above comes without the web stack's import time

    from orchestrator.api.app import create_app

    worker = make_worker(settings, engine) if controller else None
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
            access_log=access_log,
            server_header=False,
        )
    )
    stop = threading.Event()
    thread = None
    if worker is not None:

        def run_controller() -> None:
            try:
                worker.run_forever(stop)
            except Exception:
                # a service whose controller died must not look healthy: stop, let a supervisor restart it
                log.exception("the controller stopped with an error; shutting the service down")
                server.should_exit = True

        thread = threading.Thread(target=run_controller, name="trainyard-controller", daemon=True)
        thread.start()
    url = f"http://{_url_host(settings.host)}:{settings.port}"
    if fmt is Format.json:
        print_json({"url": url, "dashboard": url + "/", "controller": worker is not None}, one_line=True)
    message(
        f"trainyard serving on {url} (database {_describe_db(engine)}; controller "
        f"{'on' if worker else 'off'}); dashboard at {url}/"
    )
    if settings.host in ("0.0.0.0", "::") and not settings.trusted_hosts:
        message(
            "note: only requests naming localhost or a loopback address are answered until "
            "TRAINYARD_TRUSTED_HOSTS names this machine as others reach it (docs/security.md)"
        )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        stop.set()
        if thread is not None:
            thread.join(timeout=30)
        engine.dispose()


@cli_errors
def worker(
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    fmt: FormatOpt = Format.table,
) -> None:
    """Run only the controller (several workers may share one PostgreSQL database)."""
    _setup_logging(log_level)
    settings = get_settings()
    engine = checked_engine(settings)
    w = make_worker(settings, engine)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if fmt is Format.json:
        print_json({"worker_id": w.owner, "database": engine.dialect.name}, one_line=True)
    message(f"trainyard worker {w.owner} on {_describe_db(engine)}")
    try:
        w.run_forever(stop)
    finally:
        engine.dispose()


@db_app.command("upgrade")
@cli_errors
def db_upgrade(fmt: FormatOpt = Format.table) -> None:
    """Create or migrate the database schema to the latest revision."""
    from orchestrator.db.migrations import current_revision, upgrade

    settings = get_settings()
    url = settings.resolved_database_url
    upgrade(url)
    engine = make_engine(url)
    try:
        revision, where = current_revision(engine), _describe_db(engine)
    finally:
        engine.dispose()
    if fmt is Format.json:
        print_json({"revision": revision, "database": engine.dialect.name})
    message(f"database {where} is at revision {revision}")
