"""`training.recipe: book`: the seed user's setup (AdamW 4e-4 constant, weight decay 0.1 on every
weight, no warm-up, no clipping); our recipe stays the default and differs on each point."""

from __future__ import annotations

import json

import pytest
import torch

from trainer import config
from trainer.architecture import make_config
from trainer.model import GPT
from trainer.recipe import clip_and_step, make_optimizer, make_scaler
from trainer.train import main

CPU = torch.device("cpu")


def _tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(make_config("gpt2-tiny", {"n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 256}))


def _grad_norm(model: GPT) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()


@pytest.mark.parametrize("recipe", ["book", "ours"])
def test_the_books_optimizer_decays_every_weight_and_never_clips(recipe):
    cfg = config.from_dict({"data_dir": "/d", "recipe": recipe})
    model = _tiny()
    opt = make_optimizer(model, cfg, CPU)
    decays = {g["weight_decay"] for g in opt.param_groups}
    betas = {g["betas"] for g in opt.param_groups}
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e3)  # a huge gradient
    before = _grad_norm(model)
    clip_and_step(model, opt, make_scaler("fp32", CPU), cfg.grad_clip)
    if recipe == "book":  # AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
        assert (cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.grad_clip) == (4e-4, "constant", 0, 0.0)
        assert decays == {0.1} and betas == {(0.9, 0.999)}
        assert _grad_norm(model) == before  # not clipped
    else:  # biases and LayerNorm gains undecayed, GPT-2's betas, clipped to 1
        assert (cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.grad_clip) == (1e-3, "cosine", 10, 1.0)
        assert decays == {0.1, 0.0} and betas == {(0.9, 0.95)}
        assert abs(_grad_norm(model) - 1.0) < 1e-4


def test_a_book_run_trains_at_4e_4_every_step_in_fp32_on_cpu(tmp_path, tiny_config):
    # the tiny config's lr and warm-up are not the book's: set to the book's values (or left out)
    small = {"n_layer": 1, "n_embd": 32, "n_head": 2}
    cfg = tiny_config(
        recipe="book", lr=4e-4, warmup_steps=0, max_tokens=4 * 4 * 64, eval_every=0, model_overrides=small
    )
    assert main([str(cfg), "--run-dir", str(tmp_path / "run")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in lines if m["kind"] == "train"] == [4e-4] * 4
    start = next(m for m in lines if m["kind"] == "start")
    assert start["dtype"] == "fp32"  # fp16 + GradScaler is for GPUs
    resolved = json.loads((tmp_path / "run" / "config.resolved.json").read_text())
    assert (resolved["recipe"], resolved["grad_clip"], resolved["weight_decay"]) == ("book", 0.0, 0.1)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_000004" / "state.pt", weights_only=True)
    assert state["scaler"] is None
