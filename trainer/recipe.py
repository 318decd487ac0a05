"""The optimizer side of the two training recipes (`recipe` in the train config, trainer.schema).

    ours (default)  AdamW betas (0.9, 0.95), weight decay on matrices only (biases and LayerNorm
                    gains undecayed, as GPT-2 / nanoGPT), warm-up then cosine (or constant),
                    gradients clipped to grad_clip, bf16 autocast on a GPU
    book            the seed user's setup: AdamW with torch's default betas (0.9, 0.999) and
                    weight decay 0.1 on every parameter, lr 4e-4 constant, no warm-up, no
                    clipping, fp16 autocast with a GradScaler on a GPU (fp32, no scaler, on a CPU)

The schema fixes the book's lr, schedule, warm-up, weight decay and clipping (BOOK_RECIPE), so the
schedule (trainer.train.lr_at) and the clipping test (grad_clip > 0) need no recipe of their own;
what is left here is the one thing a config value cannot say: how the optimizer is built, and
the fp16 GradScaler.
"""

from __future__ import annotations

import contextlib

import torch

from trainer.config import TrainConfig
from trainer.model import GPT


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    if cfg.recipe == "book":  # torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    # decay matrices only; biases and LayerNorm gains stay undecayed (as in GPT-2 / nanoGPT)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def make_scaler(dtype: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (its gradients underflow otherwise); bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if dtype == "fp16" else None


def autocast(dtype: str, device: torch.device):
    """The forward passes' autocast for a resolved dtype (a no-op for fp32)."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def clip_and_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, grad_clip: float
) -> None:
    """Clip the gradients' global norm to grad_clip (0: leave them as they are), then step. With
    a scaler the gradients are unscaled before clipping, and a step with inf/NaN is skipped."""
    if scaler is not None and grad_clip > 0:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is None:
        optimizer.step()
        return
    scaler.step(optimizer)
    scaler.update()
