"""The client commands: submit, runs, status, logs, cancel. All of them talk to the REST API."""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli import context
from orchestrator.cli.client import ApiClient
from orchestrator.cli.errors import BAD_INPUT, RUN_NOT_SUCCEEDED, CliError, cli_errors
from orchestrator.cli.output import (
    Format,
    FormatOpt,
    message,
    out,
    print_json,
    run_table,
    runs_table,
    show_table,
    terminal_width,
)
from orchestrator.cli.plan import ObjectiveOpt, check_budget
from orchestrator.cli.watch import RETRY_FOR_S, Reconnecting, RetryForOpt, reattach_on_interrupt, watch_run
from orchestrator.db.models import RunStatus
from orchestrator.spec import RunSpec, parse_spec_yaml, validate_spec

RunArg = Annotated[str, typer.Argument(help="run id, as `trainyard runs` shows it")]
WatchOpt = Annotated[bool, typer.Option("--watch", "-w", help="show live progress until the run ends")]
FOLLOW_POLL_S = 1.0


def load_spec(path: Path) -> RunSpec:
    """Read and validate a YAML spec locally, so a typo is reported before anything is sent."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", BAD_INPUT) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"cannot read {path}: not UTF-8 text (byte {exc.start})", BAD_INPUT) from exc
    return parse_spec_yaml(text)


def show_run(run: dict, fmt: Format) -> None:
    if fmt is Format.json:
        print_json(run)
    else:
        out.print(run_table(run))


def finish_watch(run: dict, fmt: Format) -> None:
    """Print the final state; a run that did not succeed is a failed command (exit 7)."""
    show_run(run, fmt)
    if run["status"] != RunStatus.succeeded.value:
        reason = f": {run['status_reason']}" if run.get("status_reason") else ""
        raise CliError(f"run {run['id']} ended {run['status']}{reason}", RUN_NOT_SUCCEEDED)


@cli_errors
def submit(
    spec_file: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="the run spec (YAML)")],
    watch: WatchOpt = False,
    fmt: FormatOpt = Format.table,
    objective: ObjectiveOpt = None,
    force: Annotated[bool, typer.Option("--force", help="submit even when the plan's estimate is over budget")] = False,
    retry_for: RetryForOpt = RETRY_FOR_S,
) -> None:
    """Submit a run from a YAML spec; prints the run id (or the run, with --format json).

    First shows the plan's estimate for the instance type the run would get (for instance_type:
    auto, the one compute.objective picks now) and refuses (exit 2) when it is over
    budget.max_usd, unless --force."""
    spec = load_spec(spec_file)
    if objective is not None:
        spec = validate_spec(
            {**spec.model_dump(), "compute": {**spec.compute.model_dump(), "objective": objective.value}}
        )
    with context.client() as api:
        check_budget(api, spec, force=force)
        run = api.submit(spec.model_dump(mode="json"))
        message(f"submitted run {run['id']} ({run['name']})")
        if watch:
            with reattach_on_interrupt(run["id"]):
                last = watch_run(api, run["id"], retry_for_s=retry_for)
            finish_watch(last, fmt)
            return
    if fmt is Format.json:
        print_json(run)
    else:
        print(run["id"])
        message(f"follow it with: trainyard status {run['id']} --watch")


@cli_errors
def runs(
    status: Annotated[
        list[RunStatus] | None, typer.Option("--status", "-s", help="only runs in this status (repeatable)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """List runs, newest first."""
    with context.client() as api:
        page = api.list_runs([s.value for s in status or []], limit, offset)
    if fmt is Format.json:
        print_json(page)
        return
    show_table(runs_table(page["runs"], terminal_width()))
    shown = len(page["runs"])
    if page["total"] > offset + shown:
        message(f"{shown} of {page['total']} runs shown; more with --offset {offset + shown}")


@cli_errors
def status(
    run_id: RunArg, watch: WatchOpt = False, fmt: FormatOpt = Format.table, retry_for: RetryForOpt = RETRY_FOR_S
) -> None:
    """Show a run's status, progress, losses and cost; --watch follows it live."""
    with context.client() as api:
        if watch:
            with reattach_on_interrupt(run_id):
                last = watch_run(api, run_id, retry_for_s=retry_for)
            finish_watch(last, fmt)
        else:
            show_run(api.get_run(run_id), fmt)


@cli_errors
def cancel(run_id: RunArg, fmt: FormatOpt = Format.table) -> None:
    """Ask for a run to be cancelled (its nodes are terminated by the controller)."""
    with context.client() as api:
        run = api.cancel(run_id)
    message(f"cancel requested for run {run_id}")
    show_run(run, fmt)


def _emit_chunks(chunks: list[dict], fmt: Format) -> None:
    for chunk in chunks:
        if fmt is Format.json:
            print_json(chunk, one_line=True)
        else:
            sys.stdout.write(chunk["text"])
    sys.stdout.flush()


@cli_errors
def logs(
    run_id: RunArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the run ends")] = False,
    tail: Annotated[int | None, typer.Option("--tail", "-n", min=1, help="only the last N lines")] = None,
    fmt: FormatOpt = Format.table,
    retry_for: RetryForOpt = RETRY_FOR_S,
) -> None:
    """Print the run's log: data preparation, the trainer, the evaluation (with --format json: one
    JSON object per log chunk)."""
    with context.client() as api:
        if not follow:
            _print_log(api, run_id, tail, fmt, follow=False, calls=Reconnecting(api.base_url, 0))
            return
        with reattach_on_interrupt(run_id):
            _print_log(api, run_id, tail, fmt, follow=True, calls=Reconnecting(api.base_url, retry_for))


def _print_log(
    api: ApiClient, run_id: str, tail: int | None, fmt: Format, *, follow: bool, calls: Reconnecting
) -> None:
    page = calls.call(partial(api.logs, run_id, tail=tail))
    if tail and fmt is Format.table:
        # chunks hold whole and partial lines; keep the last N lines of what came back
        text = "".join(c["text"] for c in page["chunks"])
        lines = text.splitlines(keepends=True)[-tail:]
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
    else:
        _emit_chunks(page["chunks"], fmt)
    cursor = page["next_after_id"]
    while True:
        while page["has_more"]:
            page = calls.call(partial(api.logs, run_id, after_id=cursor))
            _emit_chunks(page["chunks"], fmt)
            cursor = page["next_after_id"]
        if not follow or (page["run_terminal"] and not page["chunks"]):
            return
        time.sleep(FOLLOW_POLL_S)
        page = calls.call(partial(api.logs, run_id, after_id=cursor))
        _emit_chunks(page["chunks"], fmt)
        cursor = page["next_after_id"]
