"""The `training` and `recovering` stages: torchrun on every node, followed until it is done.

    training:   torchrun + trainer.train on every node (a static rendezvous on node 0, whose rank 0
                writes the metrics, the checkpoints, DONE and FAILED); metrics and logs are read
                off node 0 as they are written, stored checkpoints are recorded and retention
                applied. Done at DONE; Failed when a trainer exits non-zero; Killed when one
                ended without an exit code.
    recovering: a lost node replaced (placed and bootstrapped as at the start), then every
                trainer restarted; they resume from the newest checkpoint in the store (or node
                0's own, if it survived), so the loss curve goes on from that step.

`begin_recovery` is what steps.py does before it moves a run to `recovering`: the other trainers
stopped (they cannot go on without their peer), a lost node marked for termination in the same
write as the move (the next step terminates it), one more recovery counted.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.controller import commands as cmd
from orchestrator.controller import storage
from orchestrator.controller.bootstrapping import bootstrapping
from orchestrator.controller.context import (
    NodeHandle,
    RunContext,
    load_run,
    lost_reason,
    node_handles,
    usable_instances,
)
from orchestrator.controller.ingest import read_new, record_output
from orchestrator.controller.lifecycle import mark_for_termination
from orchestrator.controller.outcomes import WAITING, Done, Failed, Killed, Outcome, Record
from orchestrator.controller.placement import placement
from orchestrator.db.models import Instance, Run, RunEvent, RunStatus
from orchestrator.runs import add_event
from orchestrator.spec import RunSpec
from provision.node import ProcessStatus

#: how often a run recovers (a killed trainer, a lost node) before it fails
MAX_RECOVERIES = 2


def training(ctx: RunContext, run: Run, spec: RunSpec) -> Outcome:
    handles = node_handles(ctx, run)
    # Read the processes' states BEFORE their output: once a process is seen ended, everything
    # it wrote is on disk, so this pass's read is complete.
    procs = []
    for row, h in handles:
        proc = cmd.proc_state(h.node, h.workdir, "train")
        if not proc.started:
            start_trainer(ctx, run, spec, handles, row, h)
            proc = cmd.Proc(started=True, status=ProcessStatus(running=True, exit_code=None))
        procs.append((row, h, proc))
    head = handles[0][1]
    running = any(p.running for _r, _h, p in procs)
    # DONE is rank 0's last word on a finished training (final checkpoint committed, `done`
    # line flushed), written seconds before torchrun has exited on every node. Moving on at
    # DONE rather than at the exits saves those seconds of every node's billing. Checked
    # before the read, so the read below has the `done` line.
    finished = running and head.node.exists(cmd.path(head.workdir, "DONE"))
    new = read_new(head, run)
    if record_output(ctx, head, new) and any(m["kind"] == "checkpoint_stored" for m in new.lines):
        storage.apply_retention(ctx, run, spec)
    for _row, h in handles:  # renews the nodes' store credentials before they run out
        storage.node_env(ctx, run, spec, h.node, h.workdir)
    if not new.complete or (running and not finished):
        return WAITING
    if finished:
        return _done(spec, run)
    failed = [(row, h, p) for row, h, p in procs if p.exit_code not in (0, None)]
    if failed:
        # rank 0 writes why in FAILED; the other ranks only see their peer vanish
        own = cmd.trainer_failure(head.node, head.workdir)
        row, h, p = failed[0]
        return Failed(
            own or cmd.failure_reason(h.node, cmd.path(h.workdir, "train.log"), f"training on {row.name}", p.exit_code)
        )
    killed = [row.name for row, _h, p in procs if p.exit_code is None]
    if killed:
        return Killed(f"the trainer on {', '.join(killed)} ended without an exit code (killed)")
    if not head.node.exists(cmd.path(head.workdir, "DONE")):
        return Failed("the trainer exited 0 without writing DONE (training did not finish)")
    return _done(spec, run)


def _done(spec: RunSpec, run: Run) -> Done:
    what = "training stopped with a final checkpoint" if run.stop_requested_at is not None else "training done"
    if spec.evaluation.test_loss:
        return Done(f"{what}; measuring the test loss on node 0")
    return Done(f"{what} (evaluation is off)")


def start_trainer(
    ctx: RunContext, run: Run, spec: RunSpec, handles: list[tuple[Instance, NodeHandle]], row: Instance, h: NodeHandle
) -> None:
    """Start the trainer on one node (the caller checked its pid file: not started, or killed)."""
    head = handles[0][1].instance
    resume = storage.latest_stored(ctx, run, spec) if run.step > 0 or run.recoveries else None
    command = cmd.train_command(
        h.python,
        {**h.env, **storage.node_env(ctx, run, spec, h.node, h.workdir)},
        spec,
        h.workdir,
        node_rank=row.rank,
        master_addr=head.private_ip or head.public_ip,
        master_port=_master_port(ctx, run),
        socket_ifname=ctx.settings.node_socket_ifname or h.instance.extra.get("socket_ifname"),
        resume_from=resume[1] if resume is not None else None,
    )
    ctx.fence()  # a pass blocked past its lease (a black-holed node) starts nothing
    pid = command.start(h.node)
    with ctx.write() as (session, _fresh):
        session.get_one(Instance, row.id).trainer_pid = pid
        add_event(
            session,
            run.id,
            "info",
            f"trainer launched on {row.name} (pid {pid})"
            + (f"; it resumes from step {resume[0]} unless it holds a newer checkpoint" if resume is not None else ""),
        )


def _master_port(ctx: RunContext, run: Run) -> int:
    # One port per run: runs that share machines (the ssh provider's hosts, the simulator's
    # loopback) must never meet in one rendezvous, and a port still in TIME_WAIT from the last
    # run on a node is not reused at once.
    return ctx.settings.node_master_port + zlib.crc32(run.id.encode()) % 1000


# -- recovery -------------------------------------------------------------------------------------
def begin_recovery(ctx: RunContext, run: Run, reason: str, *, replace_lost: bool) -> Record | None:
    """Stop every trainer and, with `replace_lost`, terminate the nodes the provider shows lost.
    Returns the write that counts the recovery (for the move to `recovering`); None when a node
    was said lost but every node answers again (nothing to recover from)."""
    lost: list[Instance] = []
    healthy = usable_instances(run)
    if replace_lost:
        lost, healthy = [], []
        for row in usable_instances(run):
            inst = ctx.provider.get(row.provider_instance_id) if row.provider_instance_id else None
            (lost if lost_reason(row, inst, ctx.provider.name) else healthy).append(row)
        if not lost:
            return None
    ctx.fence()  # a pass that outlived its lease (a black-holed node) stops no one's trainers
    for row in healthy:  # their trainers lost a peer; they restart with the new node
        h = ctx.handle(row)
        h.node.stop(workdir=h.workdir, name="train")
    what = f"{reason}; replacing {', '.join(r.name for r in lost)} with a new node" if lost else reason
    node0_replaced = any(r.rank == 0 for r in lost)

    def count(session: Session, fresh: Run) -> None:
        mark_for_termination(session, fresh, lost)  # terminated by the next step, whoever takes it
        fresh.recoveries += 1
        for row in fresh.instances:
            row.trainer_pid = None  # every trainer is restarted (recovering sets it again)
        if node0_replaced:  # node 0's files are on the new node's empty disk: read from the start
            fresh.metrics_offset = fresh.log_offset = 0
        add_event(
            session,
            fresh.id,
            "recovery",
            f"{what}; resuming from the last checkpoint (recovery {fresh.recoveries} of {MAX_RECOVERIES})",
        )

    return count


def _recovery_began(ctx: RunContext, run: Run) -> datetime | None:
    with ctx.factory() as session:
        return session.scalar(
            select(func.max(RunEvent.time)).where(RunEvent.run_id == run.id, RunEvent.kind == "recovery")
        )


def recovering(ctx: RunContext, run: Run, spec: RunSpec) -> Outcome:
    # A lost node's replacement is placed, installed and given its data as at the start (on task
    # threads); on nodes that kept theirs, both stages find everything done and cost a look.
    record = None
    stages: list[Callable[[Run], Outcome]] = [
        lambda r: placement(ctx, r, spec, since=_recovery_began(ctx, r)),
        lambda r: bootstrapping(ctx, r, spec),
    ]
    for stage in stages:
        outcome = stage(run)
        if not isinstance(outcome, Done):
            return outcome
        record = outcome.record
        run = load_run(ctx.factory, run.id) or run
        if run.status != RunStatus.recovering.value:
            return WAITING
    handles = node_handles(ctx, run)
    for row, h in handles:
        if row.trainer_pid is not None:
            continue  # restarted in this recovery already (before a crash of ours)
        if cmd.proc_state(h.node, h.workdir, "train").running:  # the old trainer has not stopped yet
            ctx.fence()
            h.node.stop(workdir=h.workdir, name="train")
            return WAITING
        start_trainer(ctx, run, spec, handles, row, h)
    return Done("trainer restarted; it resumes from the last checkpoint", record)
