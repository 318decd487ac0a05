"""One training schema (trainer.schema) for the run spec and the train config: the same defaults,
the same rules and the same message for the same bad value on both sides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import InvalidSpecError
from orchestrator.spec import RunSpec, parse_spec_yaml
from trainer import config
from trainer.errors import ConfigError
from trainer.schema import TrainConfigFile, TrainingSettings
from trainer.train import main

REPO = Path(__file__).resolve().parents[2]


def spec_error(training: str) -> InvalidSpecError:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec_yaml(f"name: x\ntraining: {training}\n")
    return info.value


def test_the_run_spec_training_section_is_the_train_config_schema():
    assert RunSpec.model_fields["training"].annotation is TrainingSettings
    assert issubclass(TrainConfigFile, TrainingSettings)
    shared = set(TrainingSettings.model_fields)
    only_file = set(TrainConfigFile.model_fields) - shared
    assert only_file == {"model", "model_overrides", "data_dir", "device", "peak_flops", "artifact_uri"}
    # a config that leaves the training keys out trains with the run spec's defaults
    cfg = config.from_dict({"data_dir": "/d"})
    spec = RunSpec(name="x")
    assert {k: getattr(cfg, k) for k in shared} == spec.training.model_dump()
    assert (cfg.seq_len, cfg.lr, cfg.min_lr, cfg.max_tokens, cfg.eval_tokens) == (128, 1e-3, 1e-4, 500_000, 32_768)


def test_the_config_the_service_writes_is_one_the_trainer_reads():
    spec = parse_spec_yaml(
        "name: x\nmodel: {overrides: {n_layer: 2}}\n"
        "training: {seq_len: 64, lr: 4e-4, max_tokens: chinchilla, eval_every: 0}\n"
    )
    written = spec.trainer_config(data_dir="/w/data", artifact_uri="s3://b/p/runs/r/checkpoints")
    cfg = config.from_dict(written)
    assert cfg.to_dict() == {**TrainConfigFile().model_dump(), **written}
    assert cfg.model_overrides == {"n_layer": 2} and cfg.eval_every == 0 and cfg.lr == 4e-4
    assert "artifact_uri" not in spec.trainer_config(data_dir="/w/data")  # none: no key, as before
    book = parse_spec_yaml("name: x\ntraining: {recipe: book}\n").trainer_config(data_dir="/w/data")
    assert (config.from_dict(book).recipe, config.from_dict(book).grad_clip) == ("book", 0.0)


@pytest.mark.parametrize(
    "training, field, message",
    [
        # lr: a spec refused 0, the trainer allowed it: refused on both sides
        ("{lr: 0}", "lr", "Input should be greater than 0"),
        # min_lr <= lr: only the trainer checked it (a spec passed and the run failed on the node)
        ("{lr: 5e-5}", "min_lr", "0.0001 is above lr (5e-05): the schedule decays from lr down to min_lr"),
        ("{eval_tokens: 64, seq_len: 128}", "eval_tokens", "64 is below seq_len (128)"),
        ("{eval_tokens: 0, eval_every: 0}", "eval_tokens", "Input should be greater than 0"),
        ("{max_tokens: -5}", "max_tokens", 'Input should be a positive integer or "chinchilla"'),
        ("{micro_batch: lots}", "micro_batch", 'Input should be a positive integer or "auto"'),
        ("{max_tokens: 2.5}", "max_tokens", 'Input should be a positive integer or "chinchilla"'),
        ("{seed: true}", "seed", "Input should be a number, not true"),
        ("{schedule: linear}", "schedule", "Input should be 'cosine' or 'constant'"),
        ("{warmup_steps: -1}", "warmup_steps", "Input should be greater than or equal to 0"),
        # recipe book fixes its settings: another value is refused, never silently replaced
        ("{recipe: book, lr: 1e-3}", "lr", "recipe book trains with 0.0004, not 0.001"),
        ("{recipe: book, grad_clip: 1}", "grad_clip", "recipe book trains with 0.0, not 1.0"),
    ],
)
def test_a_bad_value_gets_the_same_line_from_the_spec_and_the_trainer(tmp_path, training, field, message):
    err = spec_error(training)
    assert err.field == f"training.{field}" and str(err).startswith(f"training.{field}: {message}")
    path = tmp_path / "c.yaml"
    path.write_text(f"data_dir: /d\n{training[1:-1].replace(', ', chr(10))}\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == str(err).removeprefix("training.")


def test_nan_is_refused_at_the_door_and_by_the_trainer(tmp_path):
    # the service's door refuses NaN anywhere in a spec before the schema sees it; the trainer,
    # reading its own config file, still refuses it by the schema
    err = spec_error("{lr: .nan}")
    assert err.field == "training.lr" and "nan is not a number a spec may hold" in str(err)
    path = tmp_path / "c.yaml"
    path.write_text("data_dir: /d\nlr: .nan\n")
    with pytest.raises(ConfigError, match="lr: Input should be a finite number"):
        config.load(path)


@pytest.mark.parametrize(
    "training, values",
    [
        ("{eval_every: 0}", {"eval_every": 0}),  # no validation during training: both sides now
        ("{max_tokens: 2e6, lr: 4e-4}", {"max_tokens": 2_000_000, "lr": 4e-4}),  # YAML 1.1 strings
        ("{max_tokens: 2_000_000, micro_batch: auto}", {"max_tokens": 2_000_000, "micro_batch": "auto"}),
        (
            "{max_tokens: chinchilla, min_lr: 0, compile: true}",
            {"max_tokens": "chinchilla", "min_lr": 0.0, "compile": True},
        ),
        (
            "{recipe: book}",
            {"recipe": "book", "lr": 4e-4, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.1},
        ),
    ],
)
def test_good_values_read_the_same_on_both_sides(tmp_path, training, values):
    spec = parse_spec_yaml(f"name: x\ntraining: {training}\n")
    path = tmp_path / "c.yaml"
    path.write_text(f"data_dir: /d\n{training[1:-1].replace(', ', chr(10))}\n")
    cfg = config.load(path)
    for key, value in values.items():
        assert getattr(spec.training, key) == value == getattr(cfg, key), key


def test_unknown_keys_are_named_on_both_sides():
    assert spec_error("{learning_rate: 0.1}").field == "training.learning_rate"
    with pytest.raises(ConfigError, match=r"^unknown config key 'learning_rate'$"):
        config.from_dict({"data_dir": "/d", "learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"^unknown config key 'devise' \(did you mean 'device'\?\)$"):
        config.from_dict({"data_dir": "/d", "devise": "cpu"})
    # the trainer-only keys are not run spec keys
    assert spec_error("{device: cpu}").field == "training.device"


def test_trainer_only_checks_and_fields():
    with pytest.raises(ConfigError, match="^data_dir is required"):
        config.from_dict({})
    with pytest.raises(ConfigError, match="^model: unknown preset 'gpt5'"):
        config.from_dict({"data_dir": "/d", "model": "gpt5"})
    with pytest.raises(ConfigError, match="^peak_flops: Input should be greater than 0$"):
        config.from_dict({"data_dir": "/d", "peak_flops": 0})
    with pytest.raises(ConfigError, match="^device: Input should be 'auto', 'cpu' or 'cuda'$"):
        config.from_dict({"data_dir": "/d", "device": "tpu"})
    with pytest.raises(ConfigError, match="^artifact_uri: "):
        config.from_dict({"data_dir": "/d", "artifact_uri": "ftp://x/y"})
    assert config.from_dict({"data_dir": "/d", "artifact_uri": ""}).artifact_uri is None
    cfg = config.from_dict({"data_dir": "/d", "peak_flops": "1e15"})
    assert cfg.peak_flops == 1e15 and cfg.target_tokens() == 500_000
    with pytest.raises(AttributeError, match="read-only"):
        cfg.lr = 1.0


def test_a_bad_value_from_the_command_line_is_one_line_and_exit_2(tmp_path, tiny_config, capsys):
    rc = main([str(tiny_config(lr=2e-4)), "--run-dir", str(tmp_path / "r"), "--set", "min_lr=1e-3"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: min_lr: 0.001 is above lr (0.0002): the schedule decays from lr down to min_lr"
    ]


def test_the_schema_and_the_spec_do_not_import_torch():
    code = "import sys, trainer.schema, orchestrator.spec; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
