"""`trainyard compare` and `trainyard comparison`, as subprocesses, against a real
`trainyard serve --no-controller`; the judging is done here by a worker's comparison driver on
the same database, against the fake OpenAI server. Refusals end as one line and the exit code of
the other commands (3 not found, 4 conflict, 2 bad input, 7 did not succeed)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from pydantic import SecretStr

from ift_helpers import instruction_data
from openai_fake import FakeOpenAIServer, score_by_content
from orchestrator.controller.comparing import Comparisons
from orchestrator.db.models import ComparisonRequest, Evaluation
from orchestrator.db.session import transaction
from orchestrator.judge.compare import item_set_hash
from orchestrator.judge.schemas import Item
from orchestrator.runs import create_run
from orchestrator.settings import Settings
from orchestrator.spec import validate_spec
from orchestrator_helpers import TRAINYARD, api_service, one_error_line, trainyard

KEY = "sk-cli-SECRET-9090"
ITEMS = [{k: e[k] for k in ("instruction", "input", "output")} for e in instruction_data(3)]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # the service's key: POST /comparisons needs a judge
    svc = api_service(tmp_path_factory.mktemp("cli-compare"), TRAINYARD_OPENAI_API_KEY=KEY)
    yield svc
    svc.close()


def add_run(db, name: str, answers: list[str] | None, status: str = "succeeded", test_loss: float = 4.0) -> str:
    spec = validate_spec({"name": name, "evaluation": {"ift": {"enabled": True, "limit_test": 3}}})
    with transaction(db) as s:
        run = create_run(s, spec)
        run.status, run.test_loss = status, test_loss
        if answers is not None:
            s.add(
                Evaluation(
                    run_id=run.id,
                    kind="ift",
                    details={
                        "answers": [{**i, "model_response": a} for i, a in zip(ITEMS, answers, strict=True)],
                        "item_set_hash": item_set_hash([Item(**i) for i in ITEMS]),
                        "summary": {},
                    },
                )
            )
        return run.id


def test_refusals_are_one_line_with_the_usual_exit_codes(service):
    good = add_run(service.db, "good", ["x"] * 3)
    going = add_run(service.db, "going", None, status="training")
    no_ift = add_run(service.db, "no-ift", None)
    for args, code, words in [
        ((good, "nope"), 3, "no run with id 'nope'"),
        ((good, going), 4, f"run {going} (going) is training"),
        ((good, no_ift), 2, f"run {no_ift} (no-ift) has no IFT answers"),
        ((good,), 2, "name at least two runs, or a run and a --baseline"),
    ]:
        proc = trainyard("compare", *args, env=service.env)
        assert proc.returncode == code, (args, proc.stderr)
        assert proc.stdout == "" and words in one_error_line(proc)
    bad_option = trainyard("compare", good, "--baseline", "gpt3", env=service.env)
    assert bad_option.returncode == 2 and "gpt3" in bad_option.stderr  # click's usage error
    assert trainyard("comparison", "nope", env=service.env).returncode == 3


def test_compare_waits_for_the_judging_and_prints_the_table(service):
    a = add_run(service.db, "alpha", [i["output"] for i in ITEMS], test_loss=3.25)
    b = add_run(service.db, "beta", ["wrong"] * 3, test_loss=4.5)
    cli = subprocess.Popen(
        [*TRAINYARD, "compare", a, b, "--k", "2"],
        env=service.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    with FakeOpenAIServer() as fake:
        fake.reply = lambda body: score_by_content(body, lambda ans, ref: 80 if ans == ref else 30)
        settings = Settings(
            database_url=service.db_url,
            data_dir=service.data_dir,
            lease_s=30,
            openai_api_key=SecretStr(KEY),
            judge_base_url=fake.base_url,
            judge_max_retries=0,
        )
        driver = Comparisons(settings, service.db, "test-worker")
        try:
            deadline = time.time() + 60
            while cli.poll() is None:
                assert time.time() < deadline, "compare did not end"
                driver.reconcile_once()
                time.sleep(0.1)
        finally:
            driver.close()
    out, err = cli.communicate()
    assert cli.returncode == 0, err
    lines = [ln.split() for ln in out.strip().splitlines()]
    assert lines[0][:3] == ["MODEL", "RUN", "TEST"]
    assert lines[1][:7] == ["alpha", a, "3.250", "80.0", "±", "0.0", "3"]
    assert lines[2][:7] == ["beta", b, "4.500", "30.0", "±", "0.0", "3"]
    assert lines[1][7] == lines[2][7] and lines[1][7].startswith("$0.000")  # a share of the judge's tokens
    assert ": succeeded" in err
    assert "6 calls made, 0 from the cache" in err and fake.calls == 6

    with service.db() as s:
        cid = s.query(ComparisonRequest.id).order_by(ComparisonRequest.created_at.desc()).first()[0]
    shown = trainyard("comparison", cid, "--format", "json", env=service.env)
    assert shown.returncode == 0
    c = json.loads(shown.stdout)
    assert [(r["model"], r["score"]) for r in c["rows"]] == [("alpha", 80), ("beta", 30)]
    assert KEY not in out + err + shown.stdout


def test_a_failed_comparison_exits_7_with_its_reason_and_no_wait_prints_the_id(service):
    a, b = add_run(service.db, "one", ["x"] * 3), add_run(service.db, "two", ["y"] * 3)
    queued = trainyard("compare", a, b, "--no-wait", env=service.env)
    assert queued.returncode == 0, queued.stderr
    cid = queued.stdout.strip()
    assert f"see it with: trainyard comparison {cid} --wait" in queued.stderr
    pending = trainyard("comparison", cid, env=service.env)
    assert pending.returncode == 0 and f"comparison {cid}: pending - waiting for a worker" in pending.stderr
    with transaction(service.db) as s:
        c = s.get(ComparisonRequest, cid)
        c.status, c.status_reason = "failed", "the judge is off: set TRAINYARD_OPENAI_API_KEY"
    failed = trainyard("comparison", cid, env=service.env)
    assert failed.returncode == 7
    assert one_error_line(failed) == (f"error: comparison {cid} failed: the judge is off: set TRAINYARD_OPENAI_API_KEY")
    assert "one" in failed.stdout and "two" in failed.stdout  # the table as far as it got
