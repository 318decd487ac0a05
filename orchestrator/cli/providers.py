"""Provider commands: `instance-types` (asks the service) and `sim` (runs the Lambda simulator)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli import context
from orchestrator.cli.errors import BAD_INPUT, CliError, cli_errors
from orchestrator.cli.output import Format, FormatOpt, out, print_json, usd
from orchestrator.settings import get_settings


def instance_types_table(page: dict) -> Table:
    table = Table(box=None, header_style="bold", title=f"{page['provider']} instance types")
    for col in ("TYPE", "GPUS", "GPU", "PRICE/H", "REGIONS WITH CAPACITY"):
        table.add_column(col, justify="right" if col in {"GPUS", "PRICE/H"} else "left")
    for t in page["instance_types"]:
        table.add_row(
            t["name"],
            str(t["gpus"]),
            t["gpu_description"],
            usd(t["price_cents_per_hour"]),
            ", ".join(t["regions_with_capacity"]) or "none now",
        )
    return table


@cli_errors
def instance_types(
    provider: Annotated[str, typer.Option("--provider", "-p", help="local, lambda or ssh")] = "lambda",
    fmt: FormatOpt = Format.table,
) -> None:
    """List a provider's instance types: GPUs, price per hour, regions with capacity now."""
    with context.client() as api:
        page = api.instance_types(provider)
    if fmt is Format.json:
        print_json(page)
    else:
        out.print(instance_types_table(page))


@cli_errors
def sim(ctx: typer.Context) -> None:
    """Run the Lambda Cloud simulator (same REST API; instances are real sshd on 127.0.0.x).

    Options go to `python -m provision.simulator` (see `trainyard sim --help-sim`); the state
    directory defaults to <data dir>/sim. Point the service at it with TRAINYARD_LAMBDA_API_URL
    and the key written to <state dir>/api-key as TRAINYARD_LAMBDA_API_KEY.
    """
    from provision.simulator.__main__ import main as simulator_main

    args = list(ctx.args)
    if args[:1] == ["--help-sim"]:
        args = ["--help"]
    elif "--state-dir" not in args:
        args += ["--state-dir", str(get_settings().data_dir / "sim")]
    try:
        code = simulator_main(args)
    except SystemExit as exc:  # argparse: --help exits 0, a bad option exits 2 after its message
        code = exc.code if isinstance(exc.code, int) else BAD_INPUT
    if code:
        raise CliError(f"the simulator stopped with exit code {code}", BAD_INPUT if code == 2 else code)
