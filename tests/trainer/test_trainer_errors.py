"""Bad input gets one clear line naming the problem, exit code 2, and no traceback."""

from __future__ import annotations

import json

import pytest

from trainer import config
from trainer.errors import ConfigError
from trainer.runtime import find_micro_batch
from trainer.train import main


def run_train(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_unknown_config_key_is_named(tmp_path, tiny_config, capsys):
    cfg = tiny_config(learning_rate=0.1)
    rc, err = run_train([str(cfg), "--run-dir", str(tmp_path / "run")], capsys)
    assert rc == 2
    assert err == ["error: unknown config key 'learning_rate'"]
    failed = json.loads((tmp_path / "run" / "FAILED").read_text())
    assert failed["kind"] == "ConfigError" and "learning_rate" in failed["error"]


def test_typo_gets_a_suggestion_and_overrides_are_checked_too(tiny_config):
    with pytest.raises(ConfigError, match=r"unknown config key 'warmup_step' \(did you mean 'warmup_steps'\?\)"):
        config.load(tiny_config(warmup_step=3))
    with pytest.raises(ConfigError, match="unknown key model_overrides.n_layers"):
        config.load(tiny_config(), ["model_overrides.n_layers=3"])
    with pytest.raises(ConfigError, match="unknown config key in --set 'sed'"):
        config.load(tiny_config(), ["sed=1"])
    with pytest.raises(ConfigError, match="^schedule: Input should be 'cosine' or 'constant'$"):
        config.load(tiny_config(schedule="linear"))
    with pytest.raises(ConfigError, match='^micro_batch: Input should be a positive integer or "auto"$'):
        config.load(tiny_config(), ["micro_batch=lots"])


def test_overrides_and_chinchilla_resolve(tiny_config):
    cfg = config.load(tiny_config(), ["lr=3e-4", "model_overrides.n_layer=3", "max_tokens=chinchilla"])
    assert cfg.lr == 3e-4 and cfg.model_overrides["n_layer"] == 3
    # 20 tokens per parameter of the model the config describes
    from trainer.model import GPT

    assert cfg.target_tokens() == 20 * GPT(cfg.model_config()).num_params()
    small = config.load(tiny_config(model="gpt2-small", model_overrides={}, max_tokens="chinchilla", seq_len=1024))
    assert small.target_tokens() == 3_260_190_720  # the users' budget for the 163M model


def test_token_budget_larger_than_the_data_is_refused_at_start(tmp_path, tiny_config, corpus_dir, capsys):
    from trainer.data import load_manifest

    available = load_manifest(corpus_dir)["splits"]["train"]["tokens"] - 1
    rc, err = run_train([str(tiny_config(max_tokens=10_000_000)), "--run-dir", str(tmp_path / "r")], capsys)
    assert rc == 2
    assert err == [
        f"error: max_tokens=10000000 (10,000,000 tokens) is more than the {available:,} "
        f"training tokens available in {corpus_dir} (one epoch, no repeats); lower "
        f"max_tokens or prepare more data"
    ]
    rc, err = run_train([str(tiny_config(max_tokens="chinchilla")), "--run-dir", str(tmp_path / "c")], capsys)
    assert rc == 2 and "max_tokens=chinchilla" in err[-1] and f"{available:,} training tokens" in err[-1]


def test_missing_data_is_clear(tmp_path, tiny_config, capsys):
    rc, err = run_train(
        [str(tiny_config(data_dir=str(tmp_path / "nowhere"))), "--run-dir", str(tmp_path / "r")], capsys
    )
    assert rc == 2 and err == [
        f"error: {tmp_path / 'nowhere'} holds no prepared data (manifest.json "
        f"is missing); run python -m trainer.prepare first"
    ]


def test_cli_error_has_no_traceback(tmp_path, tiny_config, run_module):
    r = run_module("trainer.train", str(tiny_config(seq_len=4096)), "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: seq_len 4096 exceeds the model's context of 256 (set model_overrides.block_size)"
    )


@pytest.mark.parametrize("capacity", [1, 2, 3, 7, 8, 27, 64, 100, 512])
def test_micro_batch_search_finds_the_largest_that_fits(capacity):
    tried = []

    def fits(b):
        tried.append(b)
        return b <= capacity

    assert find_micro_batch(fits, limit=512) == capacity
    assert len(tried) <= 2 * 10 + 1  # doubling then bisection: logarithmic


def test_micro_batch_search_when_nothing_fits():
    with pytest.raises(ConfigError, match="not even a micro-batch of 1 fits"):
        find_micro_batch(lambda _b: False)
