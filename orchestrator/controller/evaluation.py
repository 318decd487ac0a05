"""The `evaluating` step: measure the model on node 0, store what was measured, end the run.

    evaluating: trainer.evaluate (test loss, bits per byte) on the checkpoint training committed
                last, or on OpenAI's weights for a pretrained run (`hf:NAME`)
                -> an `evaluations` row (kind test_loss) tied to that checkpoint, run.test_loss
                then, with evaluation.ift.enabled: trainer.ift on the same model (fine-tune on
                the instruction data, greedy answers to its test items)
                -> an `evaluations` row (kind ift) holding the summary and the answers
                -> succeeded

Each program runs detached on the node under its own name (`eval`, `ift`): its pid file is the
record that it was started, so a restarted worker finds it running or finished and never starts
it twice; one that ended without an exit code (killed) is started again. The test loss is stored
as soon as it is known (run.test_loss set is the mark that this part is done), so it shows while
the fine-tuning runs. The answers are judged later by the service, never on the node
(`trainyard compare`). The run is ended, and its node terminated, by lifecycle.end_run.
"""

from __future__ import annotations

from sqlalchemy import select

from orchestrator.controller import commands as cmd
from orchestrator.controller.context import NodeHandle, NodeLost, RunContext, live_instances, load_run
from orchestrator.controller.ingest import read_new, store
from orchestrator.controller.lifecycle import end_run
from orchestrator.db.models import Checkpoint, Evaluation, LogChunk, Run, RunStatus
from orchestrator.judge.compare import item_set_hash
from orchestrator.judge.schemas import Item
from orchestrator.runs import add_event
from orchestrator.spec import RunSpec

ANSWER_KEYS = ("instruction", "input", "output", "model_response")


def _head(ctx: RunContext, run: Run) -> NodeHandle:
    """Node 0, the one that evaluates (raises NodeLost when it is gone)."""
    rows = [r for r in live_instances(run) if r.terminate_requested_at is None]
    if not rows:
        raise NodeLost("the run has no live instance")
    return ctx.handle(min(rows, key=lambda r: r.rank))


def _fail(ctx: RunContext, run: Run, reason: str) -> None:
    end_run(ctx, run, RunStatus.failed, reason)


def _keep_log(session, run_id: str, text: str) -> None:
    if text.strip():
        session.add(LogChunk(run_id=run_id, rank=0, text=text))


def _checkpoint_id(session, run_id: str, step: object) -> int | None:
    if step is None:
        return None
    return session.scalar(select(Checkpoint.id).where(Checkpoint.run_id == run_id, Checkpoint.step == step)
                          .order_by(Checkpoint.id.desc()).limit(1))


def evaluating(ctx: RunContext, run: Run, spec: RunSpec) -> None:
    h = _head(ctx, run)
    if run.test_loss is None:
        result = _test_loss(ctx, run, spec, h)
        if result is None:
            return  # running, just started, or failed (then the run has ended)
        if not spec.evaluation.ift.enabled:
            return end_run(ctx, run, RunStatus.succeeded,
                           f"test loss {float(result['test_loss']):.4f} on the test split",
                           _record_test_loss(result, cmd.log_tail(h.node, h.workdir, "eval.log")))
        record = _record_test_loss(result, cmd.log_tail(h.node, h.workdir, "eval.log"))
        with ctx.write() as (session, fresh):
            record(session, fresh)
        run = load_run(ctx.factory, run.id) or run
    _ift(ctx, run, spec, h)


# -- test loss ------------------------------------------------------------------------------------
def _test_loss(ctx: RunContext, run: Run, spec: RunSpec, h: NodeHandle) -> dict | None:
    """eval.json once trainer.evaluate has succeeded; None while it runs or after failing the run."""
    proc = cmd.proc_state(h.node, h.workdir, "eval")
    if proc.running:
        return None
    if not proc.started and not spec.model.pretrained:
        # the trainer's last lines, written after DONE while it exited (see steps._training)
        store(ctx, h, read_new(h, run))
    if not proc.started or proc.exit_code is None:  # never started, or killed: (re)start it
        manifest = cmd.read_json(h.node, cmd.path(h.workdir, cmd.DATA, "manifest.json")) or {}
        sha = manifest.get("splits", {}).get("test", {}).get("sha256")
        if spec.model.pretrained:
            what = f"OpenAI's {spec.model.pretrained}"
            command = cmd.eval_command(h.python, h.env, spec, h.workdir, checkpoint=None, test_sha256=sha)
        else:
            what = (h.node.read_text(cmd.path(h.workdir, "checkpoints", "latest")) or "").strip()
            if not what:
                _fail(ctx, run, "training finished but left no committed checkpoint to evaluate")
                return None
            command = cmd.eval_command(h.python, h.env, spec, h.workdir, checkpoint=what, test_sha256=sha)
        pid = h.node.start_detached(command, workdir=h.workdir, name="eval")
        with ctx.write() as (session, _fresh):
            add_event(session, run.id, "info", f"evaluating {what} on the test split (pid {pid})")
        return None
    if proc.exit_code != 0:
        _fail(ctx, run, cmd.failure_reason(h.node, cmd.path(h.workdir, "eval.log"), "evaluation",
                                           proc.exit_code))
        return None
    result = cmd.read_json(h.node, cmd.path(h.workdir, cmd.EVAL_OUT))
    if not result or not isinstance(result.get("test_loss"), (int, float)):
        _fail(ctx, run, f"evaluation exited 0 but {cmd.EVAL_OUT} holds no test_loss")
        return None
    return result


def _record_test_loss(result: dict, eval_log: str):
    def record(session, fresh: Run) -> None:
        session.add(Evaluation(
            run_id=fresh.id, checkpoint_id=_checkpoint_id(session, fresh.id, result.get("step")),
            kind="test_loss", test_loss=float(result["test_loss"]),
            bits_per_byte=result.get("bits_per_byte"), tokens=result.get("tokens"),
            test_set_sha256=result.get("test_set_sha256"), details=result,
        ))
        fresh.test_loss = float(result["test_loss"])
        _keep_log(session, fresh.id, eval_log)
        add_event(session, fresh.id, "info", f"test loss {fresh.test_loss:.4f} on the test split")

    return record


# -- instruction fine-tuning ----------------------------------------------------------------------
def _ift(ctx: RunContext, run: Run, spec: RunSpec, h: NodeHandle) -> None:
    ift = spec.evaluation.ift
    proc = cmd.proc_state(h.node, h.workdir, "ift")
    if proc.running:
        return
    evaluated = cmd.read_json(h.node, cmd.path(h.workdir, cmd.EVAL_OUT)) or {}
    if not proc.started or proc.exit_code is None:  # never started, or killed: (re)start it
        # the model whose test loss was just measured: its checkpoint folder, or hf:NAME
        model = str(evaluated.get("checkpoint") or "")
        if not model:
            return _fail(ctx, run, f"{cmd.EVAL_OUT} on the node names no checkpoint to fine-tune")
        command = cmd.ift_command(h.python, h.env, spec, h.workdir, model=model)
        pid = h.node.start_detached(command, workdir=h.workdir, name="ift")
        with ctx.write() as (session, _fresh):
            add_event(session, run.id, "info", f"instruction fine-tuning {model} on {ift.data}, then "
                                               f"answering its test items (pid {pid})")
        return
    ift_log = cmd.log_tail(h.node, h.workdir, "ift.log")
    if proc.exit_code != 0:
        return _fail(ctx, run, cmd.failure_reason(h.node, cmd.path(h.workdir, "ift.log"),
                                                  "instruction fine-tuning", proc.exit_code))
    out = cmd.path(h.workdir, cmd.IFT_OUT)
    summary = cmd.read_json(h.node, cmd.path(out, "ift.json"))
    answers, problem = _answers(cmd.read_json_list(h.node, cmd.path(out, "answers.json")))
    if summary is None or problem:
        return _fail(ctx, run, f"instruction fine-tuning exited 0 but "
                               f"{problem or 'ift.json is missing or not a JSON object'}")
    items = [Item(instruction=a["instruction"], input=a["input"], output=a["output"]) for a in answers]

    def record(session, fresh: Run) -> None:
        session.add(Evaluation(
            run_id=fresh.id, checkpoint_id=_checkpoint_id(session, fresh.id, evaluated.get("step")),
            kind="ift", details={"summary": summary, "item_set_hash": item_set_hash(items),
                                 "n_items": len(answers), "answers": answers},
        ))
        _keep_log(session, fresh.id, ift_log)

    best = summary.get("best_epoch")
    val = summary.get("best_val_loss")
    how = f"best epoch {best} of {summary.get('epochs_run')}" if best is not None else "fine-tuned"
    if isinstance(val, (int, float)):
        how += f", val loss {val:.4f}"
    end_run(ctx, run, RunStatus.succeeded,
            f"test loss {run.test_loss:.4f}; instruction fine-tuned ({how}) and answered "
            f"{len(answers)} test items", record)


def _answers(value: list | None) -> tuple[list[dict], str | None]:
    """trainer.ift's answers, checked: (the answers, None) or ([], what is wrong)."""
    if value is None:
        return [], "answers.json is missing or not a JSON list"
    if not value:
        return [], "answers.json holds no answers (no test items: more instruction data needed)"
    for i, a in enumerate(value):
        if not isinstance(a, dict) or not all(isinstance(a.get(k), str) for k in ANSWER_KEYS):
            return [], f"answers.json entry {i} lacks one of {', '.join(ANSWER_KEYS)} as text"
    return [{k: a[k] for k in ANSWER_KEYS} for a in value], None
