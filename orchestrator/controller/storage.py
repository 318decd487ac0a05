"""The run's artifact store as the controller uses it: what the node's processes need to reach it,
which stored checkpoint a (re)started trainer resumes from, and retention.

Access: orchestrator/artifacts.py grants a run's nodes short-lived credentials for the run's
folder and its data set's cache folder; here they are written to each node's run directory and
renewed while the run lives. The grant is kept per run by the worker (`RunContext.store_access`),
so a pass does not ask IAM again; a new worker simply grants again.

Retention, per run: the last `training.keep_last` stored checkpoints, the one with the lowest
validation loss, and every checkpoint an evaluation refers to are kept; the others are deleted
from the store. Only `stored` checkpoints are ever chosen (a checkpoint still uploading is not in
the store as a whole yet), and the newest stored one, which a recovering trainer resumes from, is
always among the last K. A victim is first marked `deleting` (so a crash half-way is finished on
the next pass), then its manifest goes first (see ArtifactStore.delete_checkpoint), then the row is
marked `deleted`.
"""

from __future__ import annotations

import hashlib
import json
import threading

from sqlalchemy import select

from orchestrator import artifacts
from orchestrator.controller.commands import path
from orchestrator.controller.context import RunContext, log
from orchestrator.db.models import Checkpoint, CheckpointKind, CheckpointState, Evaluation, Run, best_checkpoint
from orchestrator.grants import revoke_run_access
from orchestrator.runs import add_event
from orchestrator.spec import RunSpec
from provision.node import Node
from trainer.artifacts import ArtifactError, split_uri

_LOCK = threading.Lock()  # two bootstrap tasks of one run must not grant twice at once


def data_name(spec: RunSpec) -> str:
    """Prepared data is shared (on a node, and in the store's cache) by the runs that ask for
    the same source and options."""
    key = json.dumps(spec.data.model_dump(mode="json"), sort_keys=True)
    return "d-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def run_folder(ctx: RunContext, run: Run, spec: RunSpec) -> str:
    return run.artifact_uri or artifacts.run_folder(ctx.settings, spec, run.id)


def nodes_use_store(ctx: RunContext, run: Run, spec: RunSpec) -> bool:
    """Whether the run's nodes reach the artifact store: always on this machine (the local
    provider); on rented nodes only an s3:// store, since a file:// store is a folder on the
    service's machine that a rented node cannot see. Without it checkpoints stay on the nodes
    (and are lost with them) and every node prepares its data itself."""
    return not ctx.provider.needs_bootstrap or artifacts.is_s3(run_folder(ctx, run, spec))


def checkpoints_uri(ctx: RunContext, run: Run, spec: RunSpec) -> str | None:
    """Where the trainer uploads the run's checkpoints (None: nowhere, see nodes_use_store)."""
    if not nodes_use_store(ctx, run, spec):
        return None
    return artifacts.checkpoints_uri(run_folder(ctx, run, spec))


def data_cache_uri(ctx: RunContext, run: Run, spec: RunSpec) -> str | None:
    """The store folder that caches the run's prepared data set (None: no cache)."""
    if not nodes_use_store(ctx, run, spec):
        return None
    return artifacts.data_cache_uri(ctx.settings, spec, data_name(spec))


def _access(ctx: RunContext, run: Run, spec: RunSpec) -> artifacts.NodeAccess:
    with _LOCK:
        current = ctx.store_access.get("grant")
        if current is None or current.needs_renewal(ctx.settings.artifact_grant_s):
            current = artifacts.node_access(ctx.settings, run_folder(ctx, run, spec), data_cache_uri(ctx, run, spec))
            ctx.store_access.clear()
            ctx.store_access["grant"] = current
        return current


def node_env(ctx: RunContext, run: Run, spec: RunSpec, node: Node, workdir: str) -> dict[str, str]:
    """The store's environment for processes in `workdir` on `node`. Writes (or renews) the
    run's credentials file there first when the node does not hold the current one."""
    if not nodes_use_store(ctx, run, spec):
        return {}
    access = _access(ctx, run, spec)
    if access.credentials is not None and ctx.store_access.get(("written", node.label, workdir)) != access.expires_at:
        node.write_private(path(workdir, artifacts.NODE_CREDENTIALS), access.credentials)
        ctx.store_access[("written", node.label, workdir)] = access.expires_at
    return access.env_for(workdir)


def revoke_node_access(ctx: RunContext, run: Run, spec: RunSpec) -> None:
    """Once a run has ended, its nodes' credentials stop working at once (the run's IAM role is
    deleted), instead of when they expire. Raises ArtifactError (a bad URI, IAM refusing or
    away): controller/cleanup.py tries again, then gives up (the credentials expire anyway)."""
    folder = run_folder(ctx, run, spec)
    if not (nodes_use_store(ctx, run, spec) and artifacts.is_s3(folder)):
        return
    _scheme, bucket, prefix = split_uri(folder)
    revoke_run_access(
        bucket, prefix, endpoint_url=ctx.settings.artifact_endpoint_url, region=ctx.settings.artifact_region
    )
    ctx.store_access.clear()


def latest_stored(ctx: RunContext, run: Run, spec: RunSpec) -> tuple[int, str] | None:
    """(step, URI) of the newest checkpoint committed in the store: where a restarted trainer
    resumes. The store itself is asked (the service may list it; a node may not), because the
    trainer may have stored a newer one than the database knows of before its node died; and a
    trainer resumed from an older one would train steps that are stored already, whose upload it
    could not replace (a node's credentials cannot delete). The database's newest is the answer
    only when the store cannot be listed."""
    folder = checkpoints_uri(ctx, run, spec)
    if folder is not None:
        try:
            store = artifacts.open_run_store(ctx.settings, folder)
            names = store.list_checkpoints()
            steps = {int(n.rsplit("_", 1)[-1]): n for n in names if n.rsplit("_", 1)[-1].isdigit()}
            if steps:
                step = max(steps)
                return step, f"{folder}/{steps[step]}"
        except ArtifactError as exc:
            log.warning("run %s: cannot list the stored checkpoints (%s); using the recorded ones", run.id, exc)
    with ctx.factory() as session:
        row = session.scalar(
            select(Checkpoint)
            .where(Checkpoint.run_id == run.id, Checkpoint.state == CheckpointState.stored.value)
            .where(Checkpoint.kind == CheckpointKind.train.value)  # never an IFT checkpoint
            .order_by(Checkpoint.step.desc())
            .limit(1)
        )
    return (row.step, row.uri) if row is not None else None


def retention_victims(rows: list[Checkpoint], keep_last: int, referenced: set[int]) -> list[Checkpoint]:
    """Which stored checkpoints retention deletes (pure): all but the last `keep_last` by step,
    the best by validation loss, and those referenced. Rows already `deleting` stay victims."""
    stored = sorted((r for r in rows if r.state == CheckpointState.stored.value), key=lambda r: r.step)
    keep = {r.id for r in stored[-keep_last:]} | referenced
    best = best_checkpoint(stored)
    if best is not None:
        keep.add(best.id)
    return [
        r
        for r in rows
        if r.state == CheckpointState.deleting.value or (r.state == CheckpointState.stored.value and r.id not in keep)
    ]


def apply_retention(ctx: RunContext, run: Run, spec: RunSpec) -> None:
    """Delete what retention does not keep from the store. A store error is logged and retried
    on a later pass: retention never stops a run."""
    with ctx.factory() as session:
        rows = list(
            session.scalars(
                select(Checkpoint).where(
                    Checkpoint.run_id == run.id,
                    Checkpoint.kind == CheckpointKind.train.value,  # the IFT weights are kept
                    Checkpoint.state.in_([CheckpointState.stored.value, CheckpointState.deleting.value]),
                )
            )
        )
        referenced = {
            i
            for i in session.scalars(
                select(Evaluation.checkpoint_id).where(
                    Evaluation.run_id == run.id, Evaluation.checkpoint_id.is_not(None)
                )
            )
            if i is not None
        }
    victims = retention_victims(rows, spec.training.keep_last, referenced)
    uri = checkpoints_uri(ctx, run, spec)
    if not victims or uri is None:  # None: the nodes upload nowhere, so nothing is in a store
        return
    ids = [v.id for v in victims]
    with ctx.write() as (session, _fresh):
        for row in session.scalars(select(Checkpoint).where(Checkpoint.id.in_(ids))):
            row.state = CheckpointState.deleting.value
    store = artifacts.open_run_store(ctx.settings, uri)
    deleted: list[Checkpoint] = []
    for victim in victims:
        try:
            store.delete_checkpoint(victim.uri.rstrip("/").rsplit("/", 1)[-1])
            deleted.append(victim)
        except ArtifactError as exc:
            log.warning("run %s: deleting checkpoint step %s failed, retrying later: %s", run.id, victim.step, exc)
    if not deleted:
        return
    with ctx.write() as (session, _fresh):
        for row in session.scalars(select(Checkpoint).where(Checkpoint.id.in_([d.id for d in deleted]))):
            row.state = CheckpointState.deleted.value
        add_event(
            session,
            run.id,
            "checkpoint",
            f"retention deleted the stored checkpoint(s) of step {', '.join(str(d.step) for d in deleted)} "
            f"(keeping the last {spec.training.keep_last}, the best and the evaluated)",
        )
