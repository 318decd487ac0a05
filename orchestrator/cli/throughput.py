"""`trainyard throughput`: the throughput records runs and probes left (`GET /api/v1/throughput`),
what `trainyard plan` estimates from."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli import context
from orchestrator.cli.errors import BAD_INPUT, CliError, cli_errors
from orchestrator.cli.output import (
    Col,
    Fitted,
    Format,
    FormatOpt,
    duration,
    fitted_table,
    integer,
    message,
    print_json,
    show_table,
    terminal_width,
    when,
)
from orchestrator.planning.shape import shape_of
from orchestrator.spec import parse_spec_yaml

_COLS = (
    Col("CREATED", rank=9),
    Col("SOURCE", rank=8),
    Col("RUN", keep=True),
    Col("TYPE", keep=True),
    Col("GPUS", cut_to=16, rank=6),
    Col("SHAPE", cut_to=20, rank=5),
    Col("MB", right=True, rank=4),
    Col("TOK/S", right=True, rank=1),
    Col("MFU", right=True, rank=2),
    Col("LAUNCH>STEP", right=True, rank=3),
    Col("EVAL", right=True, rank=7),
    Col("TOKENS", right=True, rank=10),
)


class Source(str, enum.Enum):
    run = "run"
    probe = "probe"


def mfu_text(mfu: float | None) -> str:
    if mfu is None:
        return "-"
    # tiny models (and CPUs standing in for GPUs) reach fractions of a percent: never show 0.00%
    pct = mfu * 100
    return f"{pct:.2f}%" if pct >= 0.01 or pct == 0 else f"{pct:.1e}%"


def gpus_text(r: dict[str, Any]) -> str:
    per_node = f"{r['gpus_per_node']}x {r['gpu']}" if r["gpu"] else f"{r['gpus_per_node']} proc"
    return per_node if r["nodes"] == 1 else f"{r['nodes']} nodes x {per_node}"


def shape_text(r: dict[str, Any]) -> str:
    extra = f" {json.dumps(r['overrides'], sort_keys=True)}" if r["overrides"] else ""
    return f"{r['preset']}{extra} seq {r['seq_len']} {r['precision']}"


def throughput_table(records: list[dict[str, Any]], width: int | None = None) -> Fitted:
    rows = []
    for r in records:
        rows.append(
            (
                when(r["created_at"]),
                r["source"],
                r["run_id"] or "-",
                r["instance_type"],
                gpus_text(r),
                shape_text(r),
                str(r["micro_batch"]),
                integer(r["tokens_per_s"]),
                mfu_text(r["mfu"]),
                duration(r["launch_to_first_step_s"]),
                duration(r["eval_s"]),
                integer(r["tokens_trained"]),
            )
        )
    return fitted_table(_COLS, rows, width=width)


def _shape_of_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", BAD_INPUT) from exc
    return shape_of(parse_spec_yaml(text)).key


@cli_errors
def throughput(
    instance_type: Annotated[str | None, typer.Option("--instance-type", "-t", help="only this type")] = None,
    shape: Annotated[str | None, typer.Option("--shape", help="only this shape key (a plan's shape_key)")] = None,
    spec_file: Annotated[
        Path | None, typer.Option("--spec", metavar="SPEC.yaml", help="only records of this spec's model shape")
    ] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="only the record of this run or probe")] = None,
    source: Annotated[Source | None, typer.Option("--source", help="only runs' or probes' records")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    fmt: FormatOpt = Format.table,
) -> None:
    """List throughput records, newest first: type, GPUs, model shape, the micro-batch that ran,
    steady tokens/s, MFU, launch to first step, evaluation time (what `trainyard plan` uses)."""
    if spec_file is not None:
        key = _shape_of_file(spec_file)
        if shape is not None and shape != key:
            raise CliError(f"--shape {shape} is not the shape of {spec_file} ({key}); give one of them", BAD_INPUT)
        shape = key
    with context.client() as api:
        page = api.throughput(
            instance_type=instance_type,
            shape=shape,
            run_id=run_id,
            source=source.value if source is not None else None,
            limit=limit,
        )
    if fmt is Format.json:
        print_json(page)
        return
    if not page["records"]:
        message("no throughput records yet: a run that trains, or `trainyard plan SPEC --probe TYPE`, leaves one")
        return
    show_table(throughput_table(page["records"], terminal_width()))
