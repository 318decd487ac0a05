"""`trainyard quickstart`: the README's main command.

On a fresh machine: migrate the embedded database (or the TRAINYARD_* one), start `trainyard
serve` in a subprocess (API + controller), submit a real gpt2-tiny train on the shipped corpus
(quickstart.yaml), show live progress, and print the results (tokens, test loss, wall time,
cost) and the dashboard's address. It stops the service it started when done, unless
--keep-serving; with --api-url it uses that running service instead and starts nothing.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from orchestrator.cli import context
from orchestrator.cli.client import ApiClient
from orchestrator.cli.errors import FAILURE, RUN_NOT_SUCCEEDED, CliError, cli_errors
from orchestrator.cli.output import Format, FormatOpt, message, out, print_json, results_table
from orchestrator.cli.runs import load_spec
from orchestrator.cli.watch import RETRY_FOR_S, watch_run
from orchestrator.settings import Settings, get_settings

SPEC_PATH = Path(__file__).with_name("quickstart.yaml")
START_TIMEOUT_S = 60.0
#: a run nobody picks up in this long means there is no controller
PENDING_TIMEOUT_S = 120.0


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServiceProcess:
    """`trainyard serve` as a child process, its output going to a log file in the data dir."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1"):
        self.host = host
        self.port = settings.port if _port_free(host, settings.port) else _free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log_path = settings.data_dir / "quickstart-serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "orchestrator.cli", "serve", "--host", self.host, "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            # own session: Ctrl-C in the terminal reaches us, and we decide whether it stops
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CliError(
                    f"`trainyard serve` exited with {self.proc.returncode}: {self._last_log_line()} "
                    f"(full log: {self.log_path})",
                    FAILURE,
                )
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise CliError(
            f"`trainyard serve` did not answer within {START_TIMEOUT_S:.0f}s (log: {self.log_path})", FAILURE
        )

    def _last_log_line(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _prepare_database(settings: Settings) -> None:
    from orchestrator.db.migrations import upgrade

    message(f"quickstart: database {settings.resolved_database_url.split('@')[-1]} -> latest schema")
    upgrade(settings.resolved_database_url)


@cli_errors
def quickstart(
    keep_serving: Annotated[bool, typer.Option("--keep-serving", help="leave the service running afterwards")] = False,
    fmt: FormatOpt = Format.table,
) -> None:
    """Train a small GPT-2 on this machine end to end and show what it cost and how good it is."""
    settings = get_settings()
    spec = load_spec(SPEC_PATH)
    service: ServiceProcess | None = None
    url = context.state.api_url
    if url is None:
        _prepare_database(settings)
        service = ServiceProcess(settings)
        message(f"quickstart: starting `trainyard serve` on {service.url} (log: {service.log_path})")
        service.start()
        url = service.url
    started = time.monotonic()
    try:
        with ApiClient(url, settings.api_timeout_s) as api:
            run = api.submit(spec.model_dump(mode="json"))
            message(f"quickstart: submitted run {run['id']} ({spec.name}); watching it (Ctrl-C stops watching)")
            # the service this command started will not come back once it died: no retrying it
            run = watch_run(
                api,
                run["id"],
                pending_timeout_s=PENDING_TIMEOUT_S,
                retry_for_s=0 if service is not None else RETRY_FOR_S,
            )
        dashboard = f"{url}/runs/{run['id']}"
        if fmt is Format.json:
            print_json({"run": run, "dashboard": dashboard, "elapsed_s": round(time.monotonic() - started, 1)})
        else:
            out.print(results_table([run]))
        message(f"dashboard: {dashboard}")
    finally:
        if service is not None:
            if keep_serving and service.proc is not None and service.proc.poll() is None:
                message(
                    f"quickstart: the service keeps running at {url} (pid {service.proc.pid}); "
                    f"stop it with: kill {service.proc.pid}"
                )
            else:
                service.stop()
                message(
                    "quickstart: stopped the service it started; `trainyard serve` shows these "
                    f"results again at http://{settings.host}:{settings.port}/"
                )
    if run["status"] != "succeeded":
        reason = f": {run['status_reason']}" if run.get("status_reason") else ""
        raise CliError(f"run {run['id']} ended {run['status']}{reason}", RUN_NOT_SUCCEEDED)
