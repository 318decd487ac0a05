"""The run spec rejects bad input with a message that names the field, before anything is stored."""

from pathlib import Path

import pytest

from orchestrator.spec import RunSpec, parse_spec_yaml
from orchestrator_helpers import spec_error

QUICKSTART = Path(__file__).resolve().parents[2] / "orchestrator" / "cli" / "quickstart.yaml"


def test_minimal_spec_gets_the_embedded_defaults():
    spec = parse_spec_yaml("name: first\n")
    assert spec.model.preset == "gpt2-tiny"
    assert spec.data.source == "builtin:corpus"
    assert spec.compute.provider == "local"
    assert spec.budget.max_usd is None


def test_malformed_yaml_says_where():
    err = spec_error("name: x\n  training: [\n")
    assert "not valid YAML" in str(err) and "line 2" in str(err)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_a_spec_must_be_a_mapping(text):
    assert "must be a YAML mapping" in str(spec_error(text))


@pytest.mark.parametrize(
    "text, field",
    [
        ("name: x\ntrainig: {lr: 0.1}\n", "trainig"),
        ("name: x\ntraining: {lrr: 0.1}\n", "training.lrr"),
        ("name: x\ncompute: {provider: local, gpus: 8}\n", "compute.gpus"),
    ],
)
def test_unknown_fields_are_named(text, field):
    err = spec_error(text)
    assert err.field == field
    assert str(err).startswith(f"{field}: ") and "Extra inputs are not permitted" in str(err)


@pytest.mark.parametrize(
    "text, field",
    [
        ("name: x\nbudget: {max_usd: -1}\n", "budget.max_usd"),
        ("name: x\nbudget: {max_hours: 0}\n", "budget.max_hours"),
        ("name: x\ntraining: {max_tokens: -5}\n", "training.max_tokens"),
        ("name: x\ntraining: {seq_len: 0}\n", "training.seq_len"),
        ("name: x\ntraining: {lr: -0.001}\n", "training.lr"),
        ("name: x\ntraining: {lr: 0.00005}\n", "training.min_lr"),  # the default min_lr is above it
        ("name: x\ntraining: {eval_every: -1}\n", "training.eval_every"),
        ("name: x\ndata: {val_fraction: 0.9}\n", "data.val_fraction"),
        ("name: x\ncompute: {provider: ssh, nodes: 0}\n", "compute.nodes"),
        ("name: x\nmodel: {preset: gpt5}\n", "model.preset"),
        ("name: ''\n", "name"),
        ("name: 'a;rm -rf /'\n", "name"),
        ("training: {lr: 0.1}\n", "name"),
    ],
)
def test_impossible_values_are_named(text, field):
    err = spec_error(text)
    assert err.field == field, str(err)
    assert field in str(err)


@pytest.mark.parametrize(
    "text, words",
    [
        ("name: x\ncompute: {provider: lambda}\n", "instance_type is required"),
        ("name: x\ncompute: {provider: local, nodes: 2}\n", "exactly 1 node"),
    ],
)
def test_inconsistent_compute_is_explained(text, words):
    err = spec_error(text)
    assert err.field == "compute" and words in str(err)


def test_training_uses_the_trainers_schema_and_may_skip_validation():
    spec = parse_spec_yaml("name: x\ntraining: {eval_every: 0, max_tokens: 2e6}\n")
    assert spec.training.eval_every == 0 and spec.training.max_tokens == 2_000_000
    assert spec.trainer_config(data_dir="/d")["eval_every"] == 0


def test_the_shipped_quickstart_spec_is_a_small_local_gpt2_tiny_run():
    spec = parse_spec_yaml(QUICKSTART.read_text())
    assert isinstance(spec, RunSpec)
    assert spec.model.preset == "gpt2-tiny"
    assert spec.data.source == "builtin:corpus"
    assert spec.compute.provider == "local"
    assert spec.evaluation.test_loss
    # small enough for a couple of minutes on 2 CPU cores
    assert isinstance(spec.training.max_tokens, int) and spec.training.max_tokens <= 500_000
