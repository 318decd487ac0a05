"""Provisioning and bootstrapping on rented machines (providers `lambda` and `ssh`).

    provisioning:  per node rank, a task places `ty-<run>-<rank>` (provision.placement: the
                   spec's instance type, then its fallbacks, in its regions, waiting for
                   capacity up to compute.placement_timeout_s), records it (price frozen), and
                   waits until the provider shows it active
    bootstrapping: per node, a task waits for SSH, runs provision.bootstrap (trainer wheel, venv
                   on the node's torch, the data prepared on the node), links the data into the
                   run directory and writes the train config; then records the run directory
                   and interpreter on the instance row

Both run on the worker's task threads (tasks.py): they block for minutes, and the worker keeps
renewing its lease and serving cancels meanwhile. Each is idempotent, so a task lost with its
worker is started again. No database transaction is open during a provider or node call; a task
writes only through fenced transactions (events, the instance record).

A placement that finds no capacity until its deadline fails the run with PlacementFailed's
message; a node that is gone, unhealthy or presents a changed host key fails it with a reason
naming the node. A node that does not answer SSH while the provider shows it active is only
retried: its state is unknown, so nothing destructive happens (the budget bounds the cost).
"""

from __future__ import annotations

import shlex
import threading
import time
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.controller import commands as cmd
from orchestrator.controller import storage
from orchestrator.controller.context import NodeLost, RunContext, aware, log, lost_reason, usable_instances
from orchestrator.controller.lifecycle import end_run, record_instance
from orchestrator.controller.tasks import Cancelled, sleeper
from orchestrator.db.models import Instance, Run, RunStatus, utcnow
from orchestrator.errors import LeaseLostError
from orchestrator.runs import add_event, next_instance_name
from orchestrator.spec import RunSpec
from provision.base import Instance as ProviderInstance
from provision.base import InstanceStatus
from provision.bootstrap import BootstrapResult, BootstrapSpec, bootstrap
from provision.errors import HostKeyMismatch, NodeUnreachable, PlacementFailed, ProvisionError
from provision.placement import place

#: failed bootstrap attempts on one node (errors other than "unreachable") before the run fails
MAX_BOOTSTRAP_ATTEMPTS = 3


# -- provisioning ---------------------------------------------------------------------------------
def provisioning(ctx: RunContext, run: Run, spec: RunSpec, since: datetime | None = None) -> bool:
    """Place every node and wait until all are active. True when they are (or the run ended).
    Placement waits for capacity up to compute.placement_timeout_s after `since` (default: the
    run's start; a recovery passes when it began). A rank whose node is being terminated (lost)
    gets a new one."""
    c = spec.compute
    rows = {row.rank: row for row in usable_instances(run)}
    deadline = aware(since or run.started_at or run.created_at) + timedelta(seconds=c.placement_timeout_s)
    waiting = False
    for rank in range(c.nodes):
        row = rows.get(rank)
        if row is not None and row.active_at is not None:
            continue
        name = row.name if row is not None else next_instance_name(run.id, rank, run.instances)
        out = ctx.task(f"place-{rank}", partial(_place_until_active, ctx, run, spec, rank, name, deadline),
                       may_launch=True)
        if not out.done:
            waiting = True
            continue
        if out.error is not None:
            if _task_failed(ctx, run, f"placing {name}", out.error):
                return False
            waiting = True  # retried: the next pass starts the task again
            continue
        inst, seen_active = out.value
        _record_active(ctx, run, rank, inst, seen_active)
    return not waiting


def _instance_types(ctx: RunContext, spec: RunSpec) -> list[str]:
    c = spec.compute
    wanted = ([c.instance_type] if c.instance_type else []) + list(c.fallback_instance_types)
    # the ssh provider's spec may name no type: any listed host will do
    return wanted or [t.name for t in ctx.provider.instance_types()]


def _place_until_active(ctx: RunContext, run: Run, spec: RunSpec, rank: int, name: str, deadline: datetime,
                        cancel: threading.Event) -> tuple[ProviderInstance, datetime]:
    """The task: place node `rank` as `name`, record it, wait until it is active."""
    sleep = sleeper(cancel)
    inst = place(ctx.provider, name=name, instance_types=_instance_types(ctx, spec),
                 regions=spec.compute.regions, timeout_s=max(0.0, (deadline - utcnow()).total_seconds()),
                 poll_s=ctx.settings.placement_poll_s, on_event=partial(ctx.event, "placement"), sleep=sleep)
    record_instance(ctx, run, rank, inst)
    if cancel.is_set():
        raise Cancelled("the run ended")  # recorded above, so the run's end terminates it
    return _wait_active(ctx, inst, sleep)


def _wait_active(ctx: RunContext, inst: ProviderInstance, sleep) -> tuple[ProviderInstance, datetime]:
    """Poll until the provider shows the instance active. Returns it and when it turned active.

    Billing starts when an instance turns active, and the API does not say when that was: only
    that it happened between the last read showing it booting and the first showing it active.
    The middle of the two is the estimate, off by at most half a poll interval
    (settings.node_active_poll_s), which is why this polls on its own thread and not once per
    reconcile pass. An instance already active at the first read gets that read's time.
    """
    give_up = time.monotonic() + ctx.settings.node_boot_timeout_s
    booting_seen: datetime | None = None
    while True:
        asked = utcnow()
        now = ctx.provider.get(inst.id)
        if now is not None and now.status == InstanceStatus.active:
            return now, asked if booting_seen is None else booting_seen + (asked - booting_seen) / 2
        booting_seen = asked
        if now is None or now.status.is_gone or now.status == InstanceStatus.unhealthy:
            state = now.status.value if now is not None else "gone"
            raise NodeLost(f"instance {inst.name} became {state} while booting")
        if time.monotonic() > give_up:
            raise NodeLost(f"instance {inst.name} did not become active within "
                           f"{ctx.settings.node_boot_timeout_s:g} s (still {now.status.value})")
        sleep(ctx.settings.node_active_poll_s)


def _record_active(ctx: RunContext, run: Run, rank: int, inst: ProviderInstance, seen: datetime) -> None:
    with ctx.write() as (session, _fresh):
        row = next((r for r in _live_rows(session, run.id) if r.rank == rank and r.terminate_requested_at is None),
                   None)
        if row is None or row.active_at is not None:
            return
        row.status, row.active_at = inst.status.value, seen
        row.public_ip, row.private_ip = inst.public_ip, inst.private_ip
        add_event(session, run.id, "placement",
                  f"instance {row.name} is active at {inst.public_ip} (private {inst.private_ip})")


def _live_rows(session: Session, run_id: str) -> list[Instance]:
    return list(session.scalars(select(Instance).where(Instance.run_id == run_id,
                                                       Instance.terminated_at.is_(None))))


# -- bootstrapping --------------------------------------------------------------------------------
def bootstrapping(ctx: RunContext, run: Run, spec: RunSpec, attempts: dict[str, int]) -> bool:
    """Bootstrap every node. True when all are ready (or the run ended).

    `attempts` counts failed attempts per node across passes (kept by the worker)."""
    waiting = False
    for row in sorted(usable_instances(run), key=lambda r: r.rank):
        if row.python is not None:
            continue
        out = ctx.task(f"bootstrap-{row.rank}", partial(_bootstrap_node, ctx, run, spec, row))
        if not out.done:
            waiting = True
            continue
        if out.error is None:
            _record_ready(ctx, run, row, out.value)
            continue
        if isinstance(out.error, (NodeUnreachable, Cancelled)) or (
                isinstance(out.error, ProvisionError) and out.error.retryable):
            log.warning("run %s: bootstrapping %s: %s; trying again", run.id, row.name, out.error)
            waiting = True
            continue
        tries = attempts[row.name] = attempts.get(row.name, 0) + 1
        if isinstance(out.error, (NodeLost, HostKeyMismatch)) or tries >= MAX_BOOTSTRAP_ATTEMPTS:
            _task_failed(ctx, run, f"bootstrapping {row.name}", out.error)
            return False
        ctx.event("bootstrap", f"bootstrapping {row.name} failed (attempt {tries} of "
                               f"{MAX_BOOTSTRAP_ATTEMPTS}), trying again: {out.error}")
        waiting = True
    return not waiting


def _bootstrap_node(ctx: RunContext, run: Run, spec: RunSpec, row: Instance,
                    cancel: threading.Event) -> BootstrapResult:
    """The task: SSH up, trainer installed, data staged, run directory with data and config."""
    inst = ctx.provider.get(row.provider_instance_id)
    lost = lost_reason(row, inst, ctx.provider.name)
    if lost:
        raise NodeLost(lost)
    node = ctx.provider.node(inst)  # its own session: the step thread never shares it
    try:
        wait_for_ssh = getattr(node, "wait_for_ssh", None)
        if wait_for_ssh is not None:
            wait_for_ssh(time.monotonic() + ctx.settings.node_ssh_timeout_s, interval_s=1.0)
        s = ctx.settings
        run_dir = f"{s.node_root}/runs/{row.name}"
        store_env: dict[str, str] = {}
        if storage.nodes_use_store(ctx, run, spec):
            # the data preparation reaches the store's data cache with the run's own credentials
            home = node.run("printf '%s' \"$HOME\"").strip()
            store_env = storage.node_env(ctx, run, spec, node, f"{home}/{run_dir}")
        result = bootstrap(node, BootstrapSpec(
            run_dir=run_dir, python=s.node_python,
            torch_site_packages=s.node_torch_site_packages, root=s.node_root,
            data_source=spec.data.source, data_name=storage.data_name(spec),
            prepare_args=tuple(cmd.prepare_args(spec, storage.data_cache_uri(ctx, run, spec))),
            prepare_env=store_env,
        ), wheels=ctx.wheels, on_event=lambda m: ctx.event("bootstrap", f"{row.name}: {m}"))
        if cancel.is_set():
            raise Cancelled("the run ended")
        # the run directory keeps the layout the commands expect (commands.py): data/ and config
        node.run(f"ln -sfn {shlex.quote(result.data_dir)} {shlex.quote(cmd.path(result.run_dir, cmd.DATA))}")
        cmd.write_json(node, cmd.path(result.run_dir, cmd.CONFIG),
                       cmd.trainer_config(spec, result.run_dir, storage.checkpoints_uri(ctx, run, spec)))
        return result
    finally:
        node.close()


def _record_ready(ctx: RunContext, run: Run, row: Instance, result: BootstrapResult) -> None:
    with ctx.write() as (session, _fresh):
        fresh = session.get(Instance, row.id)
        fresh.workdir, fresh.python = result.run_dir, result.python
        took = sum(result.timings.values())
        add_event(session, run.id, "bootstrap",
                  f"{row.name} is ready in {took:.1f} s (torch {result.torch_version or 'as before'}, "
                  f"run directory {result.run_dir})")


# -- failures -------------------------------------------------------------------------------------
def _task_failed(ctx: RunContext, run: Run, what: str, error: BaseException) -> bool:
    """Fail the run for a task's error (True), or leave it for the next pass when retrying may
    help (False)."""
    if isinstance(error, LeaseLostError):
        raise error  # another worker has the run now: end nothing
    if isinstance(error, Cancelled):
        return False
    if isinstance(error, (PlacementFailed, NodeLost, HostKeyMismatch)):
        reason = str(error)  # already one line naming the node (or what placement tried)
    elif isinstance(error, ProvisionError) and error.retryable:
        log.warning("run %s: %s: %s; trying again next pass", run.id, what, error)
        return False
    elif isinstance(error, ProvisionError):
        reason = f"{what} failed: {error}"
    else:
        log.error("run %s: %s failed", run.id, what, exc_info=error)
        reason = f"{what} failed: {type(error).__name__}: {error}"
    end_run(ctx, run, RunStatus.failed, reason.splitlines()[0][:1000])
    return True
