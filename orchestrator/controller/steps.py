"""The run state machine: the only place a run's status changes (docs/architecture.md, "A run's life").

    pending -> provisioning -> bootstrapping -> training -> evaluating -> succeeded
                                     |            ^  |          ^
                                     |            |  v          |
                                     |        recovering        |
                                     +--- (a pretrained model: not trained) ---+
    training -> succeeded when evaluation is off
    any state that is not terminal -> failed(reason) | cancelled | stopped(budget)
    a graceful budget stop (budget.py): training -> evaluating -> stopped, with its test loss

`TRANSITIONS` holds these edges as data; `set_status` refuses any other. Every provider goes the
same way: on the local provider placement and bootstrap are trivial, on rented ones they take
minutes (on the worker's task threads).

Each pass looks at what the database wants, then asks the stage of the run's status (placement,
bootstrapping, training, evaluation) what the provider and the nodes show. A stage starts what
is not started yet and answers with an outcome (outcomes.py): Waiting, Done, Failed, Lost (a node
is gone) or Killed (a trainer ended without an exit code). This module turns the answer into the
next status. Runs end only through `end_run`, which writes how the run ends before it terminates
the instances, so a worker that takes over mid-way finishes that same ending.

Nothing is done twice because each action is found on the node first: an instance by its name,
prepared data by its manifest, a started process by its pid file. So a worker killed at any
point, or a second worker taking over, picks up where it stopped. Steps never hold a transaction
during a provider or node call; every write is fenced by the lease (ctx.write).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from orchestrator.controller import budget, storage
from orchestrator.controller.bootstrapping import bootstrapping
from orchestrator.controller.cleanup import attempt, clean_up
from orchestrator.controller.context import RunContext, load_run, log, spec_of
from orchestrator.controller.evaluation import evaluating
from orchestrator.controller.lifecycle import (
    Termination,
    adopt_unrecorded,
    book_terminations,
    finish_terminations,
    release_workers,
    terminate_instances,
)
from orchestrator.controller.outcomes import Done, Failed, Killed, Lost, Outcome, Record, Waiting
from orchestrator.controller.placement import placement
from orchestrator.controller.policy import Action, classify, one_line
from orchestrator.controller.training import MAX_RECOVERIES, begin_recovery, recovering, training
from orchestrator.db.models import UNSUCCESSFUL_ENDINGS, Run, RunStatus, aware, utcnow
from orchestrator.planning.records import RECORDED_ENDINGS, measure
from orchestrator.runs import add_event
from orchestrator.spec import RunSpec

S = RunStatus
_ENDINGS = UNSUCCESSFUL_ENDINGS

#: every status change a run may make; anything else is a bug and is refused
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.pending: frozenset({S.provisioning}) | _ENDINGS,
    S.provisioning: frozenset({S.bootstrapping}) | _ENDINGS,
    S.bootstrapping: frozenset({S.training, S.evaluating}) | _ENDINGS,  # evaluating: a pretrained model
    S.training: frozenset({S.evaluating, S.succeeded, S.recovering}) | _ENDINGS,  # succeeded: no evaluation
    S.recovering: frozenset({S.training}) | _ENDINGS,
    S.evaluating: frozenset({S.succeeded}) | _ENDINGS,
    S.succeeded: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
    S.stopped: frozenset(),
}

#: steps one pass may take in a row, so a run moves through quick states without waiting a pass
MAX_STEPS_PER_PASS = 6


class IllegalTransition(RuntimeError):
    """A status change the state machine does not allow (a bug in the controller)."""


def check_transition(run: Run, to: RunStatus) -> RunStatus:
    """The run's status, if it may move to `to`; else IllegalTransition, naming both states."""
    frm = RunStatus(run.status)
    if to not in TRANSITIONS[frm]:
        raise IllegalTransition(
            f"run {run.id}: {frm.value} -> {to.value} is not an allowed transition "
            f"(from {frm.value}: {', '.join(sorted(s.value for s in TRANSITIONS[frm])) or 'none'})"
        )
    return frm


def set_status(session: Session, run: Run, to: RunStatus, message: str = "", *, reason: str | None = None) -> None:
    """Move the run to `to` and record the change (from, to, why) as an event.
    Raises IllegalTransition, naming both states, for a change TRANSITIONS does not allow."""
    frm = check_transition(run, to)
    now = utcnow()
    run.status = to.value
    run.updated_at = now
    if reason is not None:
        run.status_reason = reason
    if to == S.provisioning and run.started_at is None:
        run.started_at = now
    if to.is_terminal and run.finished_at is None:
        run.finished_at = aware(run.ending_at) if run.ending_at is not None else now  # when it was decided
    add_event(session, run.id, "status", reason or message, from_status=frm.value, to_status=to.value)
    log.info("run %s: %s -> %s%s", run.id, frm.value, to.value, f" ({reason or message})" if reason or message else "")


def end_run(ctx: RunContext, run: Run, status: RunStatus, reason: str, record: Record | None = None) -> None:
    """Terminate everything the run holds, then record how it ended (and `record`'s rows with it).

    Order matters for crash safety. First the intent, in one fenced transaction: how the run ends
    (`ending_status`, `ending_reason`, `ending_at`) and what the ending records (a test loss, a
    measured checkpoint). Then the provider calls: every instance named for the run adopted, the
    terminate request (its time kept on each row before it is sent: lifecycle.terminate_instances).
    Then the terminal status, the confirmed terminations and their cost, in one more fenced
    transaction. A worker killed anywhere in between leaves the intent, and whoever holds the run
    next finishes this same ending (reconcile, first thing) instead of finding the nodes gone and
    diagnosing a loss; the first decision stands over later ones. An ended run with an instance
    not confirmed terminated stays claimable, and its cleanup (cleanup.py) goes on. A step after
    the intent that fails (the provider, a bug) is an event, never a reason not to end the run
    (cleanup.attempt)."""
    if ctx.tasks is not None:
        ctx.tasks.cancel(run.id)  # first, so a placement in flight cannot launch after the terminate
    intended = _intend(ctx, run, status, reason, record)
    if intended is None:
        return  # already ended by an earlier pass of ours; cleanup handles the instances
    run = intended
    status, reason = RunStatus(str(run.ending_status)), str(run.ending_reason)
    adopted, not_adopted = attempt(run.id, "looking for instances named for the run", adopt_unrecorded, ctx, run)
    run = adopted or run
    term, not_terminated = attempt(run.id, "terminating the instances", terminate_instances, ctx, run)
    term = term or Termination()  # it raised: nothing asked; the cleanup asks again
    # what the training measured, if it trained (reads and a provider call: before the transaction)
    throughput, not_measured = (
        attempt(run.id, "recording the throughput", measure, ctx, run) if status in RECORDED_ENDINGS else (None, None)
    )
    with ctx.write() as (session, fresh):
        if RunStatus(fresh.status).is_terminal:
            return
        if throughput is not None:
            throughput(session, fresh)
        set_status(session, fresh, status, reason=one_line(reason))
        book_terminations(session, fresh, term)
        if term.error:
            add_event(session, fresh.id, "info", f"terminating the instances failed, retrying: {term.error}")
        for problem in (not_adopted, not_terminated, not_measured):
            if problem:
                add_event(session, fresh.id, "cleanup", problem)


def _intend(ctx: RunContext, run: Run, status: RunStatus, reason: str, record: Record | None) -> Run | None:
    """Write how the run ends and what the ending records, unless an ending was decided already
    (that one stands, and `record` is dropped: it belongs to a decision not taken). The run as
    it is now, or None when it has ended."""
    with ctx.write() as (session, fresh):
        if RunStatus(fresh.status).is_terminal:
            return None
        if fresh.ending_status is None:
            check_transition(fresh, status)  # a bug is refused before anything is done
            if record is not None:
                record(session, fresh)
            fresh.ending_status, fresh.ending_reason, fresh.ending_at = status.value, one_line(reason), utcnow()
            add_event(session, fresh.id, "ending", f"ending the run as {status.value}: {one_line(reason)}")
    return load_run(ctx.factory, run.id)


def reconcile(ctx: RunContext) -> bool:
    """Move one run as far as it can go now. True when the run needs no worker any more."""
    for _ in range(MAX_STEPS_PER_PASS):
        run = load_run(ctx.factory, ctx.run_id)
        if run is None:
            return True
        status = RunStatus(run.status)
        if status.is_terminal:
            return clean_up(ctx, run)
        if run.ending_status is not None:  # an ending decided and not finished (a worker died in it)
            end_run(ctx, run, RunStatus(run.ending_status), run.ending_reason or "")
            continue
        finish_terminations(ctx, run)  # nodes let go of (a lost one, the workers after training)
        spec = spec_of(run)
        if run.cancel_requested:
            end_run(ctx, run, S.cancelled, "cancelled by the user")
            continue
        over = budget.check(ctx, run, spec)  # alerts, a graceful stop asked for, or the backstop
        if over:
            end_run(ctx, run, S.stopped, over)
            continue
        try:
            outcome = STAGES[status](ctx, run, spec)
        except Exception as exc:
            action = classify(exc)
            if action is Action.RECOVER:
                outcome = Lost(one_line(exc))
            elif action is Action.FAIL:
                outcome = Failed(one_line(exc))
            else:
                raise  # retry, count or a lost lease: the worker's to handle
        _apply(ctx, run, spec, status, outcome)
        after = load_run(ctx.factory, ctx.run_id)
        if after is None or after.status == run.status:
            return False  # waiting on the node or the provider: look again next pass
    return False


def _next(status: RunStatus, spec: RunSpec, stopping: bool = False) -> RunStatus:
    """Where a run goes when the stage of `status` is done; `stopping`: the budget asked the
    trainer to stop (budget.py), so the run ends `stopped` where it would have succeeded."""
    ended = S.stopped if stopping else S.succeeded
    if status == S.bootstrapping:
        return S.evaluating if spec.model.pretrained else S.training
    if status == S.training:
        return S.evaluating if spec.evaluation.test_loss else ended
    return {
        S.pending: S.provisioning,
        S.provisioning: S.bootstrapping,
        S.recovering: S.training,
        S.evaluating: ended,
    }[status]


def _apply(ctx: RunContext, run: Run, spec: RunSpec, status: RunStatus, outcome: Outcome) -> None:
    if isinstance(outcome, Waiting):
        return
    if isinstance(outcome, Failed):
        return end_run(ctx, run, S.failed, outcome.reason)
    if isinstance(outcome, (Lost, Killed)):
        if status not in (S.training, S.recovering):
            return end_run(ctx, run, S.failed, outcome.reason)
        if run.recoveries >= MAX_RECOVERIES:
            return end_run(ctx, run, S.failed, f"{outcome.reason}, after {run.recoveries} recoveries already")
        run = load_run(ctx.factory, run.id) or run  # the stage may have recorded a (replacement) node
        record = begin_recovery(ctx, run, outcome.reason, replace_lost=isinstance(outcome, Lost))
        if record is None:  # the node answers again: the next pass goes on as usual
            return None
        if status == S.recovering:  # lost again while recovering: one more recovery, same status
            with ctx.write() as (session, fresh):
                record(session, fresh)
            return None
        _transition(ctx, run, S.recovering, outcome.reason, record)
        return None
    to = _next(status, spec, stopping=run.stop_requested_at is not None)
    message = outcome.message
    if to == S.stopped:  # what the budget stop kept: its reason first, then what was measured
        message = f"stopped for its budget: {run.stop_reason or 'budget'}; {message}"
    if status == S.bootstrapping:
        message += (
            f"; evaluating OpenAI's {spec.model.pretrained} (not trained)"
            if spec.model.pretrained
            else "; starting the trainer"
        )
    if to.is_terminal:
        return end_run(ctx, run, to, message, outcome.record)
    record = outcome.record
    if status == S.training and to == S.evaluating:
        # after training only node 0 has work left, and an idle node still bills: the workers
        # are marked in the same write as the move, and terminated by the next step
        release = release_workers(run)
        record = _both(release, outcome.record)
    _transition(ctx, run, to, message, record)
    return None


def _both(first: Record, second: Record | None) -> Record:
    def both(session: Session, fresh: Run) -> None:
        first(session, fresh)
        if second is not None:
            second(session, fresh)

    return both


def _transition(ctx: RunContext, run: Run, to: RunStatus, message: str, record: Record | None = None) -> None:
    with ctx.write() as (session, fresh):
        if fresh.status != run.status:
            return  # an earlier pass of ours already moved it
        if record is not None:
            record(session, fresh)
        set_status(session, fresh, to, message)


# -- the stages (the others live in placement, bootstrapping, training and evaluation) -----------
def _pending(ctx: RunContext, run: Run, spec: RunSpec) -> Outcome:
    folder = storage.run_folder(ctx, run, spec)

    def freeze_store(_session: Session, fresh: Run) -> None:  # a later change of settings moves no checkpoints
        fresh.artifact_uri = folder

    return Done(f"placing {spec.compute.nodes} node(s) on provider {spec.compute.provider}", freeze_store)


STAGES = {
    S.pending: _pending,
    S.provisioning: placement,
    S.bootstrapping: bootstrapping,
    S.training: training,
    S.recovering: recovering,
    S.evaluating: evaluating,
}
assert set(STAGES) == {s for s in S if not s.is_terminal}
