"""`trainyard instances`: every machine the renting providers show, and who owns it."""

from __future__ import annotations

from orchestrator.cli import context
from orchestrator.cli.errors import cli_errors
from orchestrator.cli.output import (
    Col,
    Fitted,
    Format,
    FormatOpt,
    duration,
    fitted_table,
    hourly_price,
    message,
    print_json,
    show_table,
    terminal_width,
    usd,
)

# the instance's name and its owner (a run id) are ids: never cut, never left out
_COLS = (
    Col("PROVIDER", rank=8),
    Col("NAME", keep=True),
    Col("TYPE", cut_to=16, rank=3),
    Col("REGION", rank=7),
    Col("STATUS", rank=1),
    Col("OWNER", keep=True),
    Col("AGE", right=True, rank=6),
    Col("PRICE/H", right=True, rank=4),
    Col("SPENT", right=True, rank=2),
)


def instances_table(page: dict, width: int | None = None) -> Fitted:
    rows = [
        (
            i["provider"],
            i["name"] or i["id"],
            i["instance_type"],
            i["region"] or "-",
            i["status"],
            i["owner"],
            duration(i["age_s"]),
            hourly_price(i),
            "-" if i["cost_cents"] is None else usd(i["cost_cents"]),
        )
        for i in page["instances"]
    ]
    return fitted_table(_COLS, rows, width=width)


@cli_errors
def instances(fmt: FormatOpt = Format.table) -> None:
    """List every instance the renting providers show (Lambda, when configured): the run that
    owns it, or "orphan" (named like trainyard's, owned by no live run: the orphan sweep
    terminates it) or "unknown" (not trainyard's); its status, age, price and spend so far."""
    with context.client() as api:
        page = api.instances()
    if fmt is Format.json:
        print_json(page)
        return
    for p in page["providers"]:
        if p["error"]:
            message(f"{p['name']}: could not list its instances: {p['error']}")
    if not page["providers"]:
        message("no provider that rents machines is configured (set TRAINYARD_LAMBDA_API_KEY for Lambda)")
    show_table(instances_table(page, terminal_width()))
