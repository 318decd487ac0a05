"""`trainyard compare RUN... [--baseline gpt2]`: judge runs' IFT answers together, print the table.

The service does the work (POST /comparisons): it submits or reuses the baseline runs, waits for
them, and judges in its own process. This command polls GET /comparisons/{id}, showing on stderr
what it waits for (a baseline run's status, then the judging), and prints the table on stdout:
model, test loss, IFT score +- its 95% CI, cost. `trainyard comparison ID` shows one again.
"""

from __future__ import annotations

import enum
import time
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli import context
from orchestrator.cli.client import ApiClient
from orchestrator.cli.errors import RUN_NOT_SUCCEEDED, CliError, cli_errors
from orchestrator.cli.output import Format, FormatOpt, err, message, num, out, print_json, usd

POLL_S = 1.0
PLAIN_REPEAT_S = 30.0
ENDED = ("succeeded", "failed")


class Baseline(str, enum.Enum):
    gpt2 = "gpt2"
    gpt2_medium = "gpt2-medium"


class Mode(str, enum.Enum):
    comparative = "comparative"
    pointwise = "pointwise"


WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the judging and print the table")]


def _score(row: dict) -> str:
    if row["score"] is None:
        return "-"
    if row["ci_low"] is None or row["ci_high"] is None:
        return f"{row['score']:.1f}"
    return f"{row['score']:.1f} ± {(row['ci_high'] - row['ci_low']) / 2:.1f}"


def comparison_table(c: dict) -> Table:
    table = Table(box=None, header_style="bold")
    missing = any(r["n_missing"] for r in c["rows"])
    columns = ["MODEL", "RUN", "TEST LOSS", "IFT SCORE ± 95% CI", "ITEMS"] + (["MISSING"] if missing else []) + ["COST"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("MODEL", "RUN") else "right")
    for r in c["rows"]:
        cells = [
            r["model"],
            r["run_id"],
            num(r["test_loss"]),
            _score(r),
            "-" if r["n_items"] is None else str(r["n_items"]),
        ]
        if missing:
            cells.append(str(r["n_missing"] or 0))
        table.add_row(*cells, usd(r["cost"]["cents"]))
    return table


def progress_line(c: dict) -> str:
    """What the comparison waits for, in one line."""
    head = f"comparison {c['id']}: {c['status']}"
    if c["status"] == "pending":
        waiting = [r for r in c["rows"] if r["run_status"] != "succeeded"]
        if waiting:
            return (
                head
                + " - waiting for "
                + ", ".join(
                    f"{'baseline ' if r['baseline'] else ''}{r['model']} (run {r['run_id']}: {r['run_status']})"
                    for r in waiting
                )
            )
        return head + " - waiting for a worker to judge it"
    if c["status"] == "running":
        return head + f" - judging {len(c['rows'])} models ({c['mode']}, k={c['k']})"
    return head + (f" ({c['status_reason']})" if c.get("status_reason") else "")


def wait_for(api: ApiClient, comparison_id: str) -> dict:
    """Poll until the comparison has ended; its state then. Progress goes to stderr."""
    c = api.get_comparison(comparison_id)
    if err.is_terminal:
        with err.status(progress_line(c)) as status:
            while c["status"] not in ENDED:
                time.sleep(POLL_S)
                c = api.get_comparison(comparison_id)
                status.update(progress_line(c))
        return c
    last, printed = "", 0.0
    while True:
        line = progress_line(c)
        if line != last or time.monotonic() - printed > PLAIN_REPEAT_S:
            message(line)
            last, printed = line, time.monotonic()
        if c["status"] in ENDED:
            return c
        time.sleep(POLL_S)
        c = api.get_comparison(comparison_id)


def show(c: dict, fmt: Format) -> None:
    """Print the table (or the JSON); a failed comparison is a failed command (exit 7)."""
    if fmt is Format.json:
        print_json(c)
    else:
        out.print(comparison_table(c))
        if c.get("judge") and c.get("usage"):
            j, u = c["judge"], c["usage"]
            message(
                f"judged by {j['model']} ({j['mode']}, k={j['k']}, seed {j['seed']}): "
                f"{u['calls_made']} calls made, {u['calls_cached']} from the cache, "
                f"{usd(u['cost_cents'])}; every judgement: GET /api/v1/comparisons/{c['id']}/report"
            )
    if c["status"] == "failed":
        raise CliError(f"comparison {c['id']} failed: {c.get('status_reason') or 'no reason given'}", RUN_NOT_SUCCEEDED)


@cli_errors
def compare(
    runs: Annotated[
        list[str], typer.Argument(metavar="RUN...", help="run ids; each must have succeeded with evaluation.ift on")
    ],
    baseline: Annotated[
        list[Baseline] | None,
        typer.Option("--baseline", "-b", help="also OpenAI's GPT-2 weights, evaluated the same way (repeatable)"),
    ] = None,
    mode: Annotated[
        Mode, typer.Option(help="comparative: one judge call per item for all models; pointwise: the book's prompt")
    ] = Mode.comparative,
    k: Annotated[int, typer.Option("--k", min=1, max=10, help="judge repeats per item")] = 3,
    seed: Annotated[int, typer.Option(help="seed of the answers' shuffled order")] = 0,
    wait: WaitOpt = True,
    fmt: FormatOpt = Format.table,
) -> None:
    """Judge runs' IFT answers together; print model, test loss, IFT score ± CI and cost."""
    body = {"runs": runs, "baselines": [b.value for b in baseline or []], "mode": mode.value, "k": k, "seed": seed}
    with context.client() as api:
        c = api.compare(body)
        message(f"comparison {c['id']} of {', '.join(r['model'] for r in c['rows'])}")
        if wait:
            c = wait_for(api, c["id"])
        elif fmt is Format.table:
            print(c["id"])
            message(f"see it with: trainyard comparison {c['id']} --wait")
            return
    show(c, fmt)


@cli_errors
def comparison(
    comparison_id: Annotated[
        str, typer.Argument(metavar="COMPARISON", help="comparison id, as `trainyard compare` printed it")
    ],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait until it has ended")] = False,
    fmt: FormatOpt = Format.table,
) -> None:
    """Show a comparison: its status and table."""
    with context.client() as api:
        c = wait_for(api, comparison_id) if wait else api.get_comparison(comparison_id)
    if not wait and c["status"] not in ENDED:
        message(progress_line(c))
    show(c, fmt)
