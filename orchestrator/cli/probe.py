"""`trainyard plan SPEC.yaml --probe TYPE`: measure the spec on one node of TYPE with a short,
capped training (`POST /api/v1/plans/probes`), follow it to its end as `status --watch` does, and
show the throughput record it left and that its node was terminated and booked.

`plan` (orchestrator/cli/plan.py) calls `run_probe` when --probe is given.
"""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table

from orchestrator.cli import context
from orchestrator.cli.client import ApiClient
from orchestrator.cli.errors import FAILURE, OK, RUN_NOT_SUCCEEDED, CliError
from orchestrator.cli.output import Format, duration, integer, message, out, print_json, usd
from orchestrator.cli.throughput import gpus_text, mfu_text
from orchestrator.cli.watch import reattach_on_interrupt, watch_run
from orchestrator.db.models import RunStatus

#: a probe no controller picks up fails the command after this long (as `submit --watch` would hang)
PENDING_TIMEOUT_S = 120.0
#: how long to wait, after the probe ended, for the provider to confirm its node terminated
TERMINATION_WAIT_S = 60.0


def run_probe(
    ctx: object,
    spec_text: str,
    instance_type: str,
    *,
    max_usd: float | None = None,
    max_minutes: float | None = None,
    fmt: Format | str = Format.table,
    poll_s: float = 1.0,
) -> int:
    """Start a probe of `spec_text` (YAML) on `instance_type` and follow it to its end. `ctx`:
    an ApiClient to use, or anything else (`plan`'s typer context) for the CLI's own client.

    Returns 0 (OK) once the probe succeeded and left its record. A probe that failed, was
    cancelled or stopped by its caps raises CliError with exit code 7 (RUN_NOT_SUCCEEDED), after
    showing what it has; the API's own errors (a bad spec: 2, unreachable: 5) raise as well, so a
    command wrapped in `cli_errors` exits with the right code whether or not it uses the return."""
    fmt = Format(fmt)
    own = not isinstance(ctx, ApiClient)
    api = context.client() if own else ctx
    assert isinstance(api, ApiClient)
    try:
        body = {"spec": spec_text, "instance_type": instance_type, "max_usd": max_usd, "max_minutes": max_minutes}
        probe = api.start_probe(body)
        run_id = probe["run"]["id"]
        caps = _caps(probe)
        message(
            f"probe {run_id}: 1 node of {instance_type}, micro_batch auto, {integer(probe['train_tokens'])} "
            f"tokens, no evaluation; caps {caps}"
        )
        with reattach_on_interrupt(run_id):  # Ctrl-C stops the watch; the probe goes on to its caps
            watch_run(api, run_id, poll_s, pending_timeout_s=PENDING_TIMEOUT_S)
        probe = _settled(api, run_id, poll_s)
    finally:
        if own:
            api.close()
    return _report(probe, fmt)


def _caps(probe: dict[str, Any]) -> str:
    usd_cap = "no US$ cap (a free type)" if probe["max_usd"] is None else f"US${probe['max_usd']:g}"
    minutes = "no time cap" if probe["max_hours"] is None else f"{probe['max_hours'] * 60:g} min"
    return f"{usd_cap}, {minutes}"


def _settled(api: ApiClient, run_id: str, poll_s: float) -> dict[str, Any]:
    """The ended probe once its node is confirmed terminated (and so booked), or after the wait."""
    deadline = time.monotonic() + TERMINATION_WAIT_S
    while True:
        probe = api.get_probe(run_id)
        if all(i["terminated"] for i in probe["instances"]) or time.monotonic() > deadline:
            return probe
        time.sleep(poll_s)


def probe_table(probe: dict[str, Any]) -> Table:
    run, rec = probe["run"], probe["record"]
    table = Table(box=None, show_header=False, title=f"probe {run['id']} on {probe['instance_type']}")
    table.add_column(style="bold")
    table.add_column()
    status = run["status"] + (f" ({run['status_reason']})" if run.get("status_reason") else "")
    rows = [("status", status)]
    if rec is not None:
        rows += [
            ("GPUs", gpus_text(rec)),
            ("micro-batch", f"{rec['micro_batch']} (found by micro_batch: auto)"),
            ("tokens/s", f"{integer(rec['tokens_per_s'])} (steady state, warm-up left out)"),
            ("MFU", mfu_text(rec["mfu"]) + ("" if rec["mfu"] is not None else " (GPU not in the GPU table)")),
            ("launch to first step", duration(rec["launch_to_first_step_s"])),
            ("tokens trained", integer(rec["tokens_trained"])),
        ]
    else:
        rows.append(("record", "none (the probe did not train long enough to measure)"))
    rows.append(("cost", usd(run["cost"]["cents"])))
    for inst in probe["instances"]:
        booked = "" if inst["cost_cents"] is None else f", booked {usd(inst['cost_cents'])}"
        state = "terminated" if inst["terminated"] else "NOT confirmed terminated yet (the controller keeps at it)"
        rows.append(("node", f"{inst['name']} ({inst['instance_type']}): {state}{booked}"))
    for key, value in rows:
        table.add_row(key, value)
    return table


def _report(probe: dict[str, Any], fmt: Format) -> int:
    if fmt is Format.json:
        print_json(probe)
    else:
        out.print(probe_table(probe))
    run = probe["run"]
    if run["status"] != RunStatus.succeeded.value:
        reason = f": {run['status_reason']}" if run.get("status_reason") else ""
        raise CliError(f"probe {run['id']} ended {run['status']}{reason}", RUN_NOT_SUCCEEDED)
    if probe["record"] is None:
        raise CliError(f"probe {run['id']} succeeded but left no throughput record (see the service's log)", FAILURE)
    if fmt is Format.table:
        message(f"recorded; `trainyard plan` now uses it (trainyard throughput --run {run['id']})")
    return OK
