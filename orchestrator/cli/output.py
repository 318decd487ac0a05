"""How the CLI prints: data to stdout (a rich table, or JSON with `--format json`), messages and
progress to stderr, so `trainyard runs --format json | jq` always sees clean data.

One formatter per kind of value, used by every command: `when` for times (`2026-11-30 14:03:05
UTC`), `usd` for money, `hourly_price` for prices (US$ per hour), `percent` for progress,
`duration` for spans. Tables that can outgrow a terminal are built with `fitted_table`: it drops
the least important columns until the rest fit the terminal's width (COLUMNS, or the terminal),
never cuts an id, and `show_table` says what it left out.
"""

from __future__ import annotations

import enum
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, TextIO

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.db.models import TERMINAL_VALUES

#: off a terminal, with no COLUMNS, rows stay whole (data piped to a file or a pager)
PIPE_WIDTH = 200


def _console_width(stream: TextIO) -> int | None:
    # None lets rich read COLUMNS or the terminal itself; a pipe without COLUMNS would otherwise
    # get rich's 80 columns and wrap every row
    return None if stream.isatty() or _columns_env() is not None else PIPE_WIDTH


def _columns_env() -> int | None:
    value = os.environ.get("COLUMNS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


out = Console(soft_wrap=True, width=_console_width(sys.stdout))
err = Console(stderr=True, soft_wrap=True, width=_console_width(sys.stderr))


class Format(str, enum.Enum):
    table = "table"
    json = "json"


FormatOpt = Annotated[Format, typer.Option("--format", help="table for people, json for scripts")]


def message(text: str) -> None:
    err.print(text, highlight=False, markup=False)


def print_json(data: Any, *, one_line: bool = False) -> None:
    # plain write, not rich: no wrapping or colour codes in data meant for other programs
    sys.stdout.write(json.dumps(data, indent=None if one_line else 2) + "\n")
    sys.stdout.flush()


def num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def integer(x: float | None) -> str:
    return "-" if x is None else f"{round(x):,}"


def usd(cents: float) -> str:
    """US$ from US cents: `$12.34`; under a cent, four decimals (a judge call costs that little)."""
    return f"${cents / 100:,.2f}" if cents >= 1 or cents == 0 else f"${cents / 100:.4f}"


def hourly_price(row: dict) -> str:
    """A price per hour in US$ (`$23.92`, under a PRICE/H heading), never in cents. Reads the API's
    `price_usd_per_hour` where an answer has it, else its `price_cents_per_hour`."""
    dollars = row.get("price_usd_per_hour")
    if dollars is None:
        cents = row.get("price_cents_per_hour")
        if cents is None:
            return "-"
        dollars = cents / 100
    return f"${dollars:,.2f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def when(value: str | datetime | None) -> str:
    """Every time the CLI prints, in one style: `2026-11-30 14:03:05 UTC`. The API's times are
    ISO 8601 with their offset; one without an offset is UTC, as the database stores every time."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            # Python 3.10's fromisoformat knows neither `Z` nor fractions other than 3 or 6 digits
            t = datetime.fromisoformat(_iso_for_py310(value))
        except ValueError:
            return value  # not a time after all: show it as it came rather than fail the command
    else:
        t = value
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso_for_py310(text: str) -> str:
    text = text.strip().replace("Z", "+00:00").replace("z", "+00:00")
    if "." not in text:
        return text
    head, rest = text.split(".", 1)
    digits = len(rest) - len(rest.lstrip("0123456789"))
    return f"{head}.{rest[:digits][:6].ljust(6, '0')}{rest[digits:]}"


def budget_text(r: dict) -> str:
    """Where the run is headed against its budget: "projected $X of $Y budget", the hours of its
    time cap, and whether it is stopping for them; "-" when there is nothing to say."""
    b = r.get("budget") or {}
    projected = b.get("projected_usd")
    shown = usd(projected * 100) if projected is not None else "-"
    parts = []
    if b.get("max_usd") is not None:
        cap = float(b["max_usd"])
        parts.append(f"projected {shown} of {usd(cap * 100) if cap * 100 % 1 == 0 else f'${cap:g}'} budget")
    elif projected is not None:
        parts.append(f"projected {shown}")
    if b.get("max_hours") is not None:
        parts.append(f"{b.get('hours') or 0:.2f} h of {b['max_hours']:g} h")
    if b.get("stop_requested_at") and r.get("status") not in TERMINAL_VALUES:
        parts.append("stopping for the budget (checkpoint, then test loss)")
    return ", ".join(parts) or "-"


def percent(fraction: float | None) -> str:
    """A fraction as a whole percentage, rounded down: 0.999 is 99% (not done yet), and 100% only
    once the fraction is 1.0. The epsilon keeps binary floats honest (0.29 * 100 is 28.999...)."""
    if fraction is None:
        return "-"
    return f"{math.floor(fraction * 100 + 1e-9)}%"


# -- tables that fit the terminal ----------------------------------------------------------------
#: the cells between two columns (rich's padding of one on each side, none at the table's edges)
GAP = 2


@dataclass(frozen=True)
class Col:
    """A column of a fitted table. `keep`: never dropped and never cut (ids, the status);
    `cut_to`: may be cut (ending in ...) down to this many cells before columns are dropped;
    `rank`: columns with the highest rank are dropped first."""

    header: str
    right: bool = False
    keep: bool = False
    cut_to: int | None = None
    rank: int = 0


@dataclass(frozen=True)
class Fitted:
    table: Table
    #: cells the table takes
    width: int
    #: cells the table would take with every column
    full_width: int
    #: the headers of the columns left out, in table order
    dropped: tuple[str, ...]
    #: the width it was fitted to (None: no limit)
    limit: int | None


def terminal_width(stream: TextIO | None = None) -> int | None:
    """Columns to fit: COLUMNS when set, else the terminal's; None off a terminal (no limit)."""
    columns = _columns_env()
    if columns is not None:
        return columns
    stream = stream or sys.stdout
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):  # no terminal after all, or a closed stream
        pass
    return None


def fitted_table(
    cols: Sequence[Col], rows: Sequence[Sequence[str]], *, width: int | None, title: str | None = None
) -> Fitted:
    """A table of `rows` (one string per column) no wider than `width`: columns that may be cut are
    cut first (down to their `cut_to`), then the highest-ranked columns are dropped until the rest
    fit. A `keep` column is never dropped nor cut, even when that leaves the table too wide."""
    natural = [max([cell_len(c.header)] + [cell_len(row[i]) for row in rows]) for i, c in enumerate(cols)]
    least = [min(w, c.cut_to) if c.cut_to is not None else w for c, w in zip(cols, natural, strict=True)]
    shown = list(range(len(cols)))

    def span(widths: Sequence[int], which: Sequence[int]) -> int:
        return sum(widths[i] for i in which) + GAP * max(len(which) - 1, 0)

    full = span(natural, shown)
    if width is not None:
        by_rank = sorted((i for i, c in enumerate(cols) if not c.keep), key=lambda i: (-cols[i].rank, -i))
        for i in by_rank:
            if span(least, shown) <= width:
                break
            shown.remove(i)
        # a wide column dropped late may have made room for narrower ones dropped before it:
        # the most important of those come back while they fit
        for i in reversed(by_rank):
            if i not in shown and span(least, sorted([*shown, i])) <= width:
                shown = sorted([*shown, i])
    widths = list(natural)
    if width is not None:
        excess = span(widths, shown) - width
        for i in shown:  # cut what may be cut, left to right, only as much as needed
            if excess <= 0:
                break
            if cols[i].cut_to is not None:
                cut = min(excess, widths[i] - least[i])
                widths[i] -= cut
                excess -= cut
    table = Table(box=None, header_style="bold", pad_edge=False, title=title)
    for i in shown:
        c = cols[i]
        table.add_column(
            Text(c.header),
            justify="right" if c.right else "left",
            no_wrap=True,
            overflow="ellipsis",
            min_width=widths[i],
            max_width=widths[i],
        )
    for row in rows:
        # Text, not markup: a name may hold [brackets] that rich would read as styles
        table.add_row(*(Text(row[i]) for i in shown))
    dropped = tuple(cols[i].header for i in range(len(cols)) if i not in shown)
    return Fitted(table, span(widths, shown), full, dropped, width)


def show_table(fitted: Fitted, *, stderr: bool = False) -> None:
    """Print a fitted table (stdout, or stderr where it is a message, not data) on a console at
    least as wide as the table, so nothing squeezes or re-wraps it, then, on stderr, which columns
    it left out and how to see them."""
    width = max(fitted.width, fitted.limit or PIPE_WIDTH)
    Console(stderr=stderr, soft_wrap=True, width=width).print(fitted.table)
    if fitted.dropped:
        message(f"left out to fit {fitted.limit} columns: {', '.join(fitted.dropped)}")
        message(f"all of them: --format json, or a terminal {fitted.full_width} columns wide")


_RUN_COLS = (
    Col("RUN", keep=True),
    Col("NAME", cut_to=16, rank=2),
    Col("STATUS", keep=True),
    Col("PROGRESS", right=True, rank=3),
    Col("TOKENS", right=True, rank=11),
    Col("TRAIN", right=True, rank=7),
    Col("VAL", right=True, rank=9),
    Col("TEST", right=True, rank=6),
    Col("TOK/S", right=True, rank=10),
    Col("COST", right=True, rank=4),
    Col("ETA", right=True, rank=5),
    Col("CREATED", rank=8),
)


def runs_table(runs: list[dict], width: int | None = None) -> Fitted:
    """`trainyard runs`: every run on one line. To fit `width`, the name is cut first, then go
    tokens, tokens/s, validation loss, created, train loss, ...; the run id and status stay."""
    rows = []
    for r in runs:
        p = r["progress"]
        rows.append(
            (
                r["id"],
                r["name"],
                r["status"],
                percent(p["fraction"]),
                integer(p["tokens_done"]),
                num(p["train_loss"]),
                num(p["val_loss"]),
                num(p["test_loss"]),
                integer(p["tokens_per_s"]),
                usd(r["cost"]["cents"]),
                duration(p["eta_s"]),
                when(r["created_at"]),
            )
        )
    return fitted_table(_RUN_COLS, rows, width=width)


def run_table(r: dict) -> Table:
    p = r["progress"]
    table = Table(box=None, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    status = r["status"] + (f" ({r['status_reason']})" if r.get("status_reason") else "")
    if r.get("cancel_requested") and r["status"] not in TERMINAL_VALUES:
        status += " - cancel requested"
    target = integer(p["target_tokens"])
    rows = [
        ("run", r["id"]),
        ("name", r["name"]),
        ("submitted by", r.get("submitted_by") or "-"),
        ("status", status),
        ("tokens", f"{integer(p['tokens_done'])} / {target} ({percent(p['fraction'])})"),
        ("step", str(p["step"])),
        ("train loss", num(p["train_loss"])),
        ("val loss", num(p["val_loss"])),
        ("test loss", num(p["test_loss"])),
        ("tokens/s", integer(p["tokens_per_s"])),
        ("cost", usd(r["cost"]["cents"])),
        ("budget", budget_text(r)),
        ("ETA", duration(p["eta_s"])),
        ("wall time", duration(r["wall_s"])),
        ("created", when(r["created_at"])),
        ("started", when(r.get("started_at"))),
        ("finished", when(r.get("finished_at"))),
    ]
    for key, value in rows:
        table.add_row(Text(key), Text(value))
    return table


def results_table(runs: list[dict]) -> Table:
    """The quickstart's summary: what was trained, how good it is, what it took and cost."""
    table = Table(title="results", header_style="bold")
    for col in ("run", "name", "status", "tokens", "test loss", "wall time", "cost"):
        table.add_column(col, justify="left" if col in {"run", "name", "status"} else "right")
    for r in runs:
        p = r["progress"]
        table.add_row(
            r["id"],
            r["name"],
            r["status"],
            integer(p["tokens_done"]),
            num(p["test_loss"]),
            duration(r["wall_s"]),
            usd(r["cost"]["cents"]),
        )
    return table
