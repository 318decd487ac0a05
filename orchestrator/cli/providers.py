"""Provider commands: `instance-types` (asks the service) and `sim` (runs the Lambda simulator)."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli import context
from orchestrator.cli.client import ApiClient
from orchestrator.cli.errors import BAD_INPUT, CliError, cli_errors
from orchestrator.cli.output import (
    Col,
    Fitted,
    Format,
    FormatOpt,
    fitted_table,
    hourly_price,
    message,
    print_json,
    show_table,
    terminal_width,
)
from orchestrator.settings import get_settings

#: without --provider: the first of these the service is configured for (local always is)
DEFAULT_PROVIDERS = ("lambda", "ssh", "local")

_TYPE_COLS = (
    Col("TYPE", keep=True),
    Col("GPUS", right=True, rank=2),
    Col("GPU", cut_to=16, rank=3),
    Col("PRICE/H", right=True, rank=1),
    Col("REGIONS WITH CAPACITY", cut_to=24, rank=4),
)


def instance_types_table(page: dict, width: int | None = None) -> Fitted:
    """One line per type; prices in US$ per hour."""
    rows = [
        (
            t["name"],
            str(t["gpus"]),
            t["gpu_description"],
            hourly_price(t),
            ", ".join(t["regions_with_capacity"]) or "none now",
        )
        for t in page["instance_types"]
    ]
    return fitted_table(_TYPE_COLS, rows, width=width, title=f"{page['provider']} instance types")


def default_instance_types(api: ApiClient) -> dict:
    """The types of the first provider in DEFAULT_PROVIDERS that the service is configured for: a
    provider it has no settings for answers 422 naming them, and the next one is asked."""
    skipped: list[tuple[str, str]] = []
    for provider in DEFAULT_PROVIDERS:
        try:
            page = api.instance_types(provider)
        except CliError as exc:
            if exc.exit_code != BAD_INPUT or provider == DEFAULT_PROVIDERS[-1]:
                raise  # a configured provider that failed (502), or no service: say so
            skipped.append((provider, str(exc)))
            continue
        if skipped:
            names = " nor ".join(name for name, _ in skipped)
            message(f"showing provider {provider}: the service is not configured for {names} (--provider picks one)")
            for name, why in skipped:
                message(f"  {name}: {why}")
        return page
    raise AssertionError("unreachable: the last provider's error is raised")


@cli_errors
def instance_types(
    provider: Annotated[
        str | None,
        typer.Option(
            "--provider",
            "-p",
            help="local, lambda or ssh [default: lambda where the service has its key, else ssh where it has "
            "hosts, else local]",
        ),
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """List a provider's instance types: GPUs, price per hour (US$), regions with capacity now."""
    with context.client() as api:
        page = api.instance_types(provider) if provider is not None else default_instance_types(api)
    if fmt is Format.json:
        print_json(page)
    else:
        show_table(instance_types_table(page, terminal_width()))


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
