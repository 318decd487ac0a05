"""The `evaluating` stage: measure the model on node 0 and store what was measured.

    evaluating: trainer.evaluate (test loss, bits per byte) on the checkpoint training committed
                last, or on OpenAI's weights for a pretrained run (`hf:NAME`), in fp32 over
                windows of the training seq_len (the model's context for `hf:NAME`)
                -> an `evaluations` row (kind test_loss, with its window and precision) tied to
                   that checkpoint, run.test_loss
                then, with evaluation.ift.enabled: trainer.ift on the same model (fine-tune on
                the instruction data, greedy answers to its test items), its fine-tuned weights
                uploaded by the node to the run's folder in the store (RUN/ift/ift_step_N)
                -> an `evaluations` row (kind ift) holding the summary and the answers, and a
                   `checkpoints` row of kind ift for the fine-tuned weights
                -> succeeded
                a run stopped for its budget (run.stop_requested_at, budget.py) is not fine-tuned
                (that takes more time): its test loss is measured on the checkpoint it stopped at
                -> stopped

Each program runs detached on the node under its own name (`eval`, `ift`): its pid file is the
record that it was started, so a restarted worker finds it running or finished and never starts
it twice; one that ended without an exit code (killed) is started again. The test loss is stored
as soon as it is known (run.test_loss set is the mark that this part is done), so it shows while
the fine-tuning runs. The answers are judged later by the service, never on the node
(`trainyard compare`). The stage answers with an outcome (outcomes.py); steps.py ends the run.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.controller import commands as cmd
from orchestrator.controller.context import NodeHandle, RunContext, load_run, node_handles
from orchestrator.controller.ingest import checkpoint_uri, read_new, record_output
from orchestrator.controller.outcomes import WAITING, Done, Failed, Outcome, Record
from orchestrator.controller.storage import node_env, nodes_use_store, run_folder
from orchestrator.db.models import Checkpoint, CheckpointKind, CheckpointState, Evaluation, LogChunk, Run, utcnow
from orchestrator.judge.compare import item_set_hash
from orchestrator.judge.schemas import Item
from orchestrator.runs import add_event
from orchestrator.spec import RunSpec

ANSWER_KEYS = ("instruction", "input", "output", "model_response")


def _keep_log(session: Session, run_id: str, text: str) -> None:
    if text.strip():
        session.add(LogChunk(run_id=run_id, rank=0, text=text))


def _checkpoint_id(session: Session, run_id: str, step: object) -> int | None:
    if step is None:
        return None
    return session.scalar(
        select(Checkpoint.id)
        .where(Checkpoint.run_id == run_id, Checkpoint.kind == CheckpointKind.train.value, Checkpoint.step == step)
        .order_by(Checkpoint.id.desc())
        .limit(1)
    )


def evaluating(ctx: RunContext, run: Run, spec: RunSpec) -> Outcome:
    h = node_handles(ctx, run)[0][1]  # node 0 evaluates
    if run.test_loss is None:
        result = _test_loss(ctx, run, spec, h)
        if not isinstance(result, dict):
            return result  # running, just started, or failed
        record = _record_test_loss(result, cmd.log_tail(h.node, h.workdir, "eval.log"))
        if not spec.evaluation.ift.enabled or run.stop_requested_at is not None:
            return Done(f"test loss {float(result['test_loss']):.4f} on the test split", record)
        with ctx.write() as (session, fresh):
            record(session, fresh)
        run = load_run(ctx.factory, run.id) or run
    return _ift(ctx, run, spec, h)


# -- test loss ------------------------------------------------------------------------------------
def _test_loss(ctx: RunContext, run: Run, spec: RunSpec, h: NodeHandle) -> dict | Outcome:
    """eval.json once trainer.evaluate has succeeded; else Waiting (it runs, or was just started)
    or Failed."""
    proc = cmd.proc_state(h.node, h.workdir, "eval")
    if proc.running:
        return WAITING
    if not proc.started and not spec.model.pretrained:
        # the trainer's last lines, written after DONE while it exited (see steps._training)
        record_output(ctx, h, read_new(h, run))
    if not proc.started or proc.exit_code is None:  # never started, or killed: (re)start it
        manifest = h.node.read_json(cmd.path(h.workdir, cmd.DATA, "manifest.json")) or {}
        sha = manifest.get("splits", {}).get("test", {}).get("sha256")
        if spec.model.pretrained:
            what = f"OpenAI's {spec.model.pretrained}"
            command = cmd.eval_command(h.python, h.env, spec, h.workdir, checkpoint=None, test_sha256=sha)
        else:
            what = (h.node.read_text(cmd.path(h.workdir, "checkpoints", "latest")) or "").strip()
            if not what:
                return Failed("training finished but left no committed checkpoint to evaluate")
            command = cmd.eval_command(h.python, h.env, spec, h.workdir, checkpoint=what, test_sha256=sha)
        ctx.fence()  # a pass blocked past its lease starts nothing
        pid = command.start(h.node)
        with ctx.write() as (session, _fresh):
            add_event(session, run.id, "info", f"evaluating {what} on the test split (pid {pid})")
        return WAITING
    if proc.exit_code != 0:
        return Failed(cmd.failure_reason(h.node, cmd.path(h.workdir, "eval.log"), "evaluation", proc.exit_code))
    result = h.node.read_json(cmd.path(h.workdir, cmd.EVAL_OUT))
    if not result or not isinstance(result.get("test_loss"), (int, float)):
        return Failed(f"evaluation exited 0 but {cmd.EVAL_OUT} holds no test_loss")
    return result


def _record_test_loss(result: dict, eval_log: str) -> Record:
    def record(session: Session, fresh: Run) -> None:
        session.add(
            Evaluation(
                run_id=fresh.id,
                checkpoint_id=_checkpoint_id(session, fresh.id, result.get("step")),
                kind="test_loss",
                test_loss=float(result["test_loss"]),
                bits_per_byte=result.get("bits_per_byte"),
                tokens=result.get("tokens"),
                test_set_sha256=result.get("test_set_sha256"),
                window=result["window"] if isinstance(result.get("window"), int) else None,
                precision=result["precision"] if isinstance(result.get("precision"), str) else None,
                details=result,
            )
        )
        fresh.test_loss = float(result["test_loss"])
        _keep_log(session, fresh.id, eval_log)
        add_event(session, fresh.id, "info", f"test loss {fresh.test_loss:.4f} on the test split")

    return record


# -- instruction fine-tuning ----------------------------------------------------------------------
def _ift(ctx: RunContext, run: Run, spec: RunSpec, h: NodeHandle) -> Outcome:
    ift = spec.evaluation.ift
    proc = cmd.proc_state(h.node, h.workdir, "ift")
    if proc.running:
        return WAITING
    evaluated = h.node.read_json(cmd.path(h.workdir, cmd.EVAL_OUT)) or {}
    if not proc.started or proc.exit_code is None:  # never started, or killed: (re)start it
        # the model whose test loss was just measured: its checkpoint folder, or hf:NAME
        model = str(evaluated.get("checkpoint") or "")
        if not model:
            return Failed(f"{cmd.EVAL_OUT} on the node names no checkpoint to fine-tune")
        # the fine-tuned weights go to the run's folder in the store, beside its checkpoints/
        store = ift_store_uri(ctx, run, spec)
        # with a store, the run's store credentials, as training gets them (an s3:// upload needs them)
        env = {**h.env, **node_env(ctx, run, spec, h.node, h.workdir)} if store else h.env
        command = cmd.ift_command(h.python, env, spec, h.workdir, model=model, store=store)
        ctx.fence()  # a pass blocked past its lease starts nothing
        pid = command.start(h.node)
        with ctx.write() as (session, _fresh):
            add_event(
                session,
                run.id,
                "info",
                f"instruction fine-tuning {model} on {ift.data}, then answering its test items (pid {pid})",
            )
        return WAITING
    ift_log = cmd.log_tail(h.node, h.workdir, "ift.log")
    if proc.exit_code != 0:
        return Failed(
            cmd.failure_reason(h.node, cmd.path(h.workdir, "ift.log"), "instruction fine-tuning", proc.exit_code)
        )
    out = cmd.path(h.workdir, cmd.IFT_OUT)
    summary = h.node.read_json(cmd.path(out, "ift.json"))
    answers, problem = _answers(h.node.read_json_list(cmd.path(out, "answers.json")))
    if summary is None or problem:
        return Failed(f"instruction fine-tuning exited 0 but {problem or 'ift.json is missing or not a JSON object'}")
    items = [Item(instruction=a["instruction"], input=a["input"], output=a["output"]) for a in answers]

    def record(session: Session, fresh: Run) -> None:
        session.add(
            Evaluation(
                run_id=fresh.id,
                checkpoint_id=_checkpoint_id(session, fresh.id, evaluated.get("step")),
                kind="ift",
                details={
                    "summary": summary,
                    "item_set_hash": item_set_hash(items),
                    "n_items": len(answers),
                    "answers": answers,
                },
            )
        )
        _record_fine_tuned(session, fresh.id, summary.get("fine_tuned"), h, ctx.provider.name)
        _keep_log(session, fresh.id, ift_log)

    best = summary.get("best_epoch")
    val = summary.get("best_val_loss")
    how = f"best epoch {best} of {summary.get('epochs_run')}" if best is not None else "fine-tuned"
    if isinstance(val, (int, float)):
        how += f", val loss {val:.4f}"
    return Done(
        f"test loss {run.test_loss:.4f}; instruction fine-tuned ({how}) and answered {len(answers)} test items", record
    )


def ift_store_uri(ctx: RunContext, run: Run, spec: RunSpec) -> str | None:
    """Where trainer.ift uploads the fine-tuned checkpoint: RUN_FOLDER/ift (None: the run's nodes
    reach no store, and the checkpoint stays on the node, as training's do)."""
    if not nodes_use_store(ctx, run, spec):
        return None
    return f"{run_folder(ctx, run, spec).rstrip('/')}/ift"


def _record_fine_tuned(session: Session, run_id: str, fine_tuned: object, h: NodeHandle, provider: str) -> None:
    """The `checkpoints` row (kind ift) of trainer.ift's fine-tuned weights, from ift.json's
    `fine_tuned` record; one per (run, step), so a repeated pass updates it."""
    if not isinstance(fine_tuned, dict) or not isinstance(fine_tuned.get("step"), int):
        return  # a trainer from before the fine-tuned weights were kept
    step, uri = fine_tuned["step"], fine_tuned.get("uri")
    row = session.scalar(
        select(Checkpoint).where(
            Checkpoint.run_id == run_id, Checkpoint.kind == CheckpointKind.ift.value, Checkpoint.step == step
        )
    )
    if row is None:
        row = Checkpoint(run_id=run_id, kind=CheckpointKind.ift.value, step=step, tokens=0, uri="")
        session.add(row)
    row.tokens = fine_tuned["tokens"] if isinstance(fine_tuned.get("tokens"), int) else 0
    row.bytes = fine_tuned["bytes"] if isinstance(fine_tuned.get("bytes"), int) else None
    row.node_path = str(fine_tuned.get("path") or "") or None
    if isinstance(uri, str) and uri:
        row.uri, row.state, row.stored_at = uri, CheckpointState.stored.value, utcnow()
        add_event(session, run_id, "checkpoint", f"instruction-fine-tuned weights (step {step}) stored at {uri}")
    else:
        row.uri, row.state = checkpoint_uri(h, row.node_path or "", provider), CheckpointState.on_node.value


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
