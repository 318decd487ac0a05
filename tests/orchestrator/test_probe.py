"""The probe's spec (orchestrator.planning.probe) and `POST/GET /api/v1/plans/probes`, without a
node. The probe on the Lambda simulator, end to end, is in test_e2e_throughput.py."""

from __future__ import annotations

import math
import re

import pytest
import yaml

from orchestrator.db.models import Run
from orchestrator.errors import InvalidSpecError
from orchestrator.planning import priors
from orchestrator.planning.probe import DATA_SLACK_TOKENS, PROBE_STEPS, probe_spec
from orchestrator.spec import validate_spec
from orchestrator_helpers import submit_run
from provision.base import InstanceType
from trainer.architecture import count_params, make_config

CPU4 = InstanceType("cpu_4x_general", "4x CPU General (16 GiB)", 0, "N/A", 20)
A10 = InstanceType("gpu_1x_a10", "1x A10 (24 GB PCIe)", 1, "A10 (24 GB PCIe)", 75)
USER = {
    "name": "my run",
    "model": {"preset": "gpt2-tiny", "overrides": {"n_layer": 1, "n_embd": 64, "n_head": 2}},
    "data": {"max_tokens": 5_000_000},
    "training": {"seq_len": 64, "micro_batch": 8, "max_tokens": "chinchilla", "log_every": 50, "eval_every": 100},
    "compute": {
        "provider": "lambda",
        "instance_type": "gpu_8x_h100_sxm5",
        "fallback_instance_types": ["gpu_1x_a10"],
        "nodes": 4,
        "regions": ["us-east-1"],
    },
    "evaluation": {"test_loss": True, "ift": {"enabled": True}},
    "budget": {"max_usd": 500},
}


def test_a_probe_is_one_node_of_the_type_searching_its_micro_batch_for_a_few_dozen_steps():
    probe = probe_spec(validate_spec(USER), "cpu_4x_general", [CPU4, A10])
    c, t = probe.compute, probe.training
    assert probe.name == "probe cpu_4x_general: my run"
    assert (c.provider, c.instance_type, c.fallback_instance_types, c.nodes, c.regions) == (
        "lambda",
        "cpu_4x_general",
        [],
        1,
        ["us-east-1"],
    )
    # a CPU type: the CPU search's limit, 16 sequences of 64 tokens, 24 steps
    assert (t.micro_batch, t.max_tokens, t.log_every, t.eval_every) == ("auto", PROBE_STEPS * 16 * 64, 1, 0)
    assert t.checkpoint_every > PROBE_STEPS  # only the final checkpoint
    assert probe.data.max_tokens == math.ceil(24 * 16 * 64 * 1.5 / (1 - 0.05 - 0.05)) + DATA_SLACK_TOKENS  # ~73,730
    assert probe.evaluation.test_loss is False and probe.evaluation.ift.enabled is False
    # default caps: 30 minutes, and what the type costs for them plus a billing minute
    assert probe.budget.max_hours == 0.5 and probe.budget.max_usd == math.ceil(20 * 31 / 60) / 100
    assert probe.model == validate_spec(USER).model  # the model is the user's


def test_on_a_gpu_type_the_budget_follows_the_memory_models_micro_batch():
    user = {**USER, "model": {"preset": "gpt2-small"}, "training": {"seq_len": 1024}}
    probe = probe_spec(validate_spec(user), "gpu_1x_a10", [A10], max_usd=3, max_minutes=20)
    cfg = make_config("gpt2-small")
    expected = priors.max_micro_batch(count_params(cfg), cfg, 1024, 24.0, "bf16")
    assert 1 <= expected < 16  # a 163M model on 24 GB: a few sequences
    assert probe.training.max_tokens == PROBE_STEPS * 1024 * expected
    assert (probe.budget.max_usd, probe.budget.max_hours) == (3, pytest.approx(20 / 60))


@pytest.mark.parametrize(
    ("change", "itype", "message"),
    [
        (
            {"model": {"pretrained": "gpt2"}, "training": {}, "compute": {"provider": "lambda", "instance_type": "x"}},
            "gpu_1x_a10",
            "is not trained, so there is no training",
        ),
        ({}, "auto", "a probe measures one named type"),
        ({}, "gpu_1x_h100_sxm5", "offers no type 'gpu_1x_h100_sxm5' (it has: cpu_4x_general, gpu_1x_a10)"),
    ],
)
def test_what_cannot_be_probed_is_refused(change, itype, message):
    with pytest.raises(InvalidSpecError, match=re.escape(message)):
        probe_spec(validate_spec({**USER, **change}), itype, [CPU4, A10])


# -- the API ------------------------------------------------------------------------------------
LOCAL = {
    "name": "local probe",
    "model": USER["model"],
    "training": {"seq_len": 64, "micro_batch": 4},
    "compute": {"provider": "local"},
}


def test_the_api_creates_a_probe_run_and_shows_it(client, factory):
    r = client.post("/api/v1/plans/probes", json={"spec": yaml.safe_dump(LOCAL), "instance_type": "local"})
    assert r.status_code == 201, r.text
    probe = r.json()
    run_id = probe["run"]["id"]
    assert probe["run"]["status"] == "pending" and probe["run"]["spec"]["training"]["micro_batch"] == "auto"
    assert (probe["instance_type"], probe["train_tokens"]) == ("local", PROBE_STEPS * 16 * 64)
    assert (probe["max_usd"], probe["max_hours"]) == (None, 0.5)  # `local` is free: no US$ cap
    assert (probe["record"], probe["instances"], probe["micro_batch"]) == (None, [], None)
    with factory() as s:
        assert s.get(Run, run_id).purpose == "probe"
    # the same run, read back; a user's run is not a probe
    assert client.get(f"/api/v1/plans/probes/{run_id}").json()["run"]["id"] == run_id
    other = submit_run(factory, **LOCAL)
    assert client.get(f"/api/v1/plans/probes/{other}").status_code == 404


def test_the_api_refuses_a_bad_probe_naming_why(client):
    r = client.post("/api/v1/plans/probes", json={"spec": yaml.safe_dump(LOCAL), "instance_type": "gpu_1x_a10"})
    assert r.status_code == 422 and "offers no type 'gpu_1x_a10' (it has: local)" in r.text
    r = client.post("/api/v1/plans/probes", json={"spec": "name: [", "instance_type": "local"})
    assert r.status_code == 422 and "not valid YAML" in r.text
    r = client.post("/api/v1/plans/probes", json={"spec": LOCAL, "instance_type": "local", "max_usd": 0})
    assert r.status_code == 422
