"""`micro_batch: auto` on CPU: the same search as on CUDA (double, then bisect, catching
out-of-memory errors), up to AUTO_MICRO_BATCH_LIMIT_CPU; a probe on a CPU node runs it."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.architecture import make_config
from trainer.model import GPT
from trainer.runtime import autotune_micro_batch, is_out_of_memory
from trainer.schema import AUTO_MICRO_BATCH_LIMIT_CPU
from trainer.train import main

CPU = torch.device("cpu")
NO_AMP = torch.autocast("cpu", enabled=False)


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(make_config("gpt2-tiny", {"n_layer": 1, "n_embd": 32, "n_head": 2}))


class Capped(torch.nn.Module):
    """The model, but a batch above `cap` raises `error`, as an allocation that fails would."""

    def __init__(self, model: GPT, cap: int, error: BaseException):
        super().__init__()
        self.model, self.config, self.cap, self.error, self.tried = model, model.config, cap, error, []

    def forward(self, x, y):
        self.tried.append(x.shape[0])
        if x.shape[0] > self.cap:
            raise self.error
        return self.model(x, y)


def test_cpu_search_stops_at_the_cpu_limit_and_leaves_no_gradients_or_rng_moved():
    model = tiny_model()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert autotune_micro_batch(model, 16, CPU, NO_AMP) == AUTO_MICRO_BATCH_LIMIT_CPU == 16
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), before)  # the search draws from its own generator


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB (out of memory)"),
        MemoryError(),
        torch.OutOfMemoryError("CPU out of memory"),
    ],
    ids=["runtime-error", "memory-error", "torch-oom"],
)
def test_cpu_search_finds_the_largest_that_fits_catching_every_kind_of_oom(error):
    capped = Capped(tiny_model(), 5, error)
    assert autotune_micro_batch(capped, 16, CPU, NO_AMP) == 5
    assert capped.tried == [1, 2, 4, 8, 6, 5]  # doubling, then bisection between 4 and 8


def test_any_other_error_is_not_taken_for_a_full_memory():
    capped = Capped(tiny_model(), 2, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        autotune_micro_batch(capped, 16, CPU, NO_AMP)
    assert not is_out_of_memory(ValueError("out of memory"))  # only allocation errors


def test_a_cpu_run_with_auto_trains_at_the_found_micro_batch_and_says_so(tmp_path, tiny_config):
    cfg = tiny_config(micro_batch="auto", device="cpu", max_tokens=2048, eval_every=0, checkpoint_every=100)
    assert main([str(cfg), "--run-dir", str(tmp_path / "run")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    start = next(m for m in lines if m["kind"] == "start")
    # 16 sequences of 64 tokens per step: 2048 tokens are 2 steps
    assert (start["micro_batch"], start["tokens_per_step"], start["total_steps"]) == (16, 1024, 2)
    assert start["flops_per_token"] > 0 and start["peak_flops"] is None  # no MFU on a CPU
    resolved = json.loads((tmp_path / "run" / "config.resolved.json").read_text())
    assert resolved["micro_batch"] == 16
