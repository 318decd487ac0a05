"""How the CLI prints: data to stdout (a rich table, or JSON with `--format json`), messages and
progress to stderr, so `trainyard runs --format json | jq` always sees clean data."""

from __future__ import annotations

import enum
import json
import sys
from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.db.models import TERMINAL_VALUES

# Off a terminal rich would wrap tables at 80 columns; data piped to a file should keep its rows whole.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


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
    return f"${cents / 100:.2f}" if cents >= 1 or cents == 0 else f"${cents / 100:.4f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


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
    return "-" if fraction is None else f"{fraction * 100:.0f}%"


def _since(iso: str) -> str:
    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return duration((datetime.now(timezone.utc) - t).total_seconds()) + " ago"


def runs_table(runs: list[dict]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in (
        "RUN",
        "NAME",
        "STATUS",
        "PROGRESS",
        "TOKENS",
        "TRAIN",
        "VAL",
        "TEST",
        "TOK/S",
        "COST",
        "ETA",
        "CREATED",
    ):
        table.add_column(
            col,
            justify="right"
            if col in {"PROGRESS", "TOKENS", "TRAIN", "VAL", "TEST", "TOK/S", "COST", "ETA"}
            else "left",
        )
    for r in runs:
        p = r["progress"]
        table.add_row(
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
            _since(r["created_at"]),
        )
    return table


def run_table(r: dict) -> Table:
    p = r["progress"]
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    status = r["status"] + (f" ({r['status_reason']})" if r.get("status_reason") else "")
    if r.get("cancel_requested") and r["status"] not in TERMINAL_VALUES:
        status += " - cancel requested"
    target = integer(p["target_tokens"])
    rows = [
        ("run", r["id"]),
        ("name", r["name"]),
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
        ("created", r["created_at"]),
    ]
    for key, value in rows:
        table.add_row(key, value)
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
