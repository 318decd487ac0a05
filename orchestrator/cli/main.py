"""`trainyard`: the command-line entry point. Wiring only; the commands live beside it."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli import (
    checkpoints,
    compare,
    context,
    export,
    instances,
    plan,
    providers,
    quickstart,
    runs,
    server,
    throughput,
    token,
)
from orchestrator.cli.errors import EXIT_CODES_HELP

app = typer.Typer(
    name="trainyard",
    help="Train GPT-2-class models on rented GPUs; know what each run cost and how good it is.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    api_url: Annotated[
        str | None, typer.Option("--api-url", help="the service [default: TRAINYARD_API_URL or http://127.0.0.1:8000]")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
) -> None:
    context.state.api_url = api_url
    context.set_debug(debug)


app.command()(server.serve)
app.command()(server.worker)
app.add_typer(server.db_app, name="db")
app.add_typer(token.token_app, name="token")
app.command()(runs.submit)
app.command("runs")(runs.runs)
app.command()(runs.status)
app.command()(runs.logs)
app.command()(runs.cancel)
app.command()(checkpoints.checkpoints)
app.command()(export.export)
app.command()(compare.compare)
app.command()(compare.comparison)
app.command()(quickstart.quickstart)
app.command("instance-types")(providers.instance_types)
app.command("instances")(instances.instances)
app.command("plan")(plan.plan)
app.command()(throughput.throughput)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(providers.sim)
