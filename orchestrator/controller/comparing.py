"""The worker's part in comparisons: wait for the baseline runs, then judge, in this process.

Each worker pass (`Comparisons.reconcile_once`, after the runs' passes):

1. a judging that finished is recorded: the report linked and the request succeeded, or failed
   with a one-line reason; the leases of judgings still going are renewed;
2. pending requests are looked at: one whose runs have all succeeded is claimed under a lease
   (a compare-and-set, so of several workers one judges) and judged on this worker's judge
   thread; one whose baseline run ended without succeeding fails, naming that run.

Judging (orchestrator.judge.judge_answers) calls the judge's API from here, the service, never from a
node, and on its own thread, so the worker's runs keep moving meanwhile. A worker that dies while
judging leaves a lease that expires; the next worker judges again, and the judgements already
paid for come from the cache. The API key is used only by the judge client, which keeps it out
of every message it produces.
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.comparisons import answers_of
from orchestrator.controller import lease
from orchestrator.controller.policy import one_line
from orchestrator.db.models import ComparisonRequest, ComparisonStatus, Run, RunStatus, utcnow
from orchestrator.db.session import transaction
from orchestrator.judge import judge_answers
from orchestrator.judge.errors import JudgeError
from orchestrator.judge.schemas import Mode
from orchestrator.settings import Settings

log = logging.getLogger("trainyard.controller")

#: comparisons one worker judges at once (each makes `judge_concurrency` calls at a time)
MAX_JUDGING = 1
#: unexpected errors (not the judge's own) in a row before a comparison is failed
MAX_ATTEMPTS = 3
_SCAN = 50


class ComparisonFailed(Exception):
    """The comparison cannot be judged as asked; the message says why, in one line."""


@dataclass
class _Judging:
    token: str
    future: Future
    lost: bool = False


@dataclass
class Comparisons:
    settings: Settings
    factory: sessionmaker[Session]
    owner: str
    _held: dict[str, _Judging] = field(default_factory=dict)
    _errors: dict[str, int] = field(default_factory=dict)

    def reconcile_once(self) -> None:
        self._finish()
        self._renew()
        if len(self._held) < MAX_JUDGING:
            self._advance()

    def close(self) -> None:
        """Give up the leases: a judging in flight is judged again by the next worker (the calls
        it made come from the cache). Its thread is a daemon: it does not hold up the exit."""
        for cid, j in list(self._held.items()):
            try:
                self._write(
                    cid,
                    j.token,
                    status=ComparisonStatus.pending.value,
                    lease_owner=None,
                    lease_token=None,
                    lease_expires_at=None,
                )
            except Exception:  # noqa: BLE001 - the lease expires by itself
                log.warning("could not release the lease on comparison %s", cid)
        self._held.clear()

    # -- judging in flight ------------------------------------------------------------------------
    def _finish(self) -> None:
        for cid, j in list(self._held.items()):
            if not j.future.done():
                continue
            del self._held[cid]
            if j.lost:
                continue  # another worker has it now
            error = j.future.exception()
            if error is None:
                self._errors.pop(cid, None)
                self._end(cid, j.token, ComparisonStatus.succeeded, None, report_id=j.future.result())
            elif isinstance(error, (ComparisonFailed, JudgeError)):
                self._end(cid, j.token, ComparisonStatus.failed, one_line(str(error)))
            else:
                n = self._errors[cid] = self._errors.get(cid, 0) + 1
                log.error("comparison %s: judging failed (%d of %d)", cid, n, MAX_ATTEMPTS, exc_info=error)
                if n >= MAX_ATTEMPTS:
                    self._end(cid, j.token, ComparisonStatus.failed, f"judging failed {n} times: {one_line(error)}")
                else:  # let it be claimed again (by us or another worker) on a later pass
                    self._write(cid, j.token, lease_expires_at=utcnow())

    def _renew(self) -> None:
        for cid, j in self._held.items():
            if not j.lost and not self._write(cid, j.token, lease_expires_at=self._expiry()):
                log.warning("comparison %s: lost its lease while judging", cid)
                j.lost = True

    def _end(
        self, cid: str, token: str, status: ComparisonStatus, reason: str | None, report_id: str | None = None
    ) -> None:
        now = utcnow()
        if self._write(
            cid,
            token,
            status=status.value,
            status_reason=reason,
            report_id=report_id,
            finished_at=now,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        ):
            log.info("comparison %s %s%s", cid, status.value, f": {reason}" if reason else "")

    def _write(self, cid: str, token: str, **values: object) -> bool:
        """A write fenced by our lease token; False when the lease is not ours any more."""
        with transaction(self.factory) as session:
            return lease.compare_and_set(
                session, ComparisonRequest, cid, ComparisonRequest.lease_token == token, updated_at=utcnow(), **values
            )

    def _expiry(self) -> datetime:
        return utcnow() + timedelta(seconds=self.settings.lease_s)

    # -- requests waiting ---------------------------------------------------------------------------
    def _advance(self) -> None:
        now = utcnow()
        with self.factory() as session:
            rows = session.scalars(
                select(ComparisonRequest)
                .where(
                    ComparisonRequest.status.in_([ComparisonStatus.pending.value, ComparisonStatus.running.value]),
                    lease.is_free(ComparisonRequest, now),
                )
                .order_by(ComparisonRequest.created_at)
                .limit(_SCAN)
            ).all()
            waiting = [(c.id, list(c.models)) for c in rows]
        for cid, models in waiting:
            if len(self._held) >= MAX_JUDGING:
                return
            ready, reason = self._runs_ready(models)
            if reason:
                self._fail_unclaimed(cid, reason)
            elif ready:
                self._claim(cid)

    def _runs_ready(self, models: list[dict]) -> tuple[bool, str | None]:
        """(every run has succeeded, why the comparison can never run: a run that ended otherwise)."""
        with self.factory() as session:
            runs = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_([m["run_id"] for m in models])))}
        for m in models:
            run = runs.get(m["run_id"])
            what = f"baseline {m['baseline']}" if m["baseline"] else m["label"]
            if run is None:
                return False, f"{what} (run {m['run_id']}) no longer exists"
            if RunStatus(run.status).is_terminal and run.status != RunStatus.succeeded.value:
                why = f": {run.status_reason}" if run.status_reason else ""
                return False, f"{what} (run {run.id}) ended {run.status}{why}"
        return all(runs[m["run_id"]].status == RunStatus.succeeded.value for m in models), None

    def _fail_unclaimed(self, cid: str, reason: str) -> None:
        with transaction(self.factory) as session:
            session.execute(
                update(ComparisonRequest)
                .where(ComparisonRequest.id == cid, ComparisonRequest.status == ComparisonStatus.pending.value)
                .values(
                    status=ComparisonStatus.failed.value,
                    status_reason=reason[:1000],
                    finished_at=utcnow(),
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
        log.info("comparison %s failed: %s", cid, reason)

    def _claim(self, cid: str) -> None:
        token, now = uuid.uuid4().hex, utcnow()
        open_ = ComparisonRequest.status.in_([ComparisonStatus.pending.value, ComparisonStatus.running.value])
        with transaction(self.factory) as session:
            won = lease.compare_and_set(
                session,
                ComparisonRequest,
                cid,
                and_(open_, lease.is_free(ComparisonRequest, now)),
                status=ComparisonStatus.running.value,
                lease_owner=self.owner,
                lease_token=token,
                lease_expires_at=self._expiry(),
                updated_at=now,
            )
        if won:
            log.info("comparison %s: judging on worker %s", cid, self.owner)
            self._held[cid] = _Judging(token, self._start(cid))

    def _start(self, cid: str) -> Future:
        future: Future = Future()

        def work() -> None:
            future.set_running_or_notify_cancel()
            try:
                future.set_result(judge(self.factory, self.settings, cid))
            except BaseException as exc:  # noqa: BLE001 - handed to _finish, which records it
                future.set_exception(exc)

        threading.Thread(target=work, name=f"trainyard-judge-{cid}", daemon=True).start()
        return future


def judge(factory: sessionmaker[Session], settings: Settings, comparison_id: str) -> str:
    """Judge a comparison's answers together (the judge's calls: network, no transaction open).
    Returns the report id; raises ComparisonFailed when the answers cannot be judged together."""
    with factory() as session:
        request = session.get_one(ComparisonRequest, comparison_id)
        # a judge Mode: the API accepts no other (api/comparison_schemas.py)
        models, mode, k, seed = list(request.models), cast(Mode, request.mode), request.k, request.seed
        found = {m["label"]: answers_of(session, m["run_id"]) for m in models}
    missing = [m for m in models if found[m["label"]] is None]
    if missing:
        m = missing[0]
        raise ComparisonFailed(f"{m['label']} (run {m['run_id']}) succeeded without IFT answers")
    answers = {label: a for label, a in found.items() if a is not None}
    first = answers[models[0]["label"]]
    for m in models[1:]:
        if answers[m["label"]].item_set_hash != first.item_set_hash:
            raise ComparisonFailed(
                f"{m['label']} (run {m['run_id']}) answered other test items than {models[0]['label']} "
                f"(run {models[0]['run_id']}); their evaluation.ift settings differ"
            )
    report = judge_answers(
        factory,
        settings,
        first.items,
        {label: a.responses for label, a in answers.items()},
        k=k,
        seed=seed,
        mode=mode,
        run_ids={m["label"]: m["run_id"] for m in models},
    )
    return report.id
