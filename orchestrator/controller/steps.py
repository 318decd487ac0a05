"""The run lifecycle, one idempotent step per status (DESIGN.md, "A run's life").

    pending -> provisioning -> bootstrapping -> training -> evaluating -> succeeded
                                                   ^  |
                                                   |  v  (trainer killed: restart it; a rented
                                               recovering  node lost: terminate it, rent and
                                                           bootstrap a new one; either way the
                                                           trainers resume from the newest
                                                           checkpoint in the store, or node 0's)
    any state -> failed(reason) | cancelled | stopped(budget); instances are always terminated

Each step looks at what the database wants and what the provider and the node show, and does the
next thing that is not done yet. Nothing is done twice because each action is found on the node
first: an instance by its name, prepared data by its manifest, a started process by its pid file.
So a worker killed at any point, or a second worker taking over, picks up where it stopped.

On rented machines (`provider.needs_bootstrap`: lambda, ssh) provisioning and bootstrapping
are remote.py's: placement across instance types and regions, and provision.bootstrap on every
node, both on the worker's task threads. Training, evaluation and the end are the same for all
providers: torchrun on every node with a static rendezvous on node 0, whose rank 0 writes the
metrics, the checkpoints and FAILED; once training is done the other nodes are terminated.

Steps never hold a transaction during a provider or node call; every write is fenced (ctx.write).
When a node's state cannot be read, the step raises and nothing destructive happens; the worker
retries on the next pass.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from sqlalchemy import func, select

from orchestrator.controller import commands as cmd
from orchestrator.controller import remote, storage
from orchestrator.controller.evaluation import evaluating
from orchestrator.controller.context import (
    NodeHandle, NodeLost, RunContext, aware, live_instances, load_run, lost_reason, set_status, spec_of,
    usable_instances,
)
from orchestrator.controller.ingest import read_new, store
from orchestrator.controller.lifecycle import (
    book_terminations, budget_exceeded, cleanup, end_run, record_instance, release_workers, terminate_instances,
)
from orchestrator.db.models import Instance, LogChunk, Run, RunEvent, RunStatus, utcnow
from orchestrator.runs import add_event, instance_name
from orchestrator.spec import ComputeSpec, RunSpec
from provision.base import InstanceStatus
from provision.errors import HostKeyMismatch, InsufficientCapacity, ProvisionError
from provision.node import ProcessStatus

#: how often a killed trainer is restarted (resuming from its checkpoint) before the run fails
MAX_RECOVERIES = 2
#: steps one pass may take in a row, so a run moves through quick states without waiting a pass
MAX_STEPS_PER_PASS = 6


def reconcile(ctx: RunContext) -> bool:
    """Move one run as far as it can go now. True when the run needs no worker any more."""
    for _ in range(MAX_STEPS_PER_PASS):
        run = load_run(ctx.factory, ctx.run_id)
        if run is None:
            return True
        status = RunStatus(run.status)
        if status.is_terminal:
            done = cleanup(ctx, run)
            if done and run.artifact_uri is not None:
                storage.revoke_node_access(ctx, run, spec_of(run))
            return done
        spec = spec_of(run)
        if run.cancel_requested:
            end_run(ctx, run, RunStatus.cancelled, "cancelled by the user")
            continue
        over = budget_exceeded(ctx, run, spec)
        if over:
            end_run(ctx, run, RunStatus.stopped, over)
            continue
        try:
            STEPS[status](ctx, run, spec)
        except NodeLost as exc:
            if status in (RunStatus.training, RunStatus.recovering) and ctx.provider.needs_bootstrap:
                _node_lost(ctx, run, str(exc).splitlines()[0])  # rent a new one, resume there
            else:
                end_run(ctx, run, RunStatus.failed, str(exc).splitlines()[0])
            continue
        except HostKeyMismatch as exc:
            # a node the run needs is gone, or is not the machine we pinned: neither comes back
            # by retrying, and the other nodes would only bill (see lifecycle.end_run)
            end_run(ctx, run, RunStatus.failed, str(exc).splitlines()[0])
            continue
        after = load_run(ctx.factory, ctx.run_id)
        if after is None or after.status == run.status:
            return False  # waiting on the node or the provider: look again next pass
    return False


def _transition(ctx: RunContext, run: Run, to: RunStatus, message: str,
                extra: Callable | None = None) -> None:
    with ctx.write() as (session, fresh):
        if fresh.status != run.status:
            return  # an earlier pass of ours already moved it
        if extra is not None:
            extra(session, fresh)
        set_status(session, fresh, to, message)


def _fail(ctx: RunContext, run: Run, reason: str) -> None:
    end_run(ctx, run, RunStatus.failed, reason)


def _handles(ctx: RunContext, run: Run) -> list[tuple[Instance, NodeHandle]]:
    """Every node the run still uses, in rank order (raises NodeLost naming one that is gone)."""
    rows = [r for r in live_instances(run) if r.terminate_requested_at is None]
    pairs = [(row, ctx.handle(row)) for row in sorted(rows, key=lambda r: r.rank)]
    if not pairs:
        raise NodeLost("the run has no live instance")
    return pairs


# -- pending / provisioning -----------------------------------------------------------------------
def _pending(ctx: RunContext, run: Run, spec: RunSpec) -> None:
    c = spec.compute
    folder = storage.run_folder(ctx, run, spec)

    def freeze_store(_session, fresh):  # a later change of settings moves no run's checkpoints
        fresh.artifact_uri = folder

    _transition(ctx, run, RunStatus.provisioning,
                f"placing {c.nodes} node(s) on provider {c.provider}", freeze_store)


def _place(ctx: RunContext, compute: ComputeSpec) -> tuple[str, str] | None:
    """(instance type, region) with capacity now, in the spec's order of preference; None if none.
    Raises ValueError naming a type the provider does not have."""
    catalog = {t.name: t for t in ctx.provider.instance_types()}
    wanted = ([compute.instance_type] if compute.instance_type else []) + compute.fallback_instance_types
    if not wanted:
        wanted = list(catalog)[:1]
    for name in wanted:
        offer = catalog.get(name)
        if offer is None:
            raise ValueError(f"instance type {name!r} does not exist at provider {ctx.provider.name} "
                             f"(it has: {', '.join(sorted(catalog)) or 'none'})")
        regions = compute.regions or list(offer.regions_with_capacity)
        for region in regions:
            if region in offer.regions_with_capacity:
                return name, region
    return None


def _provisioning(ctx: RunContext, run: Run, spec: RunSpec) -> None:
    if ctx.provider.needs_bootstrap:  # rented machines: placement across types and regions
        if remote.provisioning(ctx, run, spec):
            _transition(ctx, run, RunStatus.bootstrapping, f"all {spec.compute.nodes} node(s) are active")
        return
    c = spec.compute
    rows = {row.rank: row for row in live_instances(run)}
    for rank in range(c.nodes):
        if rank in rows:
            continue
        name = instance_name(run.id, rank)
        inst = ctx.provider.find_by_name(name)  # a launch that went through before a crash
        if inst is None:
            try:
                placement = _place(ctx, c)
            except ValueError as exc:
                return _fail(ctx, run, str(exc))
            try:
                if placement is None:
                    raise InsufficientCapacity("no capacity")
                inst = ctx.provider.launch(name=name, instance_type=placement[0], region=placement[1])
            except InsufficientCapacity:
                waited = (utcnow() - aware(run.started_at or run.created_at)).total_seconds()
                if waited > c.placement_timeout_s:
                    types = ", ".join(([c.instance_type] if c.instance_type else []) + c.fallback_instance_types)
                    return _fail(ctx, run, f"no capacity for {types or 'any instance type'} in "
                                           f"{', '.join(c.regions) or 'any region'} within "
                                           f"compute.placement_timeout_s ({c.placement_timeout_s:g} s)")
                return None  # try again next pass
            except ProvisionError as exc:
                if exc.retryable:
                    raise
                return _fail(ctx, run, f"launching {name} failed: {exc}")
        record_instance(ctx, run, rank, inst)

    run = load_run(ctx.factory, run.id)
    waiting = False
    for row in live_instances(run):
        if row.active_at is not None:
            continue
        inst = ctx.provider.get(row.provider_instance_id)
        if inst is None or inst.status.is_gone:
            return _fail(ctx, run, f"instance {row.name} disappeared while booting")
        if inst.status != InstanceStatus.active:
            waiting = True
            continue
        with ctx.write() as (session, _fresh):
            fresh_row = session.get(Instance, row.id)
            fresh_row.status, fresh_row.active_at = inst.status.value, utcnow()
            fresh_row.public_ip, fresh_row.private_ip = inst.public_ip, inst.private_ip
            add_event(session, run.id, "placement", f"instance {row.name} is active")
    if not waiting:
        _transition(ctx, run, RunStatus.bootstrapping, "all nodes are up")


# -- bootstrapping: data and config on every node -------------------------------------------------
def _bootstrapping(ctx: RunContext, run: Run, spec: RunSpec) -> None:
    if ctx.provider.needs_bootstrap:
        if remote.bootstrapping(ctx, run, spec, ctx.attempts):
            _transition(ctx, run, *_after_bootstrap(spec, "every node is bootstrapped"))
        return
    handles = _handles(ctx, run)
    ready = True
    for row, h in handles:
        if h.node.exists(cmd.path(h.workdir, cmd.DATA, "manifest.json")):
            continue
        ready = False
        prep = cmd.proc_state(h.node, h.workdir, "prepare")
        if prep.running:
            continue
        if prep.ended and prep.exit_code is not None:
            # ended with a code and no manifest: a failure (even exit 0 means nothing usable)
            return _fail(ctx, run, cmd.failure_reason(
                h.node, cmd.path(h.workdir, "prepare.log"), "data preparation", prep.exit_code))
        # never started, or killed before finishing (prepare cleans up its own leftovers)
        h.node.mkdir(h.workdir)
        env = {**h.env, **storage.node_env(ctx, run, spec, h.node, h.workdir)}
        cache = storage.data_cache_uri(ctx, run, spec)
        pid = h.node.start_detached(cmd.prepare_command(h.python, env, spec, h.workdir, cache_uri=cache),
                                    workdir=h.workdir, name="prepare")
        with ctx.write() as (session, _fresh):
            add_event(session, run.id, "info", f"preparing data from {spec.data.source} on {row.name} (pid {pid}"
                      + (f"; prepared shards are cached at {cache})" if cache else ")"))
    if not ready:
        return
    for _row, h in handles:
        cmd.write_json(h.node, cmd.path(h.workdir, cmd.CONFIG),
                       cmd.trainer_config(spec, h.workdir, storage.checkpoints_uri(ctx, run, spec)))
    prepare_log = cmd.log_tail(handles[0][1].node, handles[0][1].workdir, "prepare.log")
    cache = cmd.cache_outcome(prepare_log)

    def keep_log(session, fresh):
        if prepare_log.strip():
            session.add(LogChunk(run_id=fresh.id, rank=0, text=prepare_log))
        if cache is not None:
            add_event(session, fresh.id, "data", cmd.CACHE_MESSAGES.get(cache, f"data cache: {cache}"))

    _transition(ctx, run, *_after_bootstrap(spec, "data prepared"), keep_log)


def _after_bootstrap(spec: RunSpec, done: str) -> tuple[RunStatus, str]:
    """Training next; a pretrained run (model.pretrained) is not trained: evaluating next."""
    if spec.model.pretrained:
        return RunStatus.evaluating, f"{done}; evaluating OpenAI's {spec.model.pretrained} (not trained)"
    return RunStatus.training, f"{done}; starting the trainer"


# -- training -------------------------------------------------------------------------------------
def _start_trainer(ctx: RunContext, run: Run, spec: RunSpec, handles, row: Instance,
                   h: NodeHandle) -> cmd.Proc:
    """Start the trainer on one node (the caller checked its pid file: not started, or killed)."""
    head = handles[0][1].instance
    resume = storage.latest_stored(ctx, run, spec) if run.step > 0 or run.recoveries else None
    command = cmd.train_command(h.python, {**h.env, **storage.node_env(ctx, run, spec, h.node, h.workdir)},
                                spec, h.workdir, node_rank=row.rank,
                                master_addr=head.private_ip or head.public_ip,
                                master_port=_master_port(ctx, run),
                                socket_ifname=ctx.settings.node_socket_ifname or h.instance.extra.get("socket_ifname"),
                                resume_from=resume[1] if resume is not None else None)
    pid = h.node.start_detached(command, workdir=h.workdir, name="train")
    with ctx.write() as (session, _fresh):
        session.get(Instance, row.id).trainer_pid = pid
        add_event(session, run.id, "info", f"trainer launched on {row.name} (pid {pid})"
                  + (f"; it resumes from step {resume[0]} unless it holds a newer checkpoint"
                     if resume is not None else ""))
    return cmd.Proc(started=True, status=None)


def _master_port(ctx: RunContext, run: Run) -> int:
    # One port per run: runs that share machines (the ssh provider's hosts, the simulator's
    # loopback) must never meet in one rendezvous, and a port still in TIME_WAIT from the last
    # run on a node is not reused at once.
    return ctx.settings.node_master_port + zlib.crc32(run.id.encode()) % 1000


def _training(ctx: RunContext, run: Run, spec: RunSpec) -> None:
    handles = _handles(ctx, run)
    # Read the processes' states BEFORE their output: once a process is seen ended, everything
    # it wrote is on disk, so this pass's read is complete.
    procs = []
    for row, h in handles:
        proc = cmd.proc_state(h.node, h.workdir, "train")
        if not proc.started:
            _start_trainer(ctx, run, spec, handles, row, h)
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
    if store(ctx, head, new) and any(m["kind"] == "checkpoint_stored" for m in new.lines):
        storage.apply_retention(ctx, run, spec)
    for _row, h in handles:  # renews the nodes' store credentials before they run out
        storage.node_env(ctx, run, spec, h.node, h.workdir)
    if not new.complete or (running and not finished):
        return
    if finished:
        return _training_done(ctx, run, spec)
    failed = [(row, h, p) for row, h, p in procs if p.exit_code not in (0, None)]
    if failed:
        # rank 0 writes why in FAILED; the other ranks only see their peer vanish
        own = cmd.trainer_failure(head.node, head.workdir)
        row, h, p = failed[0]
        return _fail(ctx, run, own or cmd.failure_reason(
            h.node, cmd.path(h.workdir, "train.log"), f"training on {row.name}", p.exit_code))
    killed = [row.name for row, _h, p in procs if p.exit_code is None]
    if killed:
        return _trainer_killed(ctx, run, handles, killed)
    if not head.node.exists(cmd.path(head.workdir, "DONE")):
        return _fail(ctx, run, "the trainer exited 0 without writing DONE (training did not finish)")
    _training_done(ctx, run, spec)


def _training_done(ctx: RunContext, run: Run, spec: RunSpec) -> None:
    if spec.evaluation.test_loss:
        _transition(ctx, run, RunStatus.evaluating, "training done; measuring the test loss on node 0",
                    release_workers(ctx, run))
    else:
        end_run(ctx, run, RunStatus.succeeded, "training done (evaluation is off)")


def _count_recovery(what: str, reset_offsets: bool = False) -> Callable:
    """The write that starts a recovery: one more on the run's count, as an event, and every
    node's trainer marked for a restart (trainer_pid cleared; _recovering sets it again)."""

    def count(session, fresh):
        fresh.recoveries += 1
        for row in fresh.instances:
            row.trainer_pid = None
        if reset_offsets:  # node 0's files are on the new node's empty disk: read from the start
            fresh.metrics_offset = fresh.log_offset = 0
        add_event(session, fresh.id, "recovery", f"{what}; resuming from the last checkpoint "
                                                  f"(recovery {fresh.recoveries} of {MAX_RECOVERIES})")

    return count


def _trainer_killed(ctx: RunContext, run: Run, handles, killed: list[str]) -> None:
    what = f"the trainer on {', '.join(killed)} ended without an exit code (killed)"
    if run.recoveries >= MAX_RECOVERIES:
        return _fail(ctx, run, f"{what}, after {run.recoveries} recoveries already")
    for _row, h in handles:  # the other ranks cannot go on without it
        h.node.stop(workdir=h.workdir, name="train")
    _transition(ctx, run, RunStatus.recovering, what, _count_recovery(what))


def _node_lost(ctx: RunContext, run: Run, reason: str) -> None:
    """A node died under a training run: terminate it, stop the others' trainers, and recover
    on a new node (_recovering rents and bootstraps it; the trainer resumes there from the latest
    checkpoint in the store). Capped by MAX_RECOVERIES, like a killed trainer."""
    if run.recoveries >= MAX_RECOVERIES:
        return _fail(ctx, run, f"{reason}, after {run.recoveries} recoveries already")
    lost, healthy = [], []
    for row in usable_instances(run):
        inst = ctx.provider.get(row.provider_instance_id) if row.provider_instance_id else None
        (lost if lost_reason(row, inst, ctx.provider.name) else healthy).append(row)
    if not lost:
        return None  # it answers again: the next pass goes on as usual
    for row in healthy:  # their trainers lost a peer; they restart with the new node
        h = ctx.handle(row)
        h.node.stop(workdir=h.workdir, name="train")
    term = terminate_instances(ctx, run, lost)
    names = ", ".join(r.name for r in lost)
    count = _count_recovery(f"{reason}; replacing {names} with a new node",
                            reset_offsets=any(r.rank == 0 for r in lost))

    def replace(session, fresh):
        book_terminations(session, fresh, term, ctx.settings.billing_minute_s)
        count(session, fresh)

    _transition(ctx, run, RunStatus.recovering, reason, replace)


def _recovery_began(ctx: RunContext, run: Run):
    with ctx.factory() as session:
        return session.scalar(select(func.max(RunEvent.time)).where(
            RunEvent.run_id == run.id, RunEvent.kind == "recovery"))


def _recovering(ctx: RunContext, run: Run, spec: RunSpec) -> None:
    if ctx.provider.needs_bootstrap and (len(usable_instances(run)) < spec.compute.nodes
                                         or any(r.python is None for r in usable_instances(run))):
        # a lost node's replacement: placed and bootstrapped as at the start (on task threads)
        if not remote.provisioning(ctx, run, spec, since=_recovery_began(ctx, run)):
            return
        run = load_run(ctx.factory, run.id)
        if run is None or run.status != RunStatus.recovering.value:
            return
        if not remote.bootstrapping(ctx, run, spec, ctx.attempts):
            return
        run = load_run(ctx.factory, run.id)
        if run is None or run.status != RunStatus.recovering.value:
            return
    handles = _handles(ctx, run)
    for row, h in handles:
        if row.trainer_pid is not None:
            continue  # restarted in this recovery already (before a crash of ours)
        proc = cmd.proc_state(h.node, h.workdir, "train")
        if proc.running:  # the old trainer has not stopped yet
            h.node.stop(workdir=h.workdir, name="train")
            return
        _start_trainer(ctx, run, spec, handles, row, h)
    _transition(ctx, run, RunStatus.training, "trainer restarted; it resumes from the last checkpoint")


STEPS: dict[RunStatus, Callable[[RunContext, Run, RunSpec], None]] = {
    RunStatus.pending: _pending,
    RunStatus.provisioning: _provisioning,
    RunStatus.bootstrapping: _bootstrapping,
    RunStatus.training: _training,
    RunStatus.recovering: _recovering,
    RunStatus.evaluating: evaluating,
}
