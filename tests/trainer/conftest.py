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


def _tiny_config(data_dir: Path, **overrides) -> dict:
    """A 2-layer gpt2-tiny run that takes seconds on a CPU."""
    cfg = {
        "model": "gpt2-tiny",
        "model_overrides": {"n_layer": 2, "dropout": 0.1},
        "data_dir": str(data_dir),
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
