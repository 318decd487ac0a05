"""End to end on CPU: two runs trained with IFT and OpenAI's GPT-2 as a baseline, compared by ONE
command, `trainyard compare R1 R2 --baseline gpt2`, whose stdout is the table.

Everything is real and on loopback: `trainyard serve` and a `trainyard worker` (subprocesses on
one SQLite database), the trainer's prepare / train / evaluate / ift through the local provider,
the CLI. At the edge of the outside world: the judge is the OpenAI-compatible fake
(tests/openai_fake.py) reached through the real `openai` client, and "OpenAI's GPT-2" is a
one-layer GPT-2 in Hugging Face's format served Hub-style at HF_ENDPOINT, downloaded by the
baseline run's trainer. A second identical compare makes no judge call (the cache).
"""

from __future__ import annotations

import json
import re

import pytest

from ift_helpers import HubServer, write_instruction_data, write_tiny_gpt2
from openai_fake import FakeOpenAIServer, score_by_content
from orchestrator_helpers import TERMINAL, tiny_spec

KEY = "sk-e2e-SECRET-5150-do-not-leak"


def judge_by_length(answer: str, _reference: str) -> int:
    # any deterministic score will do: the point is the plumbing, not the tiny models' quality
    return 20 + (len(answer) * 7) % 61


def ift_spec(name: str, data: str, lr: float) -> dict:
    spec = tiny_spec(name, train_tokens=4096)
    spec["data"]["max_tokens"] = 30000
    spec["training"]["lr"] = lr
    spec["evaluation"]["ift"] = {"enabled": True, "data": data, "epochs_max": 2, "limit_test": 3, "max_new_tokens": 8}
    return spec


@pytest.fixture
def world(make_service, tmp_path):
    weights = write_tiny_gpt2(tmp_path / "tiny-gpt2")
    with FakeOpenAIServer() as judge, HubServer(weights) as hub:
        judge.reply = lambda body: score_by_content(body, judge_by_length)
        env = {
            "TRAINYARD_OPENAI_API_KEY": KEY,
            "TRAINYARD_JUDGE_BASE_URL": judge.base_url,
            "TRAINYARD_JUDGE_MODEL": "judge-e2e",
            "TRAINYARD_JUDGE_MAX_RETRIES": "0",
            "HF_ENDPOINT": hub.url,
            "TRAINYARD_HF_CACHE": str(tmp_path / "hf-cache"),
        }
        serve = make_service(**env).start()
        worker = make_service(command=("worker",), TRAINYARD_WORKER_ID="worker-e2e", **env).start(wait=False)
        yield serve, worker, judge, hub, tmp_path
        for svc in (serve, worker):  # before the judge and the Hub go
            svc.stop()


def test_two_runs_and_the_gpt2_baseline_are_compared_by_one_command(world):
    serve, worker, judge, hub, tmp_path = world
    data = str(write_instruction_data(tmp_path / "instruction-data.json", 40))
    runs = [serve.submit(ift_spec("small-a", data, 3e-3)), serve.submit(ift_spec("small-b", data, 1e-3))]
    for run_id in runs:
        run = serve.wait(run_id, lambda r: r["status"] in TERMINAL, timeout=240, what="ended")
        assert run["status"] == "succeeded", f"{run['status_reason']}\n{worker.log_tail()}"
        assert "instruction fine-tuned" in run["status_reason"]
        answers = serve.client.get(f"/runs/{run_id}/answers").json()["answers"]
        assert len(answers) == 3 and all("model_response" in a for a in answers)

    done = serve.cli("compare", *runs, "--baseline", "gpt2", timeout=240)  # no key: the service judges
    logs = serve.log_tail(400) + worker.log_tail(400)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"

    # the table: a header and one row per model, each with its test loss, score +- CI and cost
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert re.split(r"\s{2,}", lines[0].strip()) == ["MODEL", "RUN", "TEST LOSS", "IFT SCORE ± 95% CI", "ITEMS", "COST"]
    rows = [re.split(r"\s{2,}", ln.strip()) for ln in lines[1:]]
    assert [r[0] for r in rows] == ["small-a", "small-b", "gpt2"], done.stdout
    baseline_id = rows[2][1]
    assert [r[1] for r in rows[:2]] == runs and baseline_id not in runs
    for model, _run_id, loss, score, items, cost in rows:
        assert re.fullmatch(r"\d+\.\d{3}", loss) and 5 < float(loss) < 12, (model, loss)
        assert re.fullmatch(r"\d+\.\d ± \d+\.\d", score), (model, score)
        assert items == "3" and re.fullmatch(r"\$\d+\.\d{2,4}", cost), (model, items, cost)
    assert f"waiting for baseline gpt2 (run {baseline_id}: " in done.stderr  # the progress line
    assert "9 calls made, 0 from the cache" in done.stderr
    assert judge.calls == 9  # 3 items x k=3, one comparative call each

    base = serve.run(baseline_id)
    assert (base["name"], base["status"], base["spec"]["model"]["pretrained"]) == ("baseline gpt2", "succeeded", "gpt2")
    assert [e["to_status"] for e in serve.events(baseline_id) if e["kind"] == "status"] == [
        "pending",
        "provisioning",
        "bootstrapping",
        "evaluating",
        "succeeded",
    ]
    assert sorted(set(hub.requests)) == [
        "/openai-community/gpt2/resolve/main/config.json",
        "/openai-community/gpt2/resolve/main/model.safetensors",
    ]

    # the same command again: the same baseline run and every judgement from the cache
    again = serve.cli("compare", *runs, "--baseline", "gpt2", "--format", "json", timeout=240)
    assert again.returncode == 0, again.stderr
    assert judge.calls == 9
    c = json.loads(again.stdout)
    assert c["status"] == "succeeded" and c["usage"]["calls_made"] == 0 and c["usage"]["calls_cached"] == 9
    assert [r["run_id"] for r in c["rows"]] == [*runs, baseline_id]
    assert [f"{r['test_loss']:.3f}" for r in c["rows"]] == [r[2] for r in rows]
    assert all(r["cost"]["cents"] > 0 for r in c["rows"])  # local machines are free; the judge is not
    assert serve.client.get("/runs").json()["total"] == 3

    for text in (done.stdout, done.stderr, again.stdout, again.stderr, logs):
        assert KEY not in text
