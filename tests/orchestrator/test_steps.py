"""The run state machine and each decision of its stages, in milliseconds: the real functions of
orchestrator/controller/ on a migrated SQLite database, with the provider, its nodes and the
worker's task threads replaced by the in-memory fakes of fakes.py (no subprocess, no sleep, no
thread). The end-to-end tests (test_e2e_*.py) run the same code on real processes.

What is asserted is what a user sees: the run's status and reason, its events, its cost entries,
and what was written or started on the nodes.
"""

from __future__ import annotations

import json
import shutil
from collections import deque
from datetime import timedelta
from itertools import pairwise

import pytest
from sqlalchemy import select

from fakes import FakeNode, FakeProvider, SyncTasks
from orchestrator.controller import lease, steps
from orchestrator.controller import training as training_module
from orchestrator.controller.bootstrapping import bootstrapping
from orchestrator.controller.context import RunContext, load_run, spec_of
from orchestrator.controller.evaluation import evaluating
from orchestrator.controller.lifecycle import finish_terminations
from orchestrator.controller.outcomes import WAITING, Done, Failed, Killed, Lost, Waiting
from orchestrator.controller.placement import placement
from orchestrator.controller.policy import (
    MAX_REASON_CHARS,
    MAX_TASK_ATTEMPTS,
    Action,
    Cancelled,
    NodeLost,
    classify,
    one_line,
    task_failure,
)
from orchestrator.controller.steps import TRANSITIONS, IllegalTransition, set_status
from orchestrator.controller.training import MAX_RECOVERIES, training
from orchestrator.db.models import (
    CostEntry,
    Evaluation,
    Instance,
    LogChunk,
    Run,
    RunEvent,
    RunStatus,
    aware,
    utcnow,
)
from orchestrator.db.session import transaction
from orchestrator.errors import LeaseLostError
from orchestrator.runs import instance_name
from orchestrator.settings import Settings
from orchestrator_helpers import sessions, set_run, submit_run
from provision.base import InstanceStatus
from provision.errors import (
    HostKeyMismatch,
    InsufficientCapacity,
    InvalidRequest,
    NodeError,
    NodeUnreachable,
    PlacementFailed,
    ProviderServerError,
    QuotaExceeded,
)

S = RunStatus
#: how long the seeded instances have been up: 31 started minutes at 120 c/h is 62 cents
UP = timedelta(minutes=30, seconds=10)
RENTED_ROOT = "/home/ubuntu/trainyard/runs"
VENV_PYTHON = "/home/ubuntu/trainyard/venv/bin/python"


# -- the harness ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """One migrated SQLite file, copied for each test (migrating takes longer than a test here)."""
    from orchestrator.db.migrations import upgrade

    path = tmp_path_factory.mktemp("db") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


class Env:
    """One run on the fake provider, its lease held, and the RunContext a worker would give it."""

    def __init__(self, factory, settings: Settings):
        self.factory, self.settings = factory, settings
        self.provider = FakeProvider()
        self.tasks = SyncTasks()
        self.run_id = ""
        self.ctx: RunContext | None = None

    def make_run(
        self,
        status: RunStatus = S.pending,
        *,
        nodes: int = 1,
        launched: bool | None = None,
        bootstrapped: bool = True,
        test_loss: bool = True,
        recoveries: int = 0,
        local: bool = False,
        **spec,
    ) -> str:
        """A run in `status` (written directly, as a crashed worker would leave it) with `nodes`
        instances launched and active for UP when `launched` (default: past provisioning), their
        run directory and interpreter recorded when `bootstrapped`. `local`: the provider is like
        the local one (no bootstrap step; it says where runs live; its nodes reach the store)."""
        self.provider.needs_bootstrap = not local
        compute = {"provider": "lambda", "instance_type": FakeProvider.INSTANCE_TYPE, "nodes": nodes}
        spec = {"compute": compute, "evaluation": {"test_loss": test_loss}, **spec}
        self.run_id = run_id = submit_run(self.factory, **spec)
        if launched is None:
            launched = status not in (S.pending, S.provisioning)
        now = utcnow()
        with transaction(self.factory) as s:
            run = s.get(Run, run_id)
            run.status, run.recoveries = status.value, recoveries
            if status != S.pending:
                run.started_at = now - UP
            for rank in range(nodes if launched else 0):
                inst = self.provider.launch(
                    name=instance_name(run_id, rank),
                    instance_type=FakeProvider.INSTANCE_TYPE,
                    region=FakeProvider.REGION,
                )
                workdir = inst.extra.get("workdir") or f"{RENTED_ROOT}/{inst.name}"
                s.add(
                    Instance(
                        run_id=run_id,
                        rank=rank,
                        name=inst.name,
                        provider=self.provider.name,
                        provider_instance_id=inst.id,
                        instance_type=inst.instance_type,
                        region=inst.region,
                        public_ip=inst.public_ip,
                        private_ip=inst.private_ip,
                        price_cents_per_hour=120,
                        billing_minute_s=60.0,
                        status="active",
                        launched_at=now - UP,
                        active_at=now - UP,
                        workdir=workdir if bootstrapped else None,
                        python=(inst.extra.get("python") or VENV_PYTHON) if bootstrapped else None,
                    )
                )
        token = lease.acquire(self.factory, run_id, self.settings.worker_id, self.settings.lease_s)
        assert token is not None
        self.ctx = RunContext(run_id, token, self.settings, self.factory, self.provider, tasks=self.tasks)
        return run_id

    # -- reading what a user sees -----------------------------------------------------------------
    def run(self) -> Run:
        run = load_run(self.factory, self.run_id)
        assert run is not None
        return run

    def instances(self) -> list[Instance]:
        return sorted(self.run().instances, key=lambda r: (r.rank, r.id))

    def node(self, rank: int) -> FakeNode:
        """The node of rank `rank` in use (or, once every node is released, the last one)."""
        rows = [r for r in self.instances() if r.rank == rank]
        row = next((r for r in rows if r.terminate_requested_at is None), rows[-1])
        return self.provider.nodes.setdefault(row.provider_instance_id, FakeNode(row.name))

    def workdir(self, rank: int) -> str:
        row = next(r for r in self.instances() if r.rank == rank)
        return row.workdir or f"{RENTED_ROOT}/{row.name}"

    def file(self, rank: int, name: str) -> str:
        return f"{self.workdir(rank)}/{name}"

    def name(self, rank: int) -> str:
        return instance_name(self.run_id, rank)

    def events(self, kind: str | None = None) -> list[str]:
        with self.factory() as s:
            rows = s.scalars(select(RunEvent).where(RunEvent.run_id == self.run_id).order_by(RunEvent.id))
            return [e.message for e in rows if kind is None or e.kind == kind]

    def path(self) -> list[str]:
        """The statuses the run went through, from its status events."""
        with self.factory() as s:
            rows = s.scalars(
                select(RunEvent).where(RunEvent.run_id == self.run_id, RunEvent.kind == "status").order_by(RunEvent.id)
            )
            return [e.to_status for e in rows]

    def costs(self) -> list[CostEntry]:
        with self.factory() as s:
            return list(s.scalars(select(CostEntry).where(CostEntry.run_id == self.run_id).order_by(CostEntry.id)))

    # -- driving ------------------------------------------------------------------------------------
    def stage(self, fn):
        run = self.run()
        return fn(self.ctx, run, spec_of(run))

    def apply(self, outcome) -> Run:
        run = self.run()
        steps._apply(self.ctx, run, spec_of(run), S(run.status), outcome)
        return self.run()

    def reconcile(self) -> bool:
        return steps.reconcile(self.ctx)

    def next_step(self) -> Run:
        """What the next step does first: terminate the nodes the last one let go of (marked in
        its write, so no takeover in between mistakes them for lost ones)."""
        marked = [r for r in self.instances() if r.terminate_requested_at is not None and r.terminated_at is None]
        assert marked and all(r.status != "terminating" for r in marked)
        finish_terminations(self.ctx, self.run())
        return self.run()


@pytest.fixture
def env(template_db, tmp_path):
    shutil.copy(template_db, tmp_path / "trainyard.db")
    url = f"sqlite:///{tmp_path / 'trainyard.db'}"
    factory = sessions(url)
    yield Env(
        factory,
        Settings(
            data_dir=tmp_path / "data",
            database_url=url,
            worker_id="worker-t",
            lease_s=30,
            placement_poll_s=0.01,
            node_active_poll_s=0.01,
            cleanup_retry_base_s=0,  # a cleanup step failed is tried again on the next pass
        ),
    )
    factory.kw["bind"].dispose()


def assert_all_terminated_and_booked(env: Env, ranks=None) -> None:
    """Every (or each of `ranks`') instance is terminated at the provider and in the database,
    and has exactly one cost entry: 31 started minutes at 120 c/h."""
    rows = [r for r in env.instances() if ranks is None or r.rank in ranks]
    assert rows
    for row in rows:
        assert env.provider.instances[row.provider_instance_id].status == InstanceStatus.terminated
        assert row.terminated_at is not None and row.status == "terminated", row.name
    by_instance = {c.instance_id: c for c in env.costs()}
    for row in rows:
        cost = by_instance[row.id]
        assert (cost.kind, cost.unit, cost.quantity, cost.cents) == ("instance", "minute", 31, 62.0), row.name
    assert len([c for c in env.costs() if c.instance_id in {r.id for r in rows}]) == len(rows)


# -- 1. the transition table --------------------------------------------------------------------
@pytest.mark.parametrize("frm", list(RunStatus), ids=lambda s: s.value)
def test_set_status_makes_exactly_the_transitions_of_the_table(env, frm):
    """Every (from, to) pair: an allowed one moves the run and records from/to and why; any other
    raises IllegalTransition naming both states and changes nothing."""
    run_id = env.make_run(S.pending, launched=False)
    for to in RunStatus:
        with env.factory() as session:
            run = session.get(Run, run_id)
            run.status, run.finished_at = frm.value, None
            session.flush()
            before = len(session.scalars(select(RunEvent.id).where(RunEvent.run_id == run_id)).all())
            if to in TRANSITIONS[frm]:
                set_status(session, run, to, reason=f"why {frm.value} -> {to.value}")
                session.flush()
                event = session.scalars(
                    select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id.desc())
                ).first()
                assert (event.kind, event.from_status, event.to_status) == ("status", frm.value, to.value)
                assert event.message == run.status_reason == f"why {frm.value} -> {to.value}"
                assert run.status == to.value
                assert (run.finished_at is not None) == to.is_terminal
                assert (run.started_at is not None) == (to == S.provisioning)  # the run was never started
            else:
                with pytest.raises(IllegalTransition) as info:
                    set_status(session, run, to, "not allowed")
                assert f"{frm.value} -> {to.value}" in str(info.value)
                assert run.status == frm.value
                after = len(session.scalars(select(RunEvent.id).where(RunEvent.run_id == run_id)).all())
                assert after == before
            session.rollback()


def test_the_table_covers_every_status_and_terminal_ones_have_no_way_out():
    assert set(TRANSITIONS) == set(RunStatus)
    for status, targets in TRANSITIONS.items():
        assert status not in targets, f"{status.value} -> itself"
        assert (not targets) == status.is_terminal, status.value


def test_every_running_status_can_fail_be_cancelled_or_stopped():
    for status in RunStatus:
        if not status.is_terminal:
            assert {S.failed, S.cancelled, S.stopped} <= TRANSITIONS[status], status.value


def test_every_status_is_reachable_from_pending():
    seen, queue = {S.pending}, deque([S.pending])
    while queue:
        for nxt in TRANSITIONS[queue.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    assert seen == set(RunStatus)


def test_the_lifecycle_paths_are_in_the_table():
    path = [S.pending, S.provisioning, S.bootstrapping, S.training, S.evaluating, S.succeeded]
    for a, b in pairwise(path):
        assert b in TRANSITIONS[a], f"{a.value} -> {b.value}"
    assert S.recovering in TRANSITIONS[S.training] and S.training in TRANSITIONS[S.recovering]
    assert S.succeeded in TRANSITIONS[S.training]  # evaluation off
    assert S.evaluating in TRANSITIONS[S.bootstrapping]  # a pretrained model


# -- 2. the error policy ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "error, action",
    [
        (LeaseLostError("taken over"), Action.LEASE_LOST),
        (NodeLost("node 0 is gone"), Action.RECOVER),
        (PlacementFailed("no capacity"), Action.FAIL),
        (HostKeyMismatch("key changed"), Action.FAIL),
        (InvalidRequest("bad type"), Action.FAIL),
        (QuotaExceeded("quota"), Action.FAIL),
        (NodeUnreachable("no answer"), Action.RETRY),
        (InsufficientCapacity("none left"), Action.RETRY),
        (ProviderServerError("502"), Action.RETRY),
        (Cancelled("the run ended"), Action.RETRY),
        (NodeError("command failed"), Action.COUNT),
        (ValueError("a bug"), Action.COUNT),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.value,
)
def test_classify(error, action):
    assert classify(error) is action


@pytest.mark.parametrize(
    "error, line",
    [
        (ValueError(), "ValueError"),
        (NodeError(""), "NodeError"),
        (RuntimeError("   \n\t\n"), "RuntimeError"),
        (NodeError("\n\n  first line  \nsecond line"), "first line"),
        (KeyError("missing"), "KeyError: 'missing'"),
        (ValueError("bad value\nTraceback ..."), "ValueError: bad value"),
        (NodeLost("node 1 (ty-x-1) is preempted at provider fake"), "node 1 (ty-x-1) is preempted at provider fake"),
        (LeaseLostError("run x: lease lost"), "run x: lease lost"),
        ("", ""),
        ("\n\n", ""),
        ("  a reason\nmore", "a reason"),
    ],
    ids=repr,
)
def test_one_line(error, line):
    assert one_line(error) == line


def test_one_line_cuts_at_the_limit():
    assert one_line("x" * 5000) == "x" * MAX_REASON_CHARS
    assert one_line(NodeError("abcdefghij"), limit=4) == "abcd"
    assert one_line(ValueError("abc"), limit=8) == "ValueErr"


def test_a_counted_task_error_is_retried_then_fails_the_run_naming_the_attempts(env):
    env.make_run(S.bootstrapping)
    what = f"bootstrapping {env.name(0)}"
    error = NodeError(f"{env.name(0)}: command failed (1): pip: no space left")
    for attempt in range(1, MAX_TASK_ATTEMPTS):
        assert task_failure(env.ctx, what, error) is WAITING
        assert env.events("info")[-1] == (
            f"{what} failed: {env.name(0)}: command failed (1): pip: no space left "
            f"(attempt {attempt} of {MAX_TASK_ATTEMPTS}); trying again"
        )
    out = task_failure(env.ctx, what, error)
    assert out == Failed(
        f"{what} failed: {env.name(0)}: command failed (1): pip: no space left "
        f"(attempt {MAX_TASK_ATTEMPTS} of {MAX_TASK_ATTEMPTS})"
    )


def test_task_errors_that_retry_recover_fail_or_lose_the_lease(env):
    env.make_run(S.provisioning, launched=False)
    what = f"placing {env.name(0)}"
    for _ in range(MAX_TASK_ATTEMPTS + 1):  # never counted
        assert task_failure(env.ctx, what, NodeUnreachable("no answer")) is WAITING
    assert env.ctx.attempts == {} and env.events("info") == []
    assert task_failure(env.ctx, what, NodeLost("instance x became preempted while booting")) == Lost(
        "instance x became preempted while booting"
    )
    assert task_failure(env.ctx, what, QuotaExceeded("quota of 2 reached")) == Failed(
        f"{what} failed: quota of 2 reached"
    )
    with pytest.raises(LeaseLostError):
        task_failure(env.ctx, what, LeaseLostError("taken over"))


# -- 3a. placement ------------------------------------------------------------------------------
def test_placement_launches_records_and_waits_for_every_node(env):
    env.make_run(S.provisioning, nodes=2)
    out = env.stage(placement)
    assert out == Done("all 2 node(s) are active")
    assert env.provider.launched == [env.name(0), env.name(1)]
    rows = env.instances()
    assert [(r.rank, r.name, r.instance_type, r.price_cents_per_hour, r.status) for r in rows] == [
        (0, env.name(0), FakeProvider.INSTANCE_TYPE, 120, "active"),
        (1, env.name(1), FakeProvider.INSTANCE_TYPE, 120, "active"),
    ]
    assert all(r.active_at is not None for r in rows)
    assert f"instance {env.name(1)} ({FakeProvider.INSTANCE_TYPE} in here, 120 c/h) is active" in env.events(
        "placement"
    )
    assert env.stage(placement) == Done("all 2 node(s) are active")  # a second pass launches nothing
    assert len(env.provider.launched) == 2


def test_placement_waits_for_a_booting_instance_and_records_when_it_turned_active(env):
    env.make_run(S.provisioning)
    env.provider.boot_reads = 1
    started = utcnow()
    assert env.stage(placement) == Done("all 1 node(s) are active")
    (row,) = env.instances()
    assert row.status == "active" and started <= aware(row.active_at) <= utcnow()
    assert env.events("placement")[-2:] == [
        f"instance {env.name(0)} ({FakeProvider.INSTANCE_TYPE} in here, 120 c/h) is booting",
        f"instance {env.name(0)} is active at 203.0.113.1 (private 10.0.0.1)",
    ]


def test_placement_adopts_an_instance_launched_before_a_crash(env):
    env.make_run(S.provisioning)
    env.provider.launch(name=env.name(0), instance_type=FakeProvider.INSTANCE_TYPE, region="here")
    assert env.stage(placement) == Done("all 1 node(s) are active")
    assert env.provider.launched == [env.name(0)]  # not a second one
    assert [r.provider_instance_id for r in env.instances()] == ["i-0001"]


def test_placement_without_capacity_past_its_deadline_fails_naming_what_was_tried(env):
    env.make_run(
        S.provisioning,
        compute={"provider": "lambda", "instance_type": FakeProvider.INSTANCE_TYPE, "placement_timeout_s": 60},
    )
    env.provider.capacity = False
    out = env.stage(placement)
    assert isinstance(out, Failed)
    assert out.reason.startswith(f"no capacity to place {env.name(0)} after 0s")
    assert FakeProvider.INSTANCE_TYPE in out.reason
    assert env.provider.launched == [] and env.instances() == []


def test_a_quota_error_fails_placement_at_once(env):
    env.make_run(S.provisioning)
    env.provider.fail("launch", QuotaExceeded("the account may launch 2 instances"))
    assert env.stage(placement) == Failed(f"placing {env.name(0)} failed: the account may launch 2 instances")


def test_a_provider_outage_during_placement_waits_and_is_not_counted(env):
    # the run started UP (30 min) ago: a deadline an hour after that has not passed (after it,
    # the outage fails the run: test_broken_provider.py)
    env.make_run(
        S.provisioning,
        compute={"provider": "lambda", "instance_type": FakeProvider.INSTANCE_TYPE, "placement_timeout_s": 3600},
    )
    env.provider.fail("instance_types", ProviderServerError("502 after 5 tries"))
    for _ in range(MAX_TASK_ATTEMPTS + 1):
        assert env.stage(placement) is WAITING
    assert env.instances() == [] and env.run().status == "provisioning"
    env.provider.fail("instance_types", None)
    assert env.stage(placement) == Done("all 1 node(s) are active")


# -- 3b. bootstrapping ------------------------------------------------------------------------
def test_bootstrap_without_a_bootstrap_step_makes_the_run_dir_and_starts_prepare_on_each_node(env):
    env.make_run(S.bootstrapping, nodes=2, bootstrapped=False, local=True)
    assert env.stage(bootstrapping) is WAITING
    for rank in (0, 1):
        row = env.instances()[rank]
        assert (row.workdir, row.python) == (f"/srv/runs/{row.name}", "/usr/bin/python3")
        node = env.node(rank)
        assert row.workdir in node.dirs
        assert node.started_names() == ["prepare"]
        command = node.proc("prepare").command
        assert "-m trainer.prepare --source builtin:corpus" in command
        assert f"--out {row.workdir}/data" in command
        assert "--cache file://" in command  # this machine reaches the store's data cache
        assert f"{row.name} runs this checkout's trainer, run directory {row.workdir}" in env.events("bootstrap")
    assert any(m.startswith(f"preparing data from builtin:corpus on {env.name(1)} (pid ") for m in env.events("info"))


def test_rented_nodes_with_a_file_store_prepare_without_the_cache(env):
    env.make_run(S.bootstrapping)
    assert env.stage(bootstrapping) is WAITING
    command = env.node(0).proc("prepare").command
    assert VENV_PYTHON in command and "--cache" not in command


def test_a_running_prepare_is_waited_for_and_never_started_twice(env):
    env.make_run(S.bootstrapping)
    env.node(0).set_proc(env.workdir(0), "prepare", running=True)
    assert env.stage(bootstrapping) is WAITING
    assert env.node(0).started == []


def test_a_killed_prepare_is_started_again(env):
    env.make_run(S.bootstrapping)
    env.node(0).set_proc(env.workdir(0), "prepare", exit_code=None)
    assert env.stage(bootstrapping) is WAITING
    assert env.node(0).started_names() == ["prepare"]


def test_prepare_that_exited_without_a_manifest_fails_naming_the_error_line(env):
    env.make_run(S.bootstrapping, nodes=2)
    env.node(1).set_proc(env.workdir(1), "prepare", exit_code=1)
    env.node(1).write(
        env.file(1, "prepare.log"),
        "reading builtin:nope\nerror: no such corpus: builtin:nope\nTraceback (most recent call last):\n  ...\n",
    )
    env.node(0).set_proc(env.workdir(0), "prepare", running=True)
    out = env.stage(bootstrapping)
    assert out == Failed("data preparation failed: no such corpus: builtin:nope")
    run = env.apply(out)
    assert (run.status, run.status_reason) == ("failed", "data preparation failed: no such corpus: builtin:nope")
    assert_all_terminated_and_booked(env)


def test_prepare_that_exited_0_without_a_manifest_fails_with_its_last_log_line(env):
    env.make_run(S.bootstrapping)
    env.node(0).set_proc(env.workdir(0), "prepare", exit_code=0)
    env.node(0).write(env.file(0, "prepare.log"), "tokenising\nwrote 0 shards\n\n")
    assert env.stage(bootstrapping) == Failed("data preparation failed (exit code 0): wrote 0 shards")


def test_with_a_manifest_on_every_node_the_config_is_written_on_each_and_training_starts(env):
    env.make_run(S.bootstrapping, nodes=2)
    for rank in (0, 1):
        env.node(rank).set_proc(env.workdir(rank), "prepare", exit_code=0)
        env.node(rank).write(env.file(rank, "data/manifest.json"), "{}")
        env.node(rank).write(env.file(rank, "prepare.log"), 'prepared\n{"cache": "off", "shards": 2}\n')
    out = env.stage(bootstrapping)
    assert isinstance(out, Done) and out.message == "every node is ready"
    for rank in (0, 1):
        config = json.loads(env.node(rank).files[env.file(rank, "config.json")])
        assert config["data_dir"] == env.file(rank, "data") and config["model"] == "gpt2-tiny"
        assert "artifact_uri" not in config  # a rented node cannot reach a file:// store
        assert env.node(rank).started == []
    run = env.apply(out)
    assert (run.status, env.path()[-1]) == ("training", "training")
    assert env.events("status")[-1] == "every node is ready; starting the trainer"
    assert env.events("data") == [
        f"{env.name(r)}: the data was prepared from its source (no data cache)" for r in (0, 1)
    ]
    with env.factory() as s:
        assert [c.text for c in s.scalars(select(LogChunk).where(LogChunk.run_id == env.run_id))] == [
            'prepared\n{"cache": "off", "shards": 2}\n'
        ]


def test_a_node_gone_before_its_bootstrap_fails_the_run_naming_it(env):
    env.make_run(S.bootstrapping, bootstrapped=False)
    env.provider.lose(env.instances()[0].provider_instance_id)
    out = env.stage(bootstrapping)
    assert out == Lost(f"node 0 ({env.name(0)}) no longer exists at provider fake")
    run = env.apply(out)
    assert (run.status, run.status_reason) == ("failed", out.reason)
    row = env.instances()[0]
    assert row.terminated_at is not None and len(env.costs()) == 1


# -- 3c. training -------------------------------------------------------------------------------
def test_training_starts_the_trainer_on_every_node_with_node_0_as_master(env):
    env.make_run(S.training, nodes=2)
    assert env.stage(training) is WAITING
    for rank in (0, 1):
        node = env.node(rank)
        assert node.started_names() == ["train"]
        command = node.proc("train").command
        assert "-m torch.distributed.run --nnodes 2" in command
        assert f"--node_rank {rank} --master_addr 10.0.0.1" in command
        assert f"-m trainer.train {env.file(rank, 'config.json')} --run-dir {env.workdir(rank)}" in command
        assert f"trainer launched on {env.name(rank)} (pid {node.proc('train').pid})" in env.events("info")
    assert env.stage(training) is WAITING  # running now: nothing started twice
    assert env.node(0).started_names() == ["train"]


def test_a_running_trainers_metrics_and_log_are_recorded(env):
    env.make_run(S.training)
    node = env.node(0)
    node.set_proc(env.workdir(0), "train", running=True)
    node.write(
        env.file(0, "metrics.jsonl"),
        json.dumps({"kind": "train", "time": 1.0, "step": 4, "tokens": 4096, "train_loss": 7.5})
        + "\n"
        + '{"kind": "train", "step": 5',
    )  # a line still being written is not read
    node.write(env.file(0, "train.log"), "step 4 loss 7.5\n")
    assert env.stage(training) is WAITING
    run = env.run()
    assert (run.status, run.step, run.tokens_done, run.train_loss) == ("training", 4, 4096, 7.5)
    with env.factory() as s:
        assert [c.text for c in s.scalars(select(LogChunk).where(LogChunk.run_id == env.run_id))] == [
            "step 4 loss 7.5\n"
        ]
    assert env.stage(training) is WAITING  # nothing new: nothing stored twice
    node.append(env.file(0, "metrics.jsonl"), ', "tokens": 5120, "train_loss": 7.25}\n')  # the line completed
    assert env.stage(training) is WAITING
    run = env.run()
    assert (run.step, run.tokens_done, run.train_loss) == (5, 5120, 7.25)
    with env.factory() as s:
        assert s.scalars(select(LogChunk.text).where(LogChunk.run_id == env.run_id)).all() == ["step 4 loss 7.5\n"]


def test_done_written_while_the_trainer_exits_finishes_training(env):
    env.make_run(S.training)
    env.node(0).set_proc(env.workdir(0), "train", running=True)
    env.node(0).write(env.file(0, "DONE"), "")
    assert env.stage(training) == Done("training done; measuring the test loss on node 0")


def test_training_exited_0_with_done_and_evaluation_off(env):
    env.make_run(S.training, test_loss=False)
    env.node(0).set_proc(env.workdir(0), "train", exit_code=0)
    env.node(0).write(env.file(0, "DONE"), "")
    assert env.stage(training) == Done("training done (evaluation is off)")


def test_a_trainer_that_exited_non_zero_fails_with_its_own_failed_error(env):
    env.make_run(S.training, nodes=2)
    for rank in (0, 1):
        env.node(rank).set_proc(env.workdir(rank), "train", exit_code=1)
    env.node(0).write(
        env.file(0, "FAILED"),
        json.dumps({"kind": "ConfigError", "error": "micro_batch * seq_len exceeds max_tokens\nmore detail"}),
    )
    assert env.stage(training) == Failed("training failed: micro_batch * seq_len exceeds max_tokens")
    env.node(0).write(env.file(0, "FAILED"), json.dumps({"kind": "OutOfMemoryError", "error": "CUDA out of memory"}))
    assert env.stage(training) == Failed("training failed (OutOfMemoryError): CUDA out of memory")


def test_a_trainer_that_exited_non_zero_without_failed_names_the_node_and_its_log(env):
    env.make_run(S.training)
    env.node(0).set_proc(env.workdir(0), "train", exit_code=1)
    env.node(0).write(env.file(0, "train.log"), "[rank0]: Traceback\n[rank0]: error: NCCL timeout after 600 s\n")
    assert env.stage(training) == Failed(f"training on {env.name(0)} failed: NCCL timeout after 600 s")


def test_a_trainer_that_ended_without_an_exit_code_was_killed(env):
    env.make_run(S.training, nodes=2)
    env.node(0).set_proc(env.workdir(0), "train", exit_code=1)
    env.node(1).set_proc(env.workdir(1), "train", exit_code=None)
    assert env.stage(training) == Failed(f"training on {env.name(0)} failed (exit code 1) with an empty log")
    env.node(0).set_proc(env.workdir(0), "train", exit_code=None)
    assert env.stage(training) == Killed(
        f"the trainer on {env.name(0)}, {env.name(1)} ended without an exit code (killed)"
    )


def test_a_trainer_that_exited_0_without_done_fails(env):
    env.make_run(S.training)
    env.node(0).set_proc(env.workdir(0), "train", exit_code=0)
    assert env.stage(training) == Failed("the trainer exited 0 without writing DONE (training did not finish)")


# -- 3d. evaluation -----------------------------------------------------------------------------
def test_evaluation_starts_on_node_0_with_the_last_committed_checkpoint(env):
    env.make_run(S.evaluating)
    node = env.node(0)
    node.write(env.file(0, "checkpoints/latest"), "step_000010\n")
    node.write(env.file(0, "data/manifest.json"), json.dumps({"splits": {"test": {"sha256": "ab12"}}}))
    assert env.stage(evaluating) is WAITING
    command = node.proc("eval").command
    assert f"-m trainer.evaluate {env.file(0, 'checkpoints/step_000010')} --test-set {env.file(0, 'data')}" in command
    assert "--expect-sha256 ab12" in command
    assert f"evaluating step_000010 on the test split (pid {node.proc('eval').pid})" in env.events("info")
    assert env.stage(evaluating) is WAITING and node.started_names() == ["eval"]  # running: not twice


def test_a_pretrained_run_evaluates_openais_weights(env):
    env.make_run(S.evaluating, model={"pretrained": "gpt2"}, training={})
    assert env.stage(evaluating) is WAITING
    assert "-m trainer.evaluate hf:gpt2 --test-set" in env.node(0).proc("eval").command


def test_evaluation_without_a_committed_checkpoint_fails(env):
    env.make_run(S.evaluating)
    assert env.stage(evaluating) == Failed("training finished but left no committed checkpoint to evaluate")
    assert env.node(0).started == []


def test_a_killed_evaluation_is_started_again(env):
    env.make_run(S.evaluating)
    env.node(0).write(env.file(0, "checkpoints/latest"), "step_000010")
    env.node(0).set_proc(env.workdir(0), "eval", exit_code=None)
    assert env.stage(evaluating) is WAITING
    assert env.node(0).started_names() == ["eval"]


def test_an_evaluation_that_exited_non_zero_fails_naming_its_error(env):
    env.make_run(S.evaluating)
    env.node(0).set_proc(env.workdir(0), "eval", exit_code=2)
    env.node(0).write(env.file(0, "eval.log"), "error: the test split's sha256 is cd34, expected ab12\n")
    assert env.stage(evaluating) == Failed("evaluation failed: the test split's sha256 is cd34, expected ab12")


def test_eval_json_without_a_test_loss_fails(env):
    env.make_run(S.evaluating)
    env.node(0).set_proc(env.workdir(0), "eval", exit_code=0)
    env.node(0).write(env.file(0, "eval.json"), json.dumps({"test_loss": None, "tokens": 10}))
    assert env.stage(evaluating) == Failed("evaluation exited 0 but eval.json holds no test_loss")
    env.node(0).write(env.file(0, "eval.json"), "{half a fi")
    assert env.stage(evaluating) == Failed("evaluation exited 0 but eval.json holds no test_loss")


def test_a_measured_test_loss_succeeds_the_run_and_is_stored(env):
    env.make_run(S.evaluating)
    env.node(0).set_proc(env.workdir(0), "eval", exit_code=0)
    env.node(0).write(
        env.file(0, "eval.json"),
        json.dumps({"test_loss": 3.21, "bits_per_byte": 1.1, "tokens": 2048, "step": 10, "checkpoint": "step_000010"}),
    )
    env.node(0).write(env.file(0, "eval.log"), "test loss 3.21\n")
    out = env.stage(evaluating)
    assert isinstance(out, Done) and out.message == "test loss 3.2100 on the test split"
    run = env.apply(out)
    assert (run.status, run.status_reason, run.test_loss) == ("succeeded", "test loss 3.2100 on the test split", 3.21)
    with env.factory() as s:
        ev = s.scalars(select(Evaluation).where(Evaluation.run_id == env.run_id)).one()
        assert (ev.kind, ev.test_loss, ev.bits_per_byte, ev.tokens) == ("test_loss", 3.21, 1.1, 2048)
    assert "test loss 3.2100 on the test split" in env.events("info")
    assert_all_terminated_and_booked(env)


# -- 3e. steps._apply: outcomes to statuses -----------------------------------------------------
def test_waiting_changes_nothing(env):
    env.make_run(S.training)
    before = env.events()
    assert env.apply(Waiting()).status == "training" and env.events() == before


def test_killed_in_training_at_the_recovery_cap_fails_the_run(env):
    env.make_run(S.training, nodes=2, recoveries=MAX_RECOVERIES)
    run = env.apply(Killed(f"the trainer on {env.name(1)} ended without an exit code (killed)"))
    assert run.status == "failed"
    assert run.status_reason == (
        f"the trainer on {env.name(1)} ended without an exit code (killed), after {MAX_RECOVERIES} recoveries already"
    )
    assert run.finished_at is not None and env.path()[-1] == "failed"
    assert env.tasks.cancelled == [env.run_id]
    assert_all_terminated_and_booked(env)


def test_killed_in_training_stops_every_trainer_and_counts_a_recovery(env):
    env.make_run(S.training, nodes=2)
    for rank in (0, 1):
        env.node(rank).set_proc(env.workdir(rank), "train", running=rank == 0, exit_code=None)
    run = env.apply(Killed(f"the trainer on {env.name(1)} ended without an exit code (killed)"))
    assert (run.status, run.recoveries) == ("recovering", 1)
    assert env.node(0).stopped == ["train"] and env.node(1).stopped == ["train"]
    assert not env.node(0).proc("train").running
    assert env.events("recovery") == [
        f"the trainer on {env.name(1)} ended without an exit code (killed); resuming "
        f"from the last checkpoint (recovery 1 of {MAX_RECOVERIES})"
    ]
    assert env.costs() == [] and all(r.terminated_at is None for r in env.instances())


def test_a_lost_node_in_training_is_terminated_booked_and_replaced(env):
    env.make_run(S.training, nodes=2)
    env.provider.lose(env.instances()[1].provider_instance_id, InstanceStatus.preempted)
    reason = f"node 1 ({env.name(1)}) is preempted at provider fake"
    run = env.apply(Lost(reason))
    assert (run.status, run.recoveries) == ("recovering", 1)
    env.next_step()
    assert env.events("recovery") == [
        f"{reason}; replacing {env.name(1)} with a new node; resuming from the last "
        f"checkpoint (recovery 1 of {MAX_RECOVERIES})"
    ]
    assert env.node(0).stopped == ["train"]
    assert_all_terminated_and_booked(env, ranks={1})
    assert env.instances()[0].terminated_at is None


def test_a_node_said_lost_that_answers_again_is_not_a_recovery(env):
    env.make_run(S.training)
    run = env.apply(Lost("node 0 did not answer"))
    assert (run.status, run.recoveries) == ("training", 0)
    assert env.events("recovery") == []


def test_lost_while_provisioning_fails_the_run(env):
    env.make_run(S.provisioning)
    run = env.apply(Lost("instance ty-x-0 became preempted while booting"))
    assert (run.status, run.status_reason) == ("failed", "instance ty-x-0 became preempted while booting")
    assert env.path()[-1] == "failed"


def test_done_in_training_with_evaluation_off_succeeds_and_books_every_instance(env):
    env.make_run(S.training, nodes=2, test_loss=False)
    run = env.apply(Done("training done (evaluation is off)"))
    assert (run.status, run.status_reason) == ("succeeded", "training done (evaluation is off)")
    assert run.finished_at is not None
    assert_all_terminated_and_booked(env)
    assert f"instance {env.name(1)} terminated (31 billed minutes)" in env.events("info")


def test_done_in_training_moves_to_evaluation_and_releases_the_workers(env):
    env.make_run(S.training, nodes=3)
    run = env.apply(Done("training done; measuring the test loss on node 0"))
    assert run.status == "evaluating"
    env.next_step()
    assert_all_terminated_and_booked(env, ranks={1, 2})
    assert env.instances()[0].terminated_at is None
    assert env.provider.terminate_calls == [["i-0002", "i-0003"]]


def test_done_bootstrapping_a_pretrained_model_goes_to_evaluation(env):
    env.make_run(S.bootstrapping, model={"pretrained": "gpt2"}, training={})
    run = env.apply(Done("every node is ready"))
    assert run.status == "evaluating"
    assert env.events("status")[-1] == "every node is ready; evaluating OpenAI's gpt2 (not trained)"


def test_a_failed_stage_ends_the_run_with_its_reason(env):
    env.make_run(S.evaluating)
    run = env.apply(Failed("evaluation failed: out of memory"))
    assert (run.status, run.status_reason) == ("failed", "evaluation failed: out of memory")
    assert_all_terminated_and_booked(env)


def test_a_run_whose_terminate_fails_still_ends_and_its_instances_are_booked_later(env):
    env.make_run(S.training, test_loss=False)
    env.provider.fail("terminate", ProviderServerError("503 after 5 tries"))
    run = env.apply(Done("training done (evaluation is off)"))
    assert run.status == "succeeded"
    assert env.events("info")[-1] == "terminating the instances failed, retrying: 503 after 5 tries"
    assert env.instances()[0].terminated_at is None and env.costs() == []
    assert env.reconcile() is False  # ended, but a node still bills: the run stays claimable
    env.provider.fail("terminate", None)
    assert env.reconcile() is True
    assert_all_terminated_and_booked(env)


# -- 3f. reconcile ------------------------------------------------------------------------------
def test_a_whole_run_on_the_fake_provider(env):
    env.make_run(S.pending, local=True, test_loss=False)
    assert env.reconcile() is False
    run = env.run()
    assert run.status == "bootstrapping" and run.artifact_uri is not None
    node = env.node(0)
    assert node.started_names() == ["prepare"]

    node.finish("prepare", 0)
    node.write(env.file(0, "data/manifest.json"), "{}")
    assert env.reconcile() is False
    assert env.run().status == "training" and node.started_names() == ["prepare", "train"]
    assert (
        f"--standalone --nproc_per_node=1 -m trainer.train {env.file(0, 'config.json')}" in node.proc("train").command
    )

    node.write(env.file(0, "metrics.jsonl"), json.dumps({"kind": "done", "step": 12, "tokens": 12288}) + "\n")
    node.write(env.file(0, "DONE"), "")
    assert env.reconcile() is True
    run = env.run()
    assert (run.status, run.step, run.status_reason) == ("succeeded", 12, "training done (evaluation is off)")
    assert env.path() == ["pending", "provisioning", "bootstrapping", "training", "succeeded"]
    assert_all_terminated_and_booked_local(env)


def assert_all_terminated_and_booked_local(env: Env) -> None:
    """The run's one instance terminated and booked (placed during the test: a minute or less)."""
    (row,) = env.instances()
    assert row.terminated_at is not None
    (cost,) = env.costs()
    assert (cost.instance_id, cost.quantity, cost.cents) == (row.id, 1, 2.0)


def test_a_cancel_ends_the_run_and_terminates_its_instances(env):
    env.make_run(S.training, nodes=2)
    with transaction(env.factory) as s:
        s.get(Run, env.run_id).cancel_requested = True
    assert env.reconcile() is True
    run = env.run()
    assert (run.status, run.status_reason) == ("cancelled", "cancelled by the user")
    assert env.node(0).started == []  # the stage was never asked
    assert_all_terminated_and_booked(env)


def test_a_run_over_its_time_budget_is_stopped(env):
    env.make_run(S.training, budget={"max_hours": 0.25})
    assert env.reconcile() is True
    run = env.run()
    assert run.status == "stopped"
    assert run.status_reason.startswith("budget reached: the run has taken 0.50 h, budget.max_hours is 0.25")
    assert_all_terminated_and_booked(env)


def test_a_node_gone_while_training_is_replaced_by_a_new_one(env):
    env.make_run(S.training, local=True)
    old = env.instances()[0]
    env.provider.lose(old.provider_instance_id)
    assert env.reconcile() is False
    run = env.run()
    assert (run.status, run.recoveries) == ("recovering", 1)
    assert env.provider.launched == [env.name(0), f"{env.name(0)}r1"]
    rows = env.instances()
    assert rows[0].terminated_at is not None and rows[1].name == f"{env.name(0)}r1"
    assert env.node(0).started_names() == ["prepare"]  # the new node prepares its data first
    assert env.events("recovery")[0].startswith(
        f"node 0 ({env.name(0)}) no longer exists at provider fake; replacing {env.name(0)} with a new node"
    )


def test_an_error_that_counts_is_left_to_the_worker(env):
    env.make_run(S.training)
    env.node(0).broken = NodeError(f"{env.name(0)}: command failed (255): connection reset")
    with pytest.raises(NodeError):
        env.reconcile()
    assert env.run().status == "training"


def test_a_hopeless_error_in_a_stage_fails_the_run(env):
    env.make_run(S.training)
    env.node(0).broken = HostKeyMismatch(f"{env.name(0)}: the host key of 203.0.113.1 changed")
    assert env.reconcile() is True
    run = env.run()
    assert (run.status, run.status_reason) == ("failed", f"{env.name(0)}: the host key of 203.0.113.1 changed")
    assert_all_terminated_and_booked(env)


# -- found while reshaping the controller (issue 10), fixed since
def test_a_node_lost_while_recovering_counts_one_more_recovery(env):
    env.make_run(S.recovering, nodes=2, recoveries=1)
    env.provider.lose(env.instances()[1].provider_instance_id, InstanceStatus.preempted)
    run = env.apply(Lost(f"node 1 ({env.name(1)}) is preempted at provider fake"))
    assert (run.status, run.recoveries) == ("recovering", 2)
    env.next_step()
    assert_all_terminated_and_booked(env, ranks={1})


def test_placement_never_leaves_an_instance_the_database_does_not_know(env):
    """A worker crashed while node 0 booted; meanwhile the provider preempted it."""
    env.make_run(S.provisioning, launched=True)
    with transaction(env.factory) as s:
        s.scalars(select(Instance).where(Instance.run_id == env.run_id)).one().active_at = None
    env.provider.lose(env.instances()[0].provider_instance_id, InstanceStatus.preempted)
    env.stage(placement)
    live = {i.id for i in env.provider.instances.values() if not i.status.is_gone}
    recorded = {r.provider_instance_id for r in env.instances() if r.terminated_at is None}
    assert live <= recorded, f"instances billing unrecorded: {sorted(live - recorded)}"


# -- issue 14: a worker killed between a terminate request and the write that books it -----------
class WorkerKilled(BaseException):
    """The worker process dies here (kill -9): nothing after this line of it runs. A BaseException,
    so no `except Exception` of the controller's can swallow it, as none can catch a SIGKILL."""


def kill_after(provider: FakeProvider, operation: str) -> None:
    """The next `operation` is taken by the provider, then the worker dies before hearing back."""
    real = getattr(provider, operation)

    def dying(*args, **kwargs):
        real(*args, **kwargs)
        setattr(provider, operation, real)  # the next worker's calls work
        raise WorkerKilled(operation)

    setattr(provider, operation, dying)


def take_over(env: Env) -> None:
    """Another worker takes the run over once the dead one's lease has expired: a new token, and
    nothing of the dead worker's memory (node sessions, tasks)."""
    set_run(env.factory, env.run_id, lease_expires_at=utcnow() - timedelta(seconds=1))
    token = lease.acquire(env.factory, env.run_id, "worker-next", env.settings.lease_s)
    assert token is not None
    env.ctx = RunContext(env.run_id, token, env.settings, env.factory, env.provider, tasks=SyncTasks())


def test_killed_after_terminating_a_finished_run_the_next_worker_finishes_the_same_ending(env):
    """It used to end `failed: node 0 ... is terminated`, its test loss lost."""
    env.make_run(S.evaluating)

    def test_loss(_session, fresh: Run) -> None:
        fresh.test_loss = 3.25

    kill_after(env.provider, "terminate")
    with pytest.raises(WorkerKilled):
        env.apply(Done("test loss 3.250", test_loss))
    (row,) = env.instances()
    first = row.terminate_requested_at
    assert first is not None and env.run().status == "evaluating"

    take_over(env)
    assert env.reconcile() is True
    run = env.run()
    assert (run.status, run.status_reason, run.test_loss) == ("succeeded", "test loss 3.250", 3.25)
    assert run.finished_at == run.ending_at  # when it was decided, not when the next worker got to it
    assert env.instances()[0].terminate_requested_at == first  # billed to the first request
    assert_all_terminated_and_booked(env)


def test_killed_after_releasing_the_workers_the_next_worker_does_not_replace_them(env):
    """It used to take node 1, terminated on purpose after training, for a lost node: it rented a
    replacement and restarted the trainers."""
    env.make_run(S.training, nodes=2)
    env.node(0).write(env.file(0, "checkpoints/latest"), "step_000010")
    kill_after(env.provider, "terminate")
    with pytest.raises(WorkerKilled):  # wherever the request is made: in the move, or the step after
        env.apply(Done("training done; measuring the test loss on node 0"))
        env.reconcile()
    first = env.instances()[1].terminate_requested_at
    assert first is not None

    take_over(env)
    env.reconcile()
    run = env.run()
    assert (run.status, run.recoveries) == ("evaluating", 0), run.status_reason
    assert [r.name for r in env.instances()] == [env.name(0), env.name(1)]  # no replacement
    assert env.instances()[1].terminate_requested_at == first
    assert_all_terminated_and_booked(env, ranks={1})


@pytest.mark.parametrize("status", [S.training, S.evaluating], ids=lambda s: s.value)
def test_a_pass_that_outlived_its_lease_starts_and_stops_nothing_on_the_nodes(env, status):
    """A pass blocked past its lease (a black-holed node) goes on once the node answers: by then
    another worker holds the run, and the old pass must not start a trainer or an evaluation
    (the new owner starts its own) nor stop the new owner's trainers (a recovery)."""
    env.make_run(status, nodes=2)
    env.node(0).write(env.file(0, "checkpoints/latest"), "step_000010")
    stale = env.ctx
    take_over(env)
    with pytest.raises(LeaseLostError):
        steps.reconcile(stale)
    with pytest.raises(LeaseLostError):
        training_module.begin_recovery(stale, env.run(), "node 1 did not answer", replace_lost=False)
    for rank in (0, 1):
        assert (env.node(rank).started, env.node(rank).stopped) == ([], [])
