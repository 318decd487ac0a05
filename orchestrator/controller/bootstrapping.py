"""The `bootstrapping` stage: every node made ready to train, on any provider.

    1. install   per node, a task (tasks.py) makes the node able to run `python -m trainer.*`
                 and records its run directory and interpreter on the instance row. On a
                 rented node that is provision.bootstrap (trainer wheel, a venv on the node's
                 torch; minutes); on the local provider the trainer already runs from this
                 checkout, so it only creates the run directory.
    2. data      per node, `python -m trainer.prepare` runs detached in the run directory (its
                 pid file is the record that it was started; the manifest, written last, that it
                 finished). With an artifact store the nodes reach, prepared shards come from its
                 data cache instead of being tokenised again.
    3. config    once every node has its data, the train config is written on each.

Both 1 and 2 are found done on the node before anything is started again, so a worker killed
at any point, or a second worker taking over, starts nothing twice. A `prepare` process is one
of the run's processes (provision.node.RUN_PROCESSES): ending the run stops it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.controller import commands as cmd
from orchestrator.controller import storage
from orchestrator.controller.context import RunContext, load_run, lost_reason, node_handles, usable_instances
from orchestrator.controller.ingest import keep_log, prepare_progress, record_prepare_progress
from orchestrator.controller.outcomes import WAITING, Done, Failed, Outcome
from orchestrator.controller.policy import Cancelled, NodeLost, run_task
from orchestrator.db.models import Instance, LogChunk, Run, RunEvent
from orchestrator.runs import add_event
from orchestrator.spec import RunSpec
from provision.bootstrap import BootstrapSpec, bootstrap

#: trainer.prepare's output on the node (commands.py's layout)
PREPARE_LOG = "prepare.log"


@dataclass(frozen=True)
class NodeReady:
    """What the install step leaves on a node: where the run lives and which Python runs it."""

    run_dir: str
    python: str
    note: str


def bootstrapping(ctx: RunContext, run: Run, spec: RunSpec) -> Outcome:
    """Install on every node, then prepare the data on every node, then write the config."""
    waiting = False
    for row in sorted(usable_instances(run), key=lambda r: r.rank):
        if row.python is not None:
            continue
        ready, pending = run_task(
            ctx, f"bootstrap-{row.rank}", f"bootstrapping {row.name}", partial(_install, ctx, row)
        )
        if pending is not None:
            if pending is not WAITING:
                return pending
            waiting = True
            continue
        _record_ready(ctx, run, row, ready)
    if waiting:
        return WAITING
    run = load_run(ctx.factory, run.id) or run
    return _prepare_data(ctx, run, spec)


# -- 1. install -----------------------------------------------------------------------------------
def _install(ctx: RunContext, row: Instance, cancel: threading.Event) -> NodeReady:
    """The task: the node able to run the trainer, with an empty run directory."""
    inst = ctx.provider.get(row.provider_instance_id) if row.provider_instance_id else None
    lost = lost_reason(row, inst, ctx.provider.name)
    if lost or inst is None:
        raise NodeLost(lost or f"node {row.rank} ({row.name}) was never launched")
    node = ctx.provider.node(inst)  # its own session: the step thread never shares it
    try:
        if not ctx.provider.needs_bootstrap:  # the trainer runs from this checkout already
            run_dir = str(inst.extra.get("workdir") or row.workdir)
            node.mkdir(run_dir)
            return NodeReady(run_dir, str(inst.extra.get("python") or "python3"), "runs this checkout's trainer")
        wait_for_ssh = getattr(node, "wait_for_ssh", None)
        if wait_for_ssh is not None:
            wait_for_ssh(time.monotonic() + ctx.settings.node_ssh_timeout_s, interval_s=1.0)
        s = ctx.settings
        ctx.fence()  # the wait for SSH may have outlasted our hold on the run
        result = bootstrap(
            node,
            BootstrapSpec(
                run_dir=f"{s.node_root}/runs/{row.name}",
                python=s.node_python,
                torch_site_packages=s.node_torch_site_packages,
                root=s.node_root,
                data_source=None,
            ),
            wheels=ctx.wheels,
            on_event=lambda m: ctx.event("bootstrap", f"{row.name}: {m}"),
        )
        if cancel.is_set():
            raise Cancelled("the run ended")
        took = sum(result.timings.values())
        return NodeReady(
            result.run_dir, result.python, f"ready in {took:.1f} s (torch {result.torch_version or 'as before'})"
        )
    finally:
        node.close()


def _record_ready(ctx: RunContext, run: Run, row: Instance, ready: NodeReady) -> None:
    with ctx.write() as (session, _fresh):
        fresh = session.get_one(Instance, row.id)
        fresh.workdir, fresh.python = ready.run_dir, ready.python
        add_event(session, run.id, "bootstrap", f"{row.name} {ready.note}, run directory {ready.run_dir}")


# -- 2. data and 3. config ------------------------------------------------------------------------
def _prepare_data(ctx: RunContext, run: Run, spec: RunSpec) -> Outcome:
    handles = node_handles(ctx, run)
    ready = True
    for row, h in handles:
        if h.node.exists(cmd.path(h.workdir, cmd.DATA, "manifest.json")):
            continue
        ready = False
        prep = cmd.proc_state(h.node, h.workdir, "prepare")
        if prep.running:
            tail = cmd.log_tail(h.node, h.workdir, PREPARE_LOG)
            with ctx.write() as (session, _run):
                record_prepare_progress(session, run.id, row.name, tail)
            continue
        if prep.ended and prep.exit_code is not None:
            # ended with a code and no manifest: a failure (even exit 0 means nothing usable).
            # Its log goes into the run's log first: the reason is one line, the log says why.
            reason = cmd.failure_reason(h.node, cmd.path(h.workdir, PREPARE_LOG), "data preparation", prep.exit_code)
            keep_log(
                ctx,
                row.rank,
                cmd.log_tail(h.node, h.workdir, PREPARE_LOG),
                f"data preparation failed on {row.name}; its {PREPARE_LOG} is in the run's log",
            )
            return Failed(reason)
        # never started, or killed before finishing (prepare cleans up its own leftovers)
        env = {**h.env, **storage.node_env(ctx, run, spec, h.node, h.workdir)}
        cache = storage.data_cache_uri(ctx, run, spec)
        ctx.fence()  # a pass blocked past its lease starts nothing
        pid = cmd.prepare_command(h.python, env, spec, h.workdir, cache_uri=cache).start(h.node)
        ctx.event(
            "info",
            f"preparing data from {spec.data.source} on {row.name} (pid {pid}"
            + (f"; prepared shards are cached at {cache})" if cache else ")"),
        )
    if not ready:
        return WAITING
    checkpoints = storage.checkpoints_uri(ctx, run, spec)
    outcomes: dict[str, str | None] = {}
    tails: dict[str, str] = {}
    for row, h in handles:
        h.node.write_json(cmd.path(h.workdir, cmd.CONFIG), cmd.trainer_config(spec, h.workdir, checkpoints))
        tails[row.name] = cmd.log_tail(h.node, h.workdir, PREPARE_LOG)
        outcomes[row.name] = cmd.cache_outcome(tails[row.name])
    head_log = tails[handles[0][0].name]
    return Done("every node is ready", partial(_record_data, head_log=head_log, outcomes=outcomes, tails=tails))


def _record_data(
    session: Session, fresh: Run, *, head_log: str, outcomes: dict[str, str | None], tails: dict[str, str]
) -> None:
    """Node 0's preparation log, where each node's data came from, and what its preparation did
    (`prepare: done: ...`; once per node)."""
    for name, tail in tails.items():
        if (prepare_progress(tail) or "").startswith("done:"):
            record_prepare_progress(session, fresh.id, name, tail)
    told = set(session.scalars(select(RunEvent.message).where(RunEvent.run_id == fresh.id, RunEvent.kind == "data")))
    if head_log.strip() and not told:
        session.add(LogChunk(run_id=fresh.id, rank=0, text=head_log))
    for name, cache in outcomes.items():
        if cache is None:
            continue
        message = f"{name}: {cmd.CACHE_MESSAGES.get(cache, f'data cache: {cache}')}"
        if message not in told:
            add_event(session, fresh.id, "data", message)
