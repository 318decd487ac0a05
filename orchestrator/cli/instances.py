"""`trainyard instances`: every machine the renting providers show, and who owns it."""

from __future__ import annotations

from rich.table import Table

from orchestrator.cli import context
from orchestrator.cli.errors import cli_errors
from orchestrator.cli.output import Format, FormatOpt, duration, message, out, print_json, usd


def instances_table(page: dict) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("PROVIDER", "NAME", "TYPE", "REGION", "STATUS", "OWNER", "AGE", "PRICE/H", "SPENT"):
        table.add_column(col, justify="right" if col in {"AGE", "PRICE/H", "SPENT"} else "left")
    for i in page["instances"]:
        table.add_row(
            i["provider"],
            i["name"] or i["id"],
            i["instance_type"],
            i["region"] or "-",
            i["status"],
            i["owner"],
            duration(i["age_s"]),
            usd(i["price_cents_per_hour"]),
            "-" if i["cost_cents"] is None else usd(i["cost_cents"]),
        )
    return table


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
    out.print(instances_table(page))
