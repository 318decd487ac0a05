"""`trainyard plan SPEC.yaml`: what a run would take and cost on each instance type, before it
runs (`POST /api/v1/plans`); and the check `submit` makes against the spec's budget."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli import context
from orchestrator.cli.client import ApiClient
from orchestrator.cli.errors import BAD_INPUT, NOT_AUTHORIZED, CliError, cli_errors
from orchestrator.cli.output import (
    Col,
    Fitted,
    Format,
    FormatOpt,
    duration,
    fitted_table,
    hourly_price,
    integer,
    message,
    percent,
    print_json,
    show_table,
    terminal_width,
    usd,
)
from orchestrator.spec import AUTO_INSTANCE_TYPE, RunSpec, parse_spec_yaml


class Objective(str, enum.Enum):
    cheapest = "cheapest"
    fastest = "fastest"


ObjectiveOpt = Annotated[
    Objective | None,
    typer.Option("--objective", help="what instance_type: auto optimises (sets compute.objective)"),
]
# What a narrow terminal keeps (lowest rank last to go): the type, what it costs in all, how
# long it takes, its price per hour, the marks; the estimate's details go first.
_COLS = (
    Col("TYPE", keep=True),
    Col("GPUS", cut_to=12, rank=6),
    Col("PRICE/H", right=True, rank=3),
    Col("CAPACITY", cut_to=12, rank=7),
    Col("MB", right=True, rank=12),
    Col("TOK/S", right=True, rank=9),
    Col("MFU", right=True, rank=13),
    Col("SETUP", right=True, rank=14),
    Col("TRAIN", right=True, rank=10),
    Col("EVAL", right=True, rank=15),
    Col("TOTAL", right=True, rank=2),
    Col("RANGE H", right=True, rank=16),
    Col("US$", right=True, rank=1),
    Col("RANGE US$", right=True, rank=8),
    Col("US$/B TOK", right=True, rank=11),
    Col("SOURCE", rank=5),
    Col("MARK", rank=4),
)


def _dollars(value: float | None) -> str:
    return "-" if value is None else usd(value * 100)


def _gpus(r: dict) -> str:
    gpu = r["gpu"] or r["gpu_description"] or "CPU"
    per_node = f"{r['gpus']}x {gpu}" if r["gpus"] else gpu
    if r["gpus"] and r["procs_per_node"] < r["gpus"]:
        per_node = f"{r['procs_per_node']} of {per_node}"
    return per_node if r["nodes"] == 1 else f"{r['nodes']} nodes x {per_node}"


def _marks(r: dict) -> str:
    if not r["fits"]:
        return "does not fit"
    marks = [m for m in ("cheapest", "fastest", "frontier") if r[m]]
    if r["within_budget"] is False:
        marks.append("over budget")
    return ", ".join(marks)


def plan_table(page: dict, rows: list[dict] | None = None, width: int | None = None) -> Fitted:
    """The plan's rows (or `rows` of it): one per instance type, marks in the last column; prices
    and costs in US$."""
    title = (
        f"{page['provider']} plan for {page['spec_name']}: {page['shape']}, {integer(page['train_tokens'])} "
        f"tokens, {integer(page['params'])} params"
    )
    cells = []
    for r in page["rows"] if rows is None else rows:
        band = r["band"]
        cells.append(
            (
                r["instance_type"],
                _gpus(r),
                hourly_price(r),
                ", ".join(r["regions_with_capacity"]) or "none now",
                "-" if r["micro_batch"] is None else str(r["micro_batch"]),
                integer(r["tokens_per_s"]),
                "-" if r["mfu"] is None else f"{r['mfu'] * 100:.1f}%",
                duration(r["setup_s"]),
                duration(r["training_s"]),
                duration(r["eval_s"]),
                duration(r["total_s"]),
                "-" if band is None else f"{band['hours_low']:.1f}-{band['hours_high']:.1f}",
                _dollars(r["usd"]),
                "-" if band is None else f"{_dollars(band['usd_low'])}-{_dollars(band['usd_high'])}",
                _dollars(r["usd_per_billion_tokens"]),
                r["source"] if r["source"] == "none" else f"{r['source']} ±{percent(band and band['relative'])}",
                _marks(r),
            )
        )
    return fitted_table(_COLS, cells, width=width, title=title)


def read_spec(path: Path) -> tuple[str, RunSpec]:
    """The file's text (sent as it is) and the spec, checked here first so a typo costs no call."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", BAD_INPUT) from exc
    return text, parse_spec_yaml(text)


@cli_errors
def plan(
    ctx: typer.Context,
    spec_file: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="the run spec (YAML)")],
    fmt: FormatOpt = Format.table,
    provider: Annotated[
        str | None, typer.Option("--provider", "-p", help="plan on this provider instead of the spec's")
    ] = None,
    probe: Annotated[
        str | None, typer.Option("--probe", metavar="TYPE", help="measure TYPE with a short probe run instead")
    ] = None,
    max_usd: Annotated[float | None, typer.Option("--max-usd", min=0, help="a probe's spending cap")] = None,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes", min=0, help="a probe's time cap")] = None,
) -> None:
    """Estimate a spec on every instance type: GPUs, price, capacity, micro-batch, tokens/s, MFU,
    setup/training/evaluation time, US$ with a band, and where the throughput comes from
    (measured, scaled from other types' records, or the published prior). Marks the cheapest,
    the fastest and the Pareto frontier. Nothing is launched (unless --probe)."""
    text, _spec = read_spec(spec_file)
    if probe is not None:
        from orchestrator.cli.probe import run_probe  # only a probe needs it

        run_probe(ctx, text, probe, max_usd=max_usd, max_minutes=max_minutes, fmt=fmt)
        return
    if max_usd is not None or max_minutes is not None:
        raise CliError("--max-usd and --max-minutes cap a probe: give --probe TYPE with them", BAD_INPUT)
    with context.client() as api:
        page = api.plan(text, provider)
    if fmt is Format.json:
        print_json(page)
        return
    show_table(plan_table(page, width=terminal_width()))
    for r in page["rows"]:  # after the table: a reason is a sentence, too long for a column
        if not r["fits"] or r["notes"]:
            print(f"{r['instance_type']}: {r['reason'] if not r['fits'] else '; '.join(r['notes'])}")
    chosen = page["chosen"]
    message(chosen["reason"] or f"the spec names {chosen['instance_type']}")
    message(
        "bands: measured = the records' spread (at least ±10%), scaled = another type's MFU on this "
        "type's peak (±25%), prior = the seed user's published MFU (±40%); docs/planning.md"
    )


def check_budget(api: ApiClient, spec: RunSpec, *, force: bool) -> None:
    """Before `submit`: show the plan's row for the type the run would get and refuse (exit 2)
    when its estimate is over budget.max_usd, or no type qualifies for `auto`, unless `force`.
    A plan that cannot be made (provider unreachable, not configured) only says so."""
    try:
        page: dict[str, Any] = api.plan(spec.model_dump(mode="json"))
    except CliError as exc:
        if exc.exit_code == NOT_AUTHORIZED:  # the submit would be refused for the same reason
            raise
        message(f"no cost estimate ({exc}); submitting without one")
        return
    chosen = page["chosen"]
    row = next((r for r in page["rows"] if r["instance_type"] == chosen["instance_type"]), None)
    if row is None:
        reason = chosen["reason"] or "no instance type to estimate"
        if not _is_auto(spec):  # placement says the same, naming what it tried
            message(f"warning: {reason}")
            return
        _refuse(reason, force)  # the run would fail at placement with this very line
        return
    show_table(plan_table(page, [row], terminal_width(sys.stderr)), stderr=True)
    if _is_auto(spec):
        message(chosen["reason"])
    if not row["fits"]:
        message(f"warning: the plan says {row['instance_type']} does not fit: {row['reason']}")
    limit = spec.budget.max_usd
    if limit is not None and row["usd"] is not None and row["usd"] > limit:
        band = row["band"]
        _refuse(
            f"the plan estimates US${row['usd']:,.2f} (US${band['usd_low']:,.2f}-{band['usd_high']:,.2f}, "
            f"{row['source']}) and {duration(row['total_s'])} on {row['instance_type']}: over budget.max_usd "
            f"{limit:g}; raise the budget, pick another type (trainyard plan), or --force",
            force,
        )


def _is_auto(spec: RunSpec) -> bool:
    return spec.compute.instance_type == AUTO_INSTANCE_TYPE


def _refuse(reason: str, force: bool) -> None:
    if force:
        message(f"{reason}; submitting anyway (--force)")
        return
    raise CliError(reason, BAD_INPUT)
