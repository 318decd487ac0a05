"""Live progress of one run, by polling `GET /runs/{id}`: shared by `status --watch`,
`submit --watch` and `quickstart`.

On a terminal: a rich progress bar (tokens, loss, tokens/s, cost, ETA, the projected cost against
the budget) on stderr. Elsewhere (CI logs, pipes): one plain line on stderr when the status
changes and at most every few seconds otherwise, so a log file shows progress without a
screenful of redraws.
"""

from __future__ import annotations

import time

from rich.progress import BarColumn, Progress, TextColumn

from orchestrator.cli.client import ApiClient
from orchestrator.cli.errors import FAILURE, CliError
from orchestrator.cli.output import budget_text, duration, err, integer, message, num, usd
from orchestrator.db.models import TERMINAL_VALUES

PLAIN_EVERY_S = 5.0
QUIET_REPEAT_S = 60.0


def _fields(run: dict) -> dict:
    p = run["progress"]
    return dict(
        status=run["status"],
        loss=num(p["train_loss"]),
        val=num(p["val_loss"]),
        tps=integer(p["tokens_per_s"]),
        cost=usd(run["cost"]["cents"]),
        eta=duration(p["eta_s"]),
        tokens=f"{integer(p['tokens_done'])}/{integer(p['target_tokens'])}",
        budget=budget_text(run),
    )


def _plain_line(run: dict) -> str:
    f = _fields(run)
    budget = f"  ({f['budget']})" if f["budget"] != "-" else ""
    return (
        f"{run['id']} {f['status']}: tokens {f['tokens']}  loss {f['loss']}  val {f['val']}  "
        f"{f['tps']} tok/s  {f['cost']}  ETA {f['eta']}{budget}"
    )


class _PendingGuard:
    """Fails the watch when nothing picks the run up: a service started with --no-controller
    and no `trainyard worker` would otherwise leave the user watching `pending` forever."""

    def __init__(self, limit_s: float | None):
        self.limit_s, self.since = limit_s, time.monotonic()

    def check(self, run: dict) -> None:
        if self.limit_s is None:
            return
        if run["status"] != "pending":
            self.limit_s = None
        elif time.monotonic() - self.since > self.limit_s:
            raise CliError(
                f"run {run['id']} is still pending after {self.limit_s:.0f}s: no controller is picking "
                f"it up (`trainyard serve` runs one unless --no-controller; or start `trainyard worker`)",
                FAILURE,
            )


def watch_run(client: ApiClient, run_id: str, interval_s: float = 1.0, pending_timeout_s: float | None = None) -> dict:
    """Poll until the run is terminal; return its last state."""
    guard = _PendingGuard(pending_timeout_s)
    if err.is_terminal:
        return _watch_bar(client, run_id, interval_s, guard)
    return _watch_plain(client, run_id, interval_s, guard)


def _watch_bar(client: ApiClient, run_id: str, interval_s: float, guard: _PendingGuard) -> dict:
    columns = (
        TextColumn("[bold]{task.fields[status]:<13}"),
        BarColumn(bar_width=30),
        TextColumn("{task.fields[tokens]} tok"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TextColumn("{task.fields[cost]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TextColumn("{task.fields[budget]}"),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        run = client.get_run(run_id)
        task = bar.add_task(run_id, total=run["progress"]["target_tokens"], **_fields(run))
        while True:
            p = run["progress"]
            bar.update(task, total=p["target_tokens"], completed=p["tokens_done"], **_fields(run))
            if run["status"] in TERMINAL_VALUES:
                return run
            guard.check(run)
            time.sleep(interval_s)
            run = client.get_run(run_id)


def _watch_plain(client: ApiClient, run_id: str, interval_s: float, guard: _PendingGuard) -> dict:
    last_line, last_print = "", 0.0
    while True:
        run = client.get_run(run_id)
        line, now = _plain_line(run), time.monotonic()
        # a new line when something changed, at most every few seconds (status changes at once);
        # an unchanged line again only after a long quiet spell, to show the watch is alive
        changed = line != last_line
        status_changed = line.split(":", 1)[0] != last_line.split(":", 1)[0]
        if (
            status_changed
            or run["status"] in TERMINAL_VALUES
            or (changed and now - last_print >= PLAIN_EVERY_S)
            or now - last_print >= QUIET_REPEAT_S
        ):
            message(line)
            last_line, last_print = line, now
        if run["status"] in TERMINAL_VALUES:
            return run
        guard.check(run)
        time.sleep(interval_s)
