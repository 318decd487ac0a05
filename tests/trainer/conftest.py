"""Shared fixtures for the trainer tests: the shipped corpus tokenised once, small configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """builtin:corpus prepared into shards (about 560K tokens), shared by the whole session."""
    from trainer.prepare import prepare

    out = tmp_path_factory.mktemp("corpus")
    prepare("builtin:corpus", out, val_fraction=0.05, test_fraction=0.05)
    return out


def _tiny_config(corpus: Path, **overrides) -> dict:
    """A 2-layer gpt2-tiny run that takes seconds on a CPU."""
    cfg = {
        "model": "gpt2-tiny",
        "model_overrides": {"n_layer": 2, "dropout": 0.1},
        "data_dir": str(corpus),
        "seq_len": 64,
        "micro_batch": 4,
        "grad_accum": 1,
        "lr": 2.0e-3,
        "min_lr": 2.0e-4,
        "warmup_steps": 2,
        "max_tokens": 8192,
        "log_every": 1,
        "eval_every": 8,
        "eval_tokens": 4096,
        "checkpoint_every": 4,
        "keep_last": 2,
        "seed": 1337,
    }
    cfg.update(overrides)
    return cfg


def _run_module(module: str, *args: str, nproc: int = 0, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m module args` (under torchrun with nproc processes when nproc > 0)."""
    cmd = [sys.executable]
    if nproc:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", module, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def write_tiny_config(corpus_dir):
    """write_tiny_config(path, **overrides) writes a YAML config for a seconds-long run."""

    def make(path: Path, **overrides) -> Path:
        path.write_text(yaml.safe_dump(_tiny_config(corpus_dir, **overrides)))
        return path

    return make


@pytest.fixture()
def tiny_config(write_tiny_config, tmp_path):
    """tiny_config(**overrides) -> path of a YAML config in this test's tmp_path."""
    return lambda name="config.yaml", **overrides: write_tiny_config(tmp_path / name, **overrides)


@pytest.fixture(scope="session")
def run_module():
    """run_module(module, *args, nproc=0) runs `python -m module` (under torchrun if nproc)."""
    return _run_module


@pytest.fixture()
def make_checkpoint():
    """make_checkpoint(run_dir, step, ...) saves a committed checkpoint of a 1-layer tiny model;
    `train`: the train config recorded with it (e.g. {"seq_len": 128})."""

    def make(
        run_dir: Path,
        step: int = 1,
        keep_last: int = 3,
        seed: int = 0,
        vocab_size: int = 50257,
        block_size: int = 64,
        train: dict | None = None,
    ) -> Path:
        import torch

        from trainer import checkpoint
        from trainer.model import GPT, make_config

        torch.manual_seed(seed)
        # a small vocab_size makes a checkpoint of a few hundred KB, for tests that never run text
        cfg = make_config("gpt2-tiny", {"n_layer": 1, "block_size": block_size, "vocab_size": vocab_size})
        model = GPT(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randint(0, vocab_size, (2, 64))
        model(x, x)[1].backward()
        opt.step()
        state = {
            "step": step,
            "tokens": step * 128,
            "data_offset": step * 128,
            "world_size": 1,
            "tokens_per_step": 128,
            "warmup_tokens": 0,
            "rng": [],
            "val_loss": None,
        }
        path, _ = checkpoint.save(
            run_dir,
            step,
            step * 128,
            model,
            opt,
            state,
            {"model": vars(cfg), "train": train or {}},
            {"step": step},
            keep_last,
        )
        make.last_model = model
        return path

    return make
