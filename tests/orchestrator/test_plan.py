"""The plan estimator (orchestrator.planning), pure: Lambda's catalog as the simulator ships it,
throughput records made up here, no database, no service."""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from orchestrator.errors import InvalidSpecError
from orchestrator.planning import priors
from orchestrator.planning.plan import make_plan, workload_of
from orchestrator.planning.rows import Observation, PlanRow, auto_candidates, choose, mark, nothing_qualifies
from orchestrator.planning.shape import shape_of
from orchestrator.spec import RunSpec, validate_spec
from provision.base import InstanceType
from provision.simulator.catalog import DEFAULT_CATALOG
from trainer.architecture import flops_per_token, make_config

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SMALL_PARAMS = 163_009_536


def catalog() -> list[InstanceType]:
    raw = json.loads(DEFAULT_CATALOG.read_text())["instance_types"]
    return [
        InstanceType(n, v["description"], v["specs"]["gpus"], v["gpu_description"], v["price_cents_per_hour"],
                     tuple(v["capacity"]))
        for n, v in raw.items()
    ]  # fmt: skip


def seed_spec(**compute):
    """The seed user's run: gpt2-small, seq 1024, the Chinchilla budget, 8 GPUs per node."""
    return validate_spec(
        {
            "name": "seed",
            "model": {"preset": "gpt2-small"},
            "training": {"seq_len": 1024, "micro_batch": "auto", "max_tokens": "chinchilla", "eval_every": 0},
            "compute": {"provider": "lambda", "instance_type": "auto", "procs_per_node": 8, **compute},
        }
    )


def record(instance_type: str, tokens_per_s: float, *, age_h: float = 0, nodes: int = 1, gpus: int = 8, **kw):
    values = dict(micro_batch=20, mfu=None, launch_to_first_step_s=None, eval_s=None)
    values.update(kw)
    return Observation(
        provider="lambda",
        instance_type=instance_type,
        nodes=nodes,
        gpus_per_node=gpus,
        tokens_per_s=tokens_per_s,
        created_at=T0 - timedelta(hours=age_h),
        **values,
    )


def rows_by_type(plan) -> dict[str, PlanRow]:
    return {r.instance_type: r for r in plan.rows}


def test_chinchilla_budget_and_flops_are_the_trainers():
    work = workload_of(seed_spec())
    assert work.params == SMALL_PARAMS
    assert work.train_tokens == 20 * SMALL_PARAMS == 3_260_190_720
    assert work.flops_per_token == flops_per_token(make_config("gpt2-small"), 1024) == pytest.approx(8.55e8, rel=1e-3)


def test_the_memory_model_gives_the_seed_users_micro_batches():
    rows = rows_by_type(make_plan(seed_spec(), "lambda", catalog(), []))
    assert rows["gpu_8x_a100"].micro_batch == 13  # seed: 13
    assert rows["gpu_8x_a100_80gb_sxm4"].micro_batch in (27, 28)  # seed: 28
    assert rows["gpu_8x_h100_sxm5"].micro_batch in (27, 28)  # seed: 27
    assert rows["gpu_8x_b200_sxm6"].micro_batch == 64  # seed: 64
    assert all(
        r.memory_gb <= gpu_memory for r, gpu_memory in [(rows["gpu_8x_a100"], 40), (rows["gpu_8x_b200_sxm6"], 180)]
    )


def test_without_records_every_row_is_the_published_prior_citing_its_source():
    plan = make_plan(seed_spec(), "lambda", catalog(), [])
    assert "cpu_4x_general" not in rows_by_type(plan), "a GPU provider's CPU types are left out"
    estimated = [r for r in plan.rows if r.estimated]
    assert {r.source for r in estimated} == {"prior"}
    assert all("seed-facts.md" in r.source_detail for r in estimated)
    a100 = rows_by_type(plan)["gpu_8x_a100"]
    assert a100.tokens_per_s == pytest.approx(226_000)  # the seed run's own figure comes back
    assert a100.mfu == pytest.approx(0.077, abs=0.001)
    assert a100.band.relative == priors.PRIOR_BAND
    assert a100.training_s == pytest.approx(3_260_190_720 / 226_000)
    assert 3.9 < a100.training_s / 3600 < 4.1  # seed: "under 4 hours"


def test_types_with_fewer_gpus_than_the_spec_runs_do_not_fit_and_more_are_billed_idle():
    rows = rows_by_type(make_plan(seed_spec(), "lambda", catalog(), []))
    one = rows["gpu_1x_h100_sxm5"]
    assert not one.fits and "procs_per_node is 8" in one.reason and one.usd is None
    spec = seed_spec(procs_per_node=2)
    eight = rows_by_type(make_plan(spec, "lambda", catalog(), []))["gpu_8x_h100_sxm5"]
    assert eight.fits and "uses 2 of 8 GPUs" in eight.notes[0]
    assert eight.usd == pytest.approx(math.ceil(eight.total_s / 60) * 2392 / 60 / 100)  # all 8 GPUs billed


def test_measured_takes_the_median_of_the_newest_records_of_its_type_shape_and_nodes():
    newest = [
        record("gpu_8x_h100_sxm5", tps, age_h=i, micro_batch=30 + i, launch_to_first_step_s=300 + i, eval_s=60)
        for i, tps in enumerate([900_000, 1_000_000, 1_100_000, 950_000, 1_050_000])
    ]
    old = [record("gpu_8x_h100_sxm5", 10.0, age_h=100 + i) for i in range(3)]  # past the newest 5
    other_nodes = [record("gpu_8x_h100_sxm5", 5.0, nodes=2)]  # another node count: not this row's
    plan = make_plan(seed_spec(), "lambda", catalog(), newest + old + other_nodes)
    row = rows_by_type(plan)["gpu_8x_h100_sxm5"]
    assert row.source == "measured" and row.records == 5
    assert row.tokens_per_s == 1_000_000
    assert row.micro_batch == 30, "the newest record's micro-batch"
    assert row.setup_s == 302 and row.eval_s == 60
    assert row.band.relative == pytest.approx(0.10)  # the records' spread is ±10%
    assert row.band.hours_low == pytest.approx(row.hours * 0.9) and row.band.hours_high == pytest.approx(
        row.hours * 1.1
    )


def test_a_measured_band_is_the_records_spread_but_at_least_ten_percent():
    tight = [record("gpu_8x_h100_sxm5", 1_000_000 + i) for i in range(3)]
    wide = [record("gpu_8x_a100", tps) for tps in (100_000, 200_000, 300_000)]
    rows = rows_by_type(make_plan(seed_spec(), "lambda", catalog(), tight + wide))
    assert rows["gpu_8x_h100_sxm5"].band.relative == priors.MEASURED_MIN_BAND
    assert rows["gpu_8x_a100"].band.relative == pytest.approx(0.5)


def test_other_types_records_scale_by_peak_one_vote_per_type():
    fpt = workload_of(seed_spec()).flops_per_token
    # many records at 30% MFU on one type, one at 40% on another: the median of the two types
    records = [record("gpu_8x_a100", 1.0, mfu=0.30, age_h=i) for i in range(50)]
    records += [record("gpu_8x_a100_80gb_sxm4", 1.0, mfu=0.40)]
    rows = rows_by_type(make_plan(seed_spec(), "lambda", catalog(), records))
    h100 = rows["gpu_8x_h100_sxm5"]
    assert h100.source == "scaled" and h100.band.relative == priors.SCALED_BAND
    assert h100.mfu == pytest.approx(0.35)
    assert h100.tokens_per_s == pytest.approx(0.35 * 8 * 989e12 / fpt)
    assert "gpu_8x_a100" in h100.source_detail
    assert rows["gpu_8x_a100"].source == "measured"


def test_billing_is_per_started_minute_on_every_node():
    spec = validate_spec(
        {
            "name": "bill",
            "training": {"max_tokens": 1_000_000, "eval_every": 0},
            "evaluation": {"test_loss": False},
            "compute": {"provider": "lambda", "instance_type": "x", "nodes": 2},
        }
    )
    minute_dollar = InstanceType("x", "1x A10", 1, "A10 (24 GB PCIe)", 6000, ("us-east-1",))  # US$1 a minute
    rec = record("x", 10_000, nodes=2, gpus=1, micro_batch=8, launch_to_first_step_s=21.0)
    row = make_plan(spec, "lambda", [minute_dollar], [rec]).rows[0]
    assert row.total_s == pytest.approx(121.0)  # 21 s setup + 100 s of training
    assert row.billed_minutes == 3
    assert row.usd == pytest.approx(2 * 3 * 1.0)  # 3 started minutes on each of 2 nodes
    assert row.usd_per_billion_tokens == pytest.approx(6.0 / 1e-3)


def test_a_model_that_cannot_fit_says_why():
    too_many = seed_spec()
    too_many = validate_spec(
        {**too_many.model_dump(), "training": {**too_many.training.model_dump(), "micro_batch": 64}}
    )
    a100 = rows_by_type(make_plan(too_many, "lambda", catalog(), []))["gpu_8x_a100"]
    assert not a100.fits and "micro_batch 64 needs about" in a100.reason and "40 GB" in a100.reason
    assert "about 13 fit" in a100.reason
    huge = validate_spec(
        {
            "name": "huge",
            "model": {"preset": "gpt2-medium", "overrides": {"n_layer": 48}},
            "training": {"seq_len": 1024, "micro_batch": "auto"},
            "compute": {"provider": "lambda", "instance_type": "auto", "procs_per_node": 8},
        }
    )
    v100 = rows_by_type(make_plan(huge, "lambda", catalog(), []))["gpu_8x_v100"]
    assert not v100.fits and "AdamW states" in v100.reason and v100.tokens_per_s is None


def test_a_record_that_ran_a_micro_batch_outranks_the_memory_model():
    spec = validate_spec({**seed_spec().model_dump(), "training": {"seq_len": 1024, "micro_batch": 16}})
    plain = rows_by_type(make_plan(spec, "lambda", catalog(), []))["gpu_8x_a100"]
    ran = rows_by_type(make_plan(spec, "lambda", catalog(), [record("gpu_8x_a100", 250_000, micro_batch=16)]))
    assert not plain.fits and ran["gpu_8x_a100"].fits and ran["gpu_8x_a100"].source == "measured"


def _row(name: str, usd: float, hours: float) -> PlanRow:
    return PlanRow(name, "A10", 1, "A10", 1, 1, 100, ["r"], True, None, "prior", "", usd=usd, total_s=hours * 3600)


def test_cheapest_fastest_and_the_pareto_frontier():
    rows = [_row("cheap", 10, 5), _row("fast", 40, 1), _row("middle", 20, 2), _row("worse", 30, 3), _row("twin", 10, 5)]
    rows.append(PlanRow("unfit", None, 1, "?", 1, 1, 1, [], False, "too big", "none", ""))
    mark(rows)
    flags = {r.instance_type: (r.cheapest, r.fastest, r.frontier) for r in rows}
    assert flags["cheap"] == (True, False, True)
    assert flags["twin"] == (False, False, True), "equal rows are both on the frontier; one is marked cheapest"
    assert flags["fast"] == (False, True, True)
    assert flags["middle"] == (False, False, True)
    assert flags["worse"] == (False, False, False), "middle is cheaper and faster"
    assert flags["unfit"] == (False, False, False)


def test_the_seed_plan_marks_rows_and_orders_them_cheapest_first():
    plan = make_plan(seed_spec(), "lambda", catalog(), [])
    estimated = [r for r in plan.rows if r.estimated]
    assert [r.usd for r in estimated] == sorted(r.usd for r in estimated)
    assert sum(r.cheapest for r in plan.rows) == 1 and sum(r.fastest for r in plan.rows) == 1
    fastest = next(r for r in plan.rows if r.fastest)
    assert fastest.instance_type == "gpu_8x_b200_sxm6" and fastest.frontier
    assert plan.rows[-1].fits is False, "rows that do not fit come last"


def test_auto_chooses_by_objective_within_budget_and_capacity_first():
    types = catalog()
    cheapest = choose(make_plan(seed_spec(), "lambda", types, []), "auto", "cheapest").row
    fastest = choose(make_plan(seed_spec(objective="fastest"), "lambda", types, []), "auto", "fastest").row
    assert fastest.instance_type == "gpu_8x_b200_sxm6"
    assert cheapest.cheapest
    # the cheapest type loses its capacity: it is tried last, after every type with capacity now
    gone = [replace(t, regions_with_capacity=()) if t.name == cheapest.instance_type else t for t in types]
    ranked = [r.instance_type for r in auto_candidates(make_plan(seed_spec(), "lambda", gone, []), "cheapest")]
    with_capacity = [t.name for t in gone if t.regions_with_capacity]
    assert ranked[0] in with_capacity and ranked[0] != cheapest.instance_type
    assert all(ranked.index(cheapest.instance_type) > ranked.index(n) for n in ranked if n in with_capacity)


def test_auto_with_nothing_in_budget_names_the_cheapest_estimate_and_the_budget():
    spec = validate_spec({**seed_spec().model_dump(), "budget": {"max_usd": 5}})
    plan = make_plan(spec, "lambda", catalog(), [])
    assert auto_candidates(plan, "cheapest") == []
    choice = choose(plan, "auto", "cheapest")
    line = nothing_qualifies(plan)
    assert choice.row is None and choice.reason == line
    low = min((r for r in plan.rows if r.estimated), key=lambda r: r.usd)
    assert low.instance_type in line and f"US${low.usd:,.2f}" in line and "budget.max_usd 5" in line


def test_the_local_provider_keeps_its_one_type_and_measures_it():
    spec = validate_spec({"name": "local", "training": {"max_tokens": 100_000}})
    local = InstanceType("local", "this machine", 0, "whatever this machine has", 0, ("local",))
    row = make_plan(spec, "local", [local], []).rows[0]
    assert row.fits and row.source == "none" and row.usd is None
    rec = record("local", 2_000.0, gpus=1, micro_batch=8)
    row = make_plan(spec, "local", [local], [Observation(**{**rec.__dict__, "provider": "local"})]).rows[0]
    validation = 32768 / (3 * 50 * 8 * 128)  # eval_tokens every eval_every steps, forward only
    assert row.source == "measured" and row.usd == 0 and row.training_s == pytest.approx(50 * (1 + validation))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": {"overrides": {"n_layers": 2}}}, "model.overrides"),
        ({"training": {"seq_len": 4096}}, "training.seq_len"),
    ],
)
def test_a_spec_the_trainer_would_refuse_names_the_field(change, field):
    spec = RunSpec.model_validate({"name": "bad", **change})  # stored before the door checked this
    with pytest.raises(InvalidSpecError) as info:
        make_plan(spec, "lambda", catalog(), [])
    assert info.value.field == field


def test_twenty_types_and_a_thousand_records_plan_in_well_under_200_ms():
    types = [
        InstanceType(f"t{i}", "8x H100", 8, "H100 (80 GB SXM5)", 2000 + i, ("us-east-1",) if i % 2 else ())
        for i in range(20)
    ]
    spec = seed_spec()
    records = [record(f"t{i % 25}", 700_000 + i, age_h=i, mfu=0.3, nodes=1 + i % 2) for i in range(1000)]
    assert shape_of(spec).key  # the records are the shape's by construction
    times = []
    for _ in range(5):
        start = time.perf_counter()
        plan = make_plan(spec, "lambda", types, records)
        times.append(time.perf_counter() - start)
    assert len(plan.rows) == 20 and {r.source for r in plan.rows} <= {"measured", "scaled"}
    assert statistics.median(times) < 0.2
