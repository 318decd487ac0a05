"""The `evaluating` step: measure the trained model on node 0, store the result, end the run.

    evaluating: trainer.evaluate on the checkpoint training committed last -> an `evaluations`
                row (kind test_loss) tied to that checkpoint -> succeeded

The evaluation runs detached on the node (pid file `eval.pid`), so a restarted worker finds it
running or finished instead of starting it again; one killed without an exit code is started
again. The run is ended (and its node terminated) by lifecycle.end_run.
"""

from __future__ import annotations

from sqlalchemy import select

from orchestrator.controller import commands as cmd
from orchestrator.controller.context import NodeHandle, NodeLost, RunContext, live_instances
from orchestrator.controller.ingest import read_new, store
from orchestrator.controller.lifecycle import end_run
from orchestrator.db.models import Checkpoint, Evaluation, LogChunk, Run, RunStatus
from orchestrator.runs import add_event
from orchestrator.spec import RunSpec

_LOG_TAIL = 65536


def _head(ctx: RunContext, run: Run) -> NodeHandle:
    """Node 0, the one that evaluates (raises NodeLost when it is gone)."""
    rows = [r for r in live_instances(run) if r.terminate_requested_at is None]
    if not rows:
        raise NodeLost("the run has no live instance")
    return ctx.handle(min(rows, key=lambda r: r.rank))


def _log_tail(handle: NodeHandle, name: str) -> str:
    return handle.node.run(
        f"tail -c {_LOG_TAIL} {cmd.path(handle.workdir, name)} 2>/dev/null", check=False
    ).replace("\x00", "")


def _fail(ctx: RunContext, run: Run, reason: str) -> None:
    end_run(ctx, run, RunStatus.failed, reason)


def evaluating(ctx: RunContext, run: Run, spec: RunSpec) -> None:
    h = _head(ctx, run)
    proc = cmd.proc_state(h.node, h.workdir, "eval")
    if proc.running:
        return
    if not proc.started:
        # the trainer's last lines, written after DONE while it exited (see steps._training)
        store(ctx, h, read_new(h, run))
    if not proc.started or proc.exit_code is None:  # never started, or killed: (re)start it
        latest = (h.node.read_text(cmd.path(h.workdir, "checkpoints", "latest")) or "").strip()
        if not latest:
            return _fail(ctx, run, "training finished but left no committed checkpoint to evaluate")
        manifest = cmd.read_json(h.node, cmd.path(h.workdir, cmd.DATA, "manifest.json")) or {}
        sha = manifest.get("splits", {}).get("test", {}).get("sha256")
        command = cmd.eval_command(h.python, h.env, spec, h.workdir, checkpoint=latest, test_sha256=sha)
        pid = h.node.start_detached(command, workdir=h.workdir, name="eval")
        with ctx.write() as (session, _fresh):
            add_event(session, run.id, "info", f"evaluating {latest} on the test split (pid {pid})")
        return
    eval_log = _log_tail(h, "eval.log")
    if proc.exit_code != 0:
        return _fail(ctx, run, cmd.failure_reason(
            h.node, cmd.path(h.workdir, "eval.log"), "evaluation", proc.exit_code))
    result = cmd.read_json(h.node, cmd.path(h.workdir, cmd.EVAL_OUT))
    if not result or not isinstance(result.get("test_loss"), (int, float)):
        return _fail(ctx, run, f"evaluation exited 0 but {cmd.EVAL_OUT} holds no test_loss")

    def record(session, fresh):
        step = result.get("step")
        ckpt_id = session.scalar(
            select(Checkpoint.id).where(Checkpoint.run_id == fresh.id, Checkpoint.step == step)
            .order_by(Checkpoint.id.desc()).limit(1)) if step is not None else None
        session.add(Evaluation(
            run_id=fresh.id, checkpoint_id=ckpt_id, kind="test_loss",
            test_loss=float(result["test_loss"]), bits_per_byte=result.get("bits_per_byte"),
            tokens=result.get("tokens"), test_set_sha256=result.get("test_set_sha256"),
            details=result,
        ))
        fresh.test_loss = float(result["test_loss"])
        if eval_log.strip():
            session.add(LogChunk(run_id=fresh.id, rank=0, text=eval_log))

    end_run(ctx, run, RunStatus.succeeded,
            f"test loss {float(result['test_loss']):.4f} on the test split", record)
