"""Live progress of one run, by polling `GET /runs/{id}`: shared by `status --watch`,
`submit --watch` and `quickstart`.

On a terminal: a rich progress bar (tokens, loss, tokens/s, cost, ETA, the projected cost against
the budget) on stderr. Elsewhere (CI logs, pipes): one plain line on stderr when the status
changes and at most every few seconds otherwise, so a log file shows progress without a
screenful of redraws.

A watch outlives the service's restarts: a request that finds no service is retried (tenacity)
for `--retry-for` seconds, with a note on stderr, before the watch gives up with exit 5. Ctrl-C
stops only the watch: the run goes on in the service, and the hint says how to come back to it
(exit 130).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import typer
from rich.progress import BarColumn, Progress, TextColumn
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential

from orchestrator.cli import context
from orchestrator.cli.client import ApiClient
from orchestrator.cli.errors import FAILURE, INTERRUPTED, UNREACHABLE, CliError
from orchestrator.cli.output import budget_text, duration, err, integer, message, num, terminal_width, usd
from orchestrator.db.models import TERMINAL_VALUES

PLAIN_EVERY_S = 5.0
QUIET_REPEAT_S = 60.0
#: how long a watch keeps asking a service that does not answer: long enough for a restart (or
#: an upgrade) of `trainyard serve`, short enough that a script learns of a dead service
RETRY_FOR_S = 120.0
#: a terminal narrower than this gets the short progress line
NARROW_BELOW = 120
#: while retrying, how often the note says the service is still unreachable
STILL_DOWN_EVERY_S = 30.0

RetryForOpt = Annotated[
    float,
    typer.Option(
        "--retry-for",
        min=0,
        metavar="SECONDS",
        help="while watching, keep retrying a service that does not answer this long before giving up (exit 5); 0: never retry",
    ),
]
T = TypeVar("T")


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, CliError) and exc.exit_code == UNREACHABLE


class Reconnecting:
    """Calls to the service that ride out an outage (a restart, a network blip): a call that finds
    no service is tried again with backoff for up to `retry_for_s`, saying so on stderr once, then
    every STILL_DOWN_EVERY_S, and once more when the service answers again. Only "unreachable" is
    retried: an answer (a 404, a 422) is the service's word and ends the command as before."""

    def __init__(self, where: str, retry_for_s: float = RETRY_FOR_S):
        self.where, self.retry_for_s = where, retry_for_s
        self._down_since: float | None = None
        self._noted_at = 0.0

    def call(self, fn: Callable[[], T]) -> T:
        if self.retry_for_s <= 0:
            return fn()
        retrying = Retrying(
            retry=retry_if_exception(_unreachable),
            stop=stop_after_delay(self.retry_for_s),
            wait=wait_exponential(multiplier=0.5, min=0.5, max=5.0),
            before_sleep=self._note,
            reraise=True,
        )
        try:
            result = retrying(fn)
        except CliError as exc:
            if _unreachable(exc) and self._down_since is not None:
                raise CliError(
                    f"gave up after retrying for {duration(self.retry_for_s)} (--retry-for): {exc}", UNREACHABLE
                ) from exc
            raise
        if self._down_since is not None:
            message(f"the service at {self.where} answers again (after {duration(self._elapsed())}); watching on")
            self._down_since = None
        return result

    def _elapsed(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def _note(self, _state: RetryCallState) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = self._noted_at = now
            message(
                f"service unreachable at {self.where}, retrying for up to {duration(self.retry_for_s)}… "
                f"(Ctrl-C stops watching; the run goes on)"
            )
        elif now - self._noted_at >= STILL_DOWN_EVERY_S:
            self._noted_at = now
            message(f"service still unreachable after {duration(self._elapsed())}, retrying…")


def reattach_hint(run_id: str) -> list[str]:
    """The commands that come back to a run the user stopped watching."""
    base = "trainyard" + (f" --api-url {context.state.api_url}" if context.state.api_url else "")
    commands = [
        (f"{base} status {run_id} --watch", "watch it again"),
        (f"{base} logs {run_id} --follow", "follow its log"),
        (f"{base} cancel {run_id}", "stop it (its nodes are terminated)"),
    ]
    pad = max(len(c) for c, _ in commands)
    return [f"stopped watching; run {run_id} goes on in the service"] + [
        f"  {c.ljust(pad)}  {what}" for c, what in commands
    ]


@contextmanager
def reattach_on_interrupt(run_id: str) -> Iterator[None]:
    """Ctrl-C while watching `run_id`: say that the run goes on and how to come back, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        for line in reattach_hint(run_id):
            message(line)
        raise typer.Exit(INTERRUPTED) from None


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


def watch_run(
    client: ApiClient,
    run_id: str,
    interval_s: float = 1.0,
    pending_timeout_s: float | None = None,
    retry_for_s: float = RETRY_FOR_S,
) -> dict:
    """Poll until the run is terminal; return its last state. A service that does not answer is
    asked again for up to `retry_for_s` (then CliError, exit 5)."""
    guard = _PendingGuard(pending_timeout_s)
    calls = Reconnecting(client.base_url, retry_for_s)

    def get_run() -> dict:
        return calls.call(lambda: client.get_run(run_id))

    if err.is_terminal:
        return _watch_bar(get_run, run_id, interval_s, guard)
    return _watch_plain(get_run, interval_s, guard)


def _watch_bar(get_run: Callable[[], dict], run_id: str, interval_s: float, guard: _PendingGuard) -> dict:
    # the whole line is about 120 cells; a narrower terminal gets a shorter bar and no tokens/s
    # or budget (`trainyard status RUN` shows both), so the line never wraps into a redraw mess
    wide = (terminal_width(sys.stderr) or NARROW_BELOW) >= NARROW_BELOW
    columns = (
        TextColumn("[bold]{task.fields[status]:<13}"),
        BarColumn(bar_width=30 if wide else 12),
        TextColumn("{task.fields[tokens]} tok"),
        TextColumn("loss {task.fields[loss]}"),
        *([TextColumn("{task.fields[tps]} tok/s")] if wide else []),
        TextColumn("{task.fields[cost]}"),
        TextColumn("ETA {task.fields[eta]}"),
        *([TextColumn("{task.fields[budget]}")] if wide else []),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        run = get_run()
        task = bar.add_task(run_id, total=run["progress"]["target_tokens"], **_fields(run))
        while True:
            p = run["progress"]
            bar.update(task, total=p["target_tokens"], completed=p["tokens_done"], **_fields(run))
            if run["status"] in TERMINAL_VALUES:
                return run
            guard.check(run)
            time.sleep(interval_s)
            run = get_run()


def _watch_plain(get_run: Callable[[], dict], interval_s: float, guard: _PendingGuard) -> dict:
    last_line, last_print = "", 0.0
    while True:
        run = get_run()
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
