"""Throughput records and probes end to end on the Lambda simulator: the service (a real
subprocess) runs `provider: lambda` runs on simulated instances that are real sshd machines on
127.0.0.x, with the real trainer (on their CPUs).

What is shown (issue 11): a finished run leaves one record with the micro-batch that ran, its
steady tokens/s, the MFU against the simulated type's GPU peak (an A10's, from trainer/gpus.json:
tiny, since a CPU does the work), launch to first step and the evaluation's time; `GET
/throughput` and `trainyard throughput` list it. `trainyard plan SPEC --probe TYPE` runs a probe
whose trainer searches its micro-batch on the node's CPU, leaves a `probe` record, and its
instance is terminated and booked.
"""

from __future__ import annotations

import json

import pytest
import yaml
from sqlalchemy import select

from orchestrator.db.models import CostEntry, Instance, Run, ThroughputRecord
from orchestrator.planning.records import steady_tokens_per_s
from orchestrator.planning.shape import shape_of
from orchestrator.spec import validate_spec
from orchestrator_helpers import lambda_spec, sim_instances, start_lambda_service
from trainer.gpus import gpu_for
from trainer.schema import AUTO_MICRO_BATCH_LIMIT_CPU


@pytest.fixture(scope="module")
def svc(lsim, tmp_path_factory):
    service = start_lambda_service(lsim, tmp_path_factory.mktemp("tservice"))
    yield service
    service.close()


def records_of(svc, run_id: str) -> list[ThroughputRecord]:
    with svc.db() as s:
        return list(s.scalars(select(ThroughputRecord).where(ThroughputRecord.run_id == run_id)))


def test_a_finished_run_leaves_one_record_that_the_api_and_the_cli_list(svc):
    spec = lambda_spec("tp-run", nodes=1, instance_type="gpu_1x_a10", test_loss=True)
    run_id = svc.submit(spec)
    run = svc.wait_ended(run_id, timeout=240)
    assert run["status"] == "succeeded", (run["status_reason"], svc.log_tail())

    (rec,) = records_of(svc, run_id)
    with svc.db() as s:
        start = s.get(Run, run_id).trainer_start
    assert rec.source == "run" and rec.micro_batch == start["micro_batch"] == 4  # what ran
    assert (rec.provider, rec.instance_type, rec.nodes, rec.gpus_per_node, rec.gpu) == (
        "lambda",
        "gpu_1x_a10",
        1,
        1,
        "A10",
    )
    points = [p for p in svc.metrics(run_id) if p["kind"] == "train"]
    assert len(points) == 16  # 32 steps, a point every 2
    assert rec.tokens_per_s == steady_tokens_per_s([p["tokens_per_s"] for p in points]) > 0
    a10 = gpu_for("A10 (24 GB PCIe)")
    assert rec.flops_per_token == start["flops_per_token"] > 0
    assert rec.mfu == pytest.approx(rec.flops_per_token * rec.tokens_per_s / a10.peak_bf16_flops)
    assert 0 < rec.launch_to_first_step_s < run["wall_s"]  # boot, bootstrap, data
    assert 0 < rec.eval_s < run["wall_s"]  # the test loss was measured
    assert rec.tokens_trained == run["progress"]["tokens_done"] == 8192
    assert rec.shape_key == shape_of(validate_spec(spec)).key

    listed = svc.client.get("/throughput", params={"instance_type": "gpu_1x_a10"}).json()["records"]
    assert [r["run_id"] for r in listed] == [run_id] and listed[0]["tokens_per_s"] == rec.tokens_per_s
    cli = svc.cli("throughput", "--format", "json", "--run", run_id)
    assert cli.returncode == 0, cli.stderr
    (shown,) = json.loads(cli.stdout)["records"]
    assert (shown["micro_batch"], shown["mfu"], shown["eval_s"]) == (4, rec.mfu, rec.eval_s)
    table = svc.cli("throughput")
    assert table.returncode == 0 and run_id in table.stdout and "1x A10" in table.stdout


def test_a_probe_searches_its_micro_batch_records_it_and_gives_its_node_back(svc, tmp_path):
    spec = lambda_spec("tp-probe", nodes=2, instance_type="gpu_1x_a10", fallbacks=("gpu_1x_a10",))
    spec["training"]["seq_len"] = 32  # 24 steps of 16 x 32 tokens: seconds on one core
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))

    probe = svc.cli(
        "plan", str(path), "--probe", "cpu_4x_general", "--max-usd", "1", "--max-minutes", "5", "--format", "json"
    )
    assert probe.returncode == 0, (probe.stderr, svc.log_tail())
    shown = json.loads(probe.stdout)
    run, rec = shown["run"], shown["record"]
    run_id = run["id"]
    assert run["status"] == "succeeded" and run["spec"]["training"]["micro_batch"] == "auto"
    assert run["spec"]["budget"] == {"max_usd": 1.0, "max_hours": pytest.approx(5 / 60)}
    assert run["spec"]["compute"]["nodes"] == 1 and run["spec"]["evaluation"]["test_loss"] is False
    # the trainer searched on the node's CPU and found its limit: the record has what ran
    assert rec["source"] == "probe" and rec["micro_batch"] == shown["micro_batch"] == AUTO_MICRO_BATCH_LIMIT_CPU
    assert shown["steps"] == 24 and rec["tokens_trained"] == 24 * 16 * 32
    assert rec["instance_type"] == "cpu_4x_general" and rec["gpu"] is None and rec["mfu"] is None  # no GPU
    assert rec["tokens_per_s"] > 0 and rec["launch_to_first_step_s"] > 0 and rec["eval_s"] is None
    assert f"probe {run_id}: 1 node of cpu_4x_general" in probe.stderr

    # the node: terminated at the provider, and booked
    (inst,) = shown["instances"]
    assert inst["terminated"] is True and inst["cost_cents"] > 0
    assert [i.status for i in sim_instances(svc, run_id)] == ["terminated"]
    with svc.db() as s:
        row = s.scalar(select(Instance).where(Instance.run_id == run_id))
        entry = s.scalar(select(CostEntry).where(CostEntry.instance_id == row.id))
    assert row.terminated_at is not None and entry.cents == inst["cost_cents"]
    assert len(records_of(svc, run_id)) == 1


def _row(svc, spec: dict, instance_type: str) -> dict:
    plan = svc.client.post("/plans", json={"spec": spec}).json()
    (row,) = [r for r in plan["rows"] if r["instance_type"] == instance_type]
    return row


def test_after_one_finished_run_its_type_is_measured_and_estimates_the_next_run_within_15_percent(svc):
    # A type no other test here runs, so this test's run is the only evidence for it.
    kind = "gpu_1x_a100_sxm4"
    spec = lambda_spec("tp-estimate", nodes=1, instance_type=kind, train_tokens=16_384, test_loss=True)
    # The plan does not count checkpoint time (the steady tokens/s leaves it out); a checkpoint
    # every 8 of 64 steps would be a larger share than in any real run, so save every 32.
    spec["training"]["checkpoint_every"] = 32
    before = _row(svc, spec, kind)
    assert before["source"] != "measured"  # at most `scaled`, from the other tests' a10 record

    first = svc.wait_ended(svc.submit(spec), timeout=300)
    assert first["status"] == "succeeded", (first["status_reason"], svc.log_tail())
    row = _row(svc, spec, kind)
    assert row["source"] == "measured" and row["records"] == 1, row
    assert row["micro_batch"] == 4  # what the run ran, not the memory model's guess

    second = svc.wait_ended(svc.submit({**spec, "name": "tp-estimate-2"}), timeout=300)
    assert second["status"] == "succeeded", (second["status_reason"], svc.log_tail())
    took = second["wall_s"]
    print(
        f"estimate {row['total_s']:.1f} s (setup {row['setup_s']:.1f}, training {row['training_s']:.1f}, "
        f"evaluation {row['eval_s']:.1f}); the next run took {took:.1f} s"
    )
    assert row["total_s"] == pytest.approx(took, rel=0.15), (row, took)
