"""Throughput records without a node: the steady-state rule, the type's GPU, the trainer's start
line as ingest keeps it, the record `measure` writes (SQLite and PostgreSQL), and
`GET /api/v1/throughput`. The end-to-end runs on the Lambda simulator are in
test_e2e_throughput.py."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from orchestrator.controller.ingest import apply_lines
from orchestrator.db.models import Instance, MetricPoint, Run, RunEvent, ThroughputRecord, utcnow
from orchestrator.db.session import transaction
from orchestrator.planning.records import hardware_of, measure, steady_tokens_per_s
from orchestrator.planning.shape import shape_of
from orchestrator.spec import validate_spec
from orchestrator_helpers import submit_run
from provision.base import InstanceType
from provision.errors import ProvisionError
from trainer.architecture import flops_per_token, make_config

A10 = InstanceType("gpu_1x_a10", "1x A10 (24 GB PCIe)", 1, "A10 (24 GB PCIe)", 75)
CPU4 = InstanceType("cpu_4x_general", "4x CPU General (16 GiB)", 0, "N/A", 20)
SPEC = {
    "model": {"preset": "gpt2-tiny", "overrides": {"n_layer": 1, "n_embd": 64, "n_head": 2}},
    "training": {"seq_len": 64, "micro_batch": "auto", "max_tokens": 20_000},
    "compute": {"provider": "lambda", "instance_type": "gpu_1x_a10"},
}


class Provider:
    """As much of a provider as a record needs: its name and its types (or a failure)."""

    def __init__(self, name: str = "lambda", types: list[InstanceType] | None = None, error: Exception | None = None):
        self.name, self.types, self.error, self.asked = name, types or [], error, 0

    def instance_types(self) -> list[InstanceType]:
        self.asked += 1
        if self.error is not None:
            raise self.error
        return self.types


# -- the steady state ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        ([], None),
        ([None, 0.0], None),  # nothing measured
        ([50.0], 50.0),  # one point: that one
        ([10.0, 90.0], 90.0),  # too few to leave out a warm-up of 2: everything after the first
        ([10.0, 20.0, 100.0], 100.0),  # 3 points: the warm-up is the first 2
        ([1.0, 2.0] + [100.0, 101.0, 102.0] * 6, 101.0),  # 20 points: 10% is 2, so 2 left out
        ([1.0, 2.0, 3.0] + [100.0, 101.0, 102.0] * 9, 101.0),  # 30: 10% is 3 > 2, so 3 left out
        ([5.0, 6.0, 7.0, 8.0, 9.0] + [200.0] * 20, 200.0),  # 25: ceil(2.5) = 3; the median is robust
        ([None, 10.0, None, 20.0, 30.0, 40.0], 35.0),  # points with no rate do not count
    ],
)
def test_steady_tokens_per_s_leaves_the_warm_up_out(rates, expected):
    assert steady_tokens_per_s(rates) == expected


# -- the type's GPU ------------------------------------------------------------------------------
def test_the_gpu_comes_from_the_catalog_or_else_from_a_lambda_name():
    hw = hardware_of(Provider(types=[A10, CPU4]), "gpu_1x_a10", 1)
    assert (hw.gpu.name, hw.gpu.peak_bf16_flops, hw.gpus_per_node) == ("A10", 1.25e14, 1)
    # the provider cannot be asked: Lambda's naming tells the count and the GPU
    hw = hardware_of(Provider(error=ProvisionError("HTTP 503")), "gpu_8x_h100_sxm5", 8)
    assert (hw.gpu.name, hw.gpus_per_node) == ("H100 SXM", 8)
    hw = hardware_of(Provider(error=ProvisionError("HTTP 503")), "gpu_1x_h100_pcie", 1)
    assert hw.gpu.name == "H100 PCIe"
    # no GPU (a CPU type, a type nobody knows, this machine): its processes, no GPU
    assert hardware_of(Provider(types=[CPU4]), "cpu_4x_general", 1) == (hw0 := hardware_of(Provider(), "mystery", 1))
    assert (hw0.gpu, hw0.gpus_per_node) == (None, 1)
    local = Provider("local")
    assert hardware_of(local, "local", 2).gpus_per_node == 2 and local.asked == 0


# -- the start line as ingest keeps it ----------------------------------------------------------
def test_ingest_keeps_the_start_line_and_the_first_start_time(factory):
    run_id = submit_run(factory, **SPEC)
    start = {"kind": "start", "time": 1000.0, "micro_batch": 16, "world_size": 1, "params": 5, "flops_per_token": 7.0}
    with transaction(factory) as s:
        apply_lines(s, s.get(Run, run_id), [start], str)
    resumed = {**start, "time": 2000.0, "micro_batch": 8, "resumed_from_step": 4}
    with transaction(factory) as s:
        apply_lines(s, s.get(Run, run_id), [resumed], str)
    with factory() as s:
        kept = s.get(Run, run_id).trainer_start
    assert kept["micro_batch"] == 8 and kept["time"] == 2000.0 and kept["resumed_from_step"] == 4  # the latest
    assert kept["first_time"] == 1000.0 and kept["flops_per_token"] == 7.0  # the first start stays


# -- the record ---------------------------------------------------------------------------------
def _trained_run(factory, *, purpose: str = "train", **spec) -> str:
    """A run as the controller leaves it after training on gpu_1x_a10: started 100 s before its
    trainer, 10 train points (the first 2 slow), evaluating for the last 30 s."""
    run_id = submit_run(factory, **{**SPEC, **spec})
    now = utcnow()
    started = now - timedelta(seconds=200)
    with transaction(factory) as s:
        run = s.get(Run, run_id)
        run.purpose, run.started_at, run.tokens_done = purpose, started, 20_480
        first = started.timestamp() + 100.0
        run.trainer_start = {"micro_batch": 16, "params": 3_400_000, "flops_per_token": 2.0e7, "first_time": first}
        for step in range(1, 11):
            rate = 100.0 if step <= 2 else 1000.0 + step
            s.add(MetricPoint(run_id=run_id, kind="train", step=step, tokens=step * 1024, time=0.0, tokens_per_s=rate))
        s.add(MetricPoint(run_id=run_id, kind="val", step=10, tokens=10240, time=0.0, val_loss=5.0))
        s.add(RunEvent(run_id=run_id, kind="status", to_status="evaluating", time=now - timedelta(seconds=30)))
        s.add(Instance(run_id=run_id, rank=0, name=f"ty-{run_id}-0", provider="lambda", instance_type="gpu_1x_a10"))
    return run_id


def _measure_and_write(factory, run_id: str, provider: Provider) -> ThroughputRecord | None:
    ctx = SimpleNamespace(factory=factory, provider=provider)
    with factory() as s:
        run = s.get(Run, run_id)
    record = measure(ctx, run)
    if record is None:
        return None
    with transaction(factory) as s:
        record(s, s.get(Run, run_id))
    with factory() as s:
        return s.scalar(select(ThroughputRecord).where(ThroughputRecord.run_id == run_id))


def test_a_trained_run_leaves_one_record_of_what_it_measured(factory):
    run_id = _trained_run(factory)
    rec = _measure_and_write(factory, run_id, Provider(types=[A10]))
    assert rec.source == "run" and (rec.provider, rec.instance_type, rec.gpu) == ("lambda", "gpu_1x_a10", "A10")
    assert (rec.nodes, rec.gpus_per_node, rec.micro_batch, rec.params) == (1, 1, 16, 3_400_000)
    assert rec.tokens_per_s == 1006.5  # the median of steps 3..10 (1003..1010): warm-up left out
    assert rec.mfu == pytest.approx(2.0e7 * 1006.5 / 1.25e14)
    assert rec.launch_to_first_step_s == pytest.approx(100.0, abs=0.01)
    assert rec.eval_s == pytest.approx(30.0, abs=5)  # evaluating from 30 s ago to the end (now)
    assert rec.tokens_trained == 20_480
    spec = validate_spec({"name": "t", **SPEC})
    assert (rec.shape_key, rec.preset, rec.seq_len, rec.precision) == (shape_of(spec).key, "gpt2-tiny", 64, "auto")
    assert rec.overrides == {"n_layer": 1, "n_embd": 64, "n_head": 2}

    # ending the run again (a crash before the commit, a second pass) writes nothing more
    again = measure(SimpleNamespace(factory=factory, provider=Provider(types=[A10])), _run(factory, run_id))
    with transaction(factory) as s:
        again(s, s.get(Run, run_id))
    with factory() as s:
        assert len(s.scalars(select(ThroughputRecord)).all()) == 1


def _run(factory, run_id: str) -> Run:
    with factory() as s:
        return s.get(Run, run_id)


def test_a_probe_without_evaluation_and_an_older_trainer_still_record(factory):
    run_id = _trained_run(factory, purpose="probe", compute={"provider": "lambda", "instance_type": "cpu_4x_general"})
    with transaction(factory) as s:
        run = s.get(Run, run_id)
        run.trainer_start = {"micro_batch": 16, "first_time": None}  # no flops, params, first start
        s.execute(RunEvent.__table__.delete().where(RunEvent.run_id == run_id, RunEvent.to_status == "evaluating"))
        s.get_one(
            Instance, s.scalar(select(Instance.id).where(Instance.run_id == run_id))
        ).instance_type = "cpu_4x_general"
    rec = _measure_and_write(factory, run_id, Provider(types=[CPU4]))
    assert rec.source == "probe" and rec.gpu is None and rec.mfu is None and rec.eval_s is None
    assert rec.launch_to_first_step_s is None
    # what the trainer would have said: the same arithmetic, torch-free
    assert rec.flops_per_token == flops_per_token(make_config("gpt2-tiny", SPEC["model"]["overrides"]), 64)


def test_nothing_to_record_without_training(factory):
    untrained = submit_run(factory, **SPEC)
    assert _measure_and_write(factory, untrained, Provider(types=[A10])) is None
    pretrained = submit_run(factory, model={"pretrained": "gpt2"}, compute={"provider": "lambda", "instance_type": "x"})
    assert _measure_and_write(factory, pretrained, Provider()) is None
    # `auto` with no start line seen: the micro-batch that ran is unknown, so no record
    run_id = _trained_run(factory)
    with transaction(factory) as s:
        s.get(Run, run_id).trainer_start = None
    assert _measure_and_write(factory, run_id, Provider(types=[A10])) is None


# -- GET /api/v1/throughput --------------------------------------------------------------------
def test_the_api_lists_records_newest_first_with_filters(client, factory):
    made = []
    for i, (itype, shape) in enumerate([("gpu_1x_a10", "s1"), ("gpu_1x_a10", "s2"), ("cpu_4x_general", "s1")]):
        run_id = submit_run(factory, **SPEC)
        made.append(run_id)
        with transaction(factory) as s:
            s.add(
                ThroughputRecord(
                    run_id=run_id,
                    source="probe" if i == 2 else "run",
                    provider="lambda",
                    instance_type=itype,
                    gpu=None,
                    nodes=1,
                    gpus_per_node=1,
                    shape_key=shape,
                    preset="gpt2-tiny",
                    overrides={},
                    seq_len=64,
                    precision="auto",
                    micro_batch=16,
                    tokens_per_s=1000.0 + i,
                    created_at=utcnow() + timedelta(seconds=i),
                )
            )

    def ids(**params) -> list[str]:
        r = client.get("/api/v1/throughput", params=params)
        assert r.status_code == 200, r.text
        return [rec["run_id"] for rec in r.json()["records"]]

    assert ids() == made[::-1]
    assert ids(instance_type="gpu_1x_a10") == [made[1], made[0]]
    assert ids(shape="s1") == [made[2], made[0]]
    assert ids(run_id=made[1]) == [made[1]] and ids(source="probe") == [made[2]]
    assert ids(limit=1) == [made[2]]
    first = client.get("/api/v1/throughput", params={"run_id": made[0]}).json()["records"][0]
    assert first["tokens_per_s"] == 1000.0 and first["created_at"].endswith(("+00:00", "Z"))
    assert client.get("/api/v1/throughput", params={"limit": 0}).status_code == 422
