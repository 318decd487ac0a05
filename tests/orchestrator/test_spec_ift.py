"""The spec's IFT keys (evaluation.ift) and pretrained baselines (model.pretrained): defaults, and
the combinations that make no sense refused naming the field."""

import pytest

from orchestrator.comparisons import baseline_key, baseline_spec
from orchestrator.spec import BOOK_INSTRUCTION_DATA, RunSpec, parse_spec_yaml
from orchestrator_helpers import spec_error


def test_ift_is_off_by_default_and_defaults_to_the_books_data_and_settings():
    ift = parse_spec_yaml("name: x\n").evaluation.ift
    assert ift.enabled is False
    assert ift.data == BOOK_INSTRUCTION_DATA and ift.data.endswith("ch07/01_main-chapter-code/instruction-data.json")
    assert (ift.max_new_tokens, ift.patience, ift.limit_test) == (256, 1, None)


def test_ift_keys_are_read():
    spec = parse_spec_yaml(
        "name: x\nevaluation:\n  ift: {enabled: true, data: /data/alpaca.json, epochs_max: 2,"
        " patience: 2, max_new_tokens: 64, limit_test: 5, seed: 7, lr: 1.0e-4, batch_size: 4}\n"
    )
    ift = spec.evaluation.ift
    assert (
        ift.enabled,
        ift.data,
        ift.epochs_max,
        ift.patience,
        ift.max_new_tokens,
        ift.limit_test,
        ift.seed,
        ift.lr,
        ift.batch_size,
    ) == (True, "/data/alpaca.json", 2, 2, 64, 5, 7, 1e-4, 4)


@pytest.mark.parametrize(
    "text, field, words",
    [
        (
            "evaluation: {ift: {enabled: true, max_new_tokens: 257}}",
            "evaluation.ift.max_new_tokens",
            "less than or equal to 256",
        ),
        (
            "evaluation: {ift: {enabled: true, max_new_tokens: 0}}",
            "evaluation.ift.max_new_tokens",
            "greater than or equal to 1",
        ),
        ("evaluation: {ift: {limit_test: 0}}", "evaluation.ift.limit_test", "greater than 0"),
        ("evaluation: {ift: {epochs_max: 0}}", "evaluation.ift.epochs_max", "greater than 0"),
        ("evaluation: {ift: {data: ''}}", "evaluation.ift.data", "at least 1 character"),
        ("evaluation: {ift: {enabled: true, epochs: 3}}", "evaluation.ift.epochs", "Extra inputs"),
        ("evaluation: {test_loss: false, ift: {enabled: true}}", "evaluation", "ift.enabled needs test_loss: true"),
        ("model: {pretrained: gpt3}", "model.pretrained", "'gpt2' or 'gpt2-medium'"),
        ("model: {pretrained: gpt2, overrides: {n_layer: 2}}", "model", "leave out preset and overrides"),
        ("model: {pretrained: gpt2, preset: gpt2-small}", "model", "leave out preset and overrides"),
        ("model: {pretrained: gpt2}\ntraining: {max_tokens: 1000}", "training", "is not trained; leave training out"),
        ("model: {pretrained: gpt2-medium}\ncompute: {provider: ssh, nodes: 2}", "compute", "nodes must be 1"),
        ("model: {pretrained: gpt2}\nevaluation: {test_loss: false}", "evaluation", "test_loss must be true"),
    ],
)
def test_impossible_combinations_are_refused_naming_the_field(text, field, words):
    err = spec_error(f"name: x\n{text}\n")
    assert err.field == field
    assert str(err).startswith(f"{field}: ") and words in str(err)


def test_a_pretrained_spec_survives_the_round_trip_through_the_database():
    spec = parse_spec_yaml("name: b\nmodel: {pretrained: gpt2}\nevaluation: {ift: {enabled: true}}\n")
    again = RunSpec.model_validate(spec.model_dump(mode="json"))  # what the controller reads back
    assert again == spec and again.model.pretrained == "gpt2"


def test_a_baseline_is_evaluated_like_the_run_it_is_compared_with():
    run = parse_spec_yaml(
        "name: mine\nmodel: {preset: gpt2-small}\ndata: {source: hf:x/y, max_tokens: 1000000}\n"
        "training: {max_tokens: 50000}\ncompute: {provider: ssh, nodes: 2, procs_per_node: 8}\n"
        "budget: {max_usd: 3}\nevaluation: {test_max_tokens: 4096, ift: {enabled: true, limit_test: 20}}\n"
    )
    base = baseline_spec(run, "gpt2-medium")
    assert base.name == "baseline gpt2-medium" and base.model.pretrained == "gpt2-medium"
    assert baseline_key(base) == baseline_key(run)  # same data and evaluation: same test set and items
    assert (base.compute.provider, base.compute.nodes, base.budget.max_usd) == ("ssh", 1, 3)
    assert base.training == RunSpec(name="t").training  # not trained
