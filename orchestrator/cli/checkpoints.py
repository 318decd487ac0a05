"""`trainyard checkpoints RUN` lists a run's checkpoints; `trainyard checkpoints download RUN
[STEP]` fetches one from the artifact store through the service (`--ift`: the run's
instruction-fine-tuned weights, kept as a checkpoint of kind ift).

A download is verified the way the trainer verifies its own checkpoints: every file's SHA-256 is
checked against the manifest while it streams in, into a `.tmp-` folder beside the destination;
the manifest is written last and the folder renamed into place, so what lies at the destination is
a complete checkpoint that `python -m trainer.evaluate` or a resumed run can use, or nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from orchestrator.cli import context
from orchestrator.cli.client import ApiClient
from orchestrator.cli.errors import BAD_INPUT, CONFLICT, FAILURE, CliError, cli_errors
from orchestrator.cli.output import Format, FormatOpt, err, integer, message, num, out, print_json

MANIFEST = "manifest.json"


@cli_errors
def checkpoints(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="RUN | download RUN [STEP]",
            help="a run id to list its checkpoints; `download RUN [STEP]` fetches one (default: the newest stored)",
        ),
    ],
    dest: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="folder to create for the checkpoint (default: ./<run>-<step folder>)"),
    ] = None,
    ift: Annotated[
        bool, typer.Option("--ift", help="download the instruction-fine-tuned weights (kind ift), not training's")
    ] = False,
    fmt: FormatOpt = Format.table,
) -> None:
    """List a run's checkpoints, or download one (verified) from the artifact store."""
    if args and args[0] == "download":
        if len(args) not in (2, 3):
            raise CliError("usage: trainyard checkpoints download RUN [STEP]", BAD_INPUT)
        step = None
        if len(args) == 3:
            if not args[2].isdigit():
                raise CliError(f"STEP must be a step number, not {args[2]!r}", BAD_INPUT)
            step = int(args[2])
        return download(args[1], step, dest, fmt, "ift" if ift else "train")
    if len(args) != 1:
        raise CliError("usage: trainyard checkpoints RUN, or trainyard checkpoints download RUN [STEP]", BAD_INPUT)
    with context.client() as api:
        page = api.checkpoints(args[0])
    if fmt is Format.json:
        print_json(page)
        return
    table = Table(title=f"checkpoints of run {page['run_id']}")
    for col in ("step", "kind", "tokens", "val loss", "size", "state", "uri"):
        table.add_column(col, justify="right" if col in ("step", "tokens", "val loss", "size") else "left")
    for c in page["items"]:
        size = f"{c['bytes'] / 1e6:,.1f} MB" if c["bytes"] is not None else "-"
        table.add_row(
            str(c["step"]),
            c["kind"],
            integer(c["tokens"]),
            num(c["val_loss"]) + (" *" if c["best"] else ""),
            size,
            c["state"].replace("_", " "),
            c["uri"],
        )
    out.print(table)
    if not page["items"]:
        message("no checkpoints yet")
    elif any(c["best"] for c in page["items"]):
        message("* the lowest validation loss (kept by retention)")


def download(run_id: str, step: int | None, dest: Path | None, fmt: Format, kind: str = "train") -> None:
    what = "checkpoint" if kind == "train" else "IFT checkpoint"
    with context.client() as api:
        if step is None:
            stored = [c for c in api.checkpoints(run_id)["items"] if c["state"] == "stored" and c["kind"] == kind]
            if not stored:
                raise CliError(f"run {run_id} has no {what} in the artifact store yet", CONFLICT)
            step = max(c["step"] for c in stored)
        detail = api.checkpoint(run_id, step, kind)
        folder = detail["uri"].rstrip("/").rsplit("/", 1)[-1]
        dest = dest or Path(f"{run_id}-{folder}")
        if dest.exists():
            raise CliError(f"{dest} already exists; choose another folder with --out", BAD_INPUT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{dest.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            total = sum(f["bytes"] for f in detail["files"])
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=err,
                transient=True,
            ) as progress:
                task = progress.add_task(f"step {step}", total=total)
                for f in detail["files"]:
                    _fetch(api, run_id, step, f, tmp, lambda n: progress.advance(task, n), kind)
            manifest = bytearray()
            api.download(run_id, step, MANIFEST, manifest.extend, kind=kind)
            if json.loads(manifest).get("files", {}).keys() != {f["name"] for f in detail["files"]}:
                raise CliError(f"the manifest of step {step} changed during the download; try again", FAILURE)
            (tmp / MANIFEST).write_bytes(bytes(manifest))  # last: it commits the folder
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    summary = {
        "run_id": run_id,
        "kind": kind,
        "step": step,
        "path": str(dest),
        "files": len(detail["files"]) + 1,
        "bytes": total,
        "verified": True,
    }
    if fmt is Format.json:
        print_json(summary)
    else:
        print(dest)
        message(
            f"downloaded the {what} of step {step} of run {run_id}: {len(detail['files'])} files, {total:,} bytes, "
            f"every SHA-256 checked against the manifest"
        )


def _fetch(
    api: ApiClient, run_id: str, step: int, f: dict, into: Path, advance: Callable[[int], None], kind: str
) -> None:
    digest, size = hashlib.sha256(), 0
    with (into / f["name"]).open("wb") as handle:

        def write(chunk: bytes) -> None:
            nonlocal size
            digest.update(chunk)
            handle.write(chunk)
            size += len(chunk)
            advance(len(chunk))

        api.download(run_id, step, f["name"], write, kind=kind)
    if size != f["bytes"] or digest.hexdigest() != f["sha256"]:
        raise CliError(
            f"{f['name']} of step {step} arrived as {size:,} bytes with SHA-256 {digest.hexdigest()}, "
            f"but the manifest says {f['bytes']:,} bytes and {f['sha256']}; nothing was kept",
            FAILURE,
        )
