"""trainer.architecture: the model's arithmetic without torch, equal to the built model's."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from trainer.architecture import count_params, flops_per_token, make_config
from trainer.model import GPT


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("gpt2-small", {}),
        ("gpt2-small", {"tie_weights": True}),
        ("gpt2-medium", {"qkv_bias": True, "tie_weights": True}),
        ("gpt2-tiny", {"n_layer": 2, "block_size": 64}),
    ],
)
def test_the_arithmetic_matches_the_built_model(preset, overrides):
    cfg = make_config(preset, overrides)
    with torch.device("meta"):  # no memory for the weights
        model = GPT(cfg)
    assert count_params(cfg) == model.num_params()
    for seq_len in (64, cfg.block_size):
        assert flops_per_token(cfg, seq_len) == model.flops_per_token(seq_len)


def test_it_imports_without_torch():
    code = "import sys, trainer.architecture, trainer.gpus; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
