"""Where the trainer runs: process group and device, per-rank RNG streams, micro-batch search.

A process group exists only under torchrun (RANK in the environment): NCCL on CUDA, gloo on CPU.
Each rank has its own RNG streams (dropout differs across ranks); their states are saved in every
checkpoint and restored on resume, which is what makes a resumed run's dropout masks, and so its
losses, identical to an uninterrupted run's.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist

from trainer.errors import ConfigError
from trainer.model import GPT
from trainer.schema import AUTO_MICRO_BATCH_LIMIT, AUTO_MICRO_BATCH_LIMIT_CPU


def init_distributed(device_pref: str) -> tuple[int, int, int, torch.device]:
    """(rank, local_rank, world, device); a process group only under torchrun."""
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is available")
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if "RANK" in os.environ:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return rank, local_rank, world, device


def all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)  # (n,)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(s["cuda"], device)
    n = s["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Per-rank streams (dropout differs across ranks), derived from (seed, rank, step)."""
    s = seed + 7919 * (rank + 1) + 104729 * step
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def find_micro_batch(fits, limit: int = AUTO_MICRO_BATCH_LIMIT) -> int:
    """Largest micro-batch b <= limit with fits(b) True, assuming fits is monotone.

    Doubles until the first failure, then bisects between the last success and it.
    """
    if not fits(1):
        raise ConfigError("micro_batch: auto found that not even a micro-batch of 1 fits in memory")
    good, bad = 1, None
    while bad is None and good < limit:
        trial = min(good * 2, limit)
        if fits(trial):
            good = trial
        else:
            bad = trial
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: torch's OutOfMemoryError (CUDA, and other devices in recent
    torch), Python's MemoryError (a CPU allocation), or a RuntimeError that says so (what CPU
    kernels and older torch versions raise)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def autotune_micro_batch(model: GPT, seq_len: int, device: torch.device, amp) -> int:
    """Largest micro-batch whose forward + backward fits on this device.

    On CUDA: up to AUTO_MICRO_BATCH_LIMIT. While probing it holds 3 extra copies of the
    parameters: AdamW's two moments and DDP's gradient buckets, which a real step allocates but
    a bare forward/backward does not. On CPU: the same search, up to AUTO_MICRO_BATCH_LIMIT_CPU
    (trainer.schema says why so few).
    """
    if device.type != "cuda":
        return _autotune_cpu(model, seq_len, amp)
    reserve = [torch.empty_like(p) for p in model.parameters() for _ in range(3)]

    def fits(b: int) -> bool:
        x = torch.randint(0, model.config.vocab_size, (b, seq_len), device=device)  # (b, T)
        try:
            with amp:
                _, loss = model(x, x)
            loss.backward()
            torch.cuda.synchronize(device)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            model.zero_grad(set_to_none=True)
            del x
            torch.cuda.empty_cache()

    best = find_micro_batch(fits)
    del reserve
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return best


def _autotune_cpu(model: GPT, seq_len: int, amp) -> int:
    # its own generator: the search must not move the global RNG streams the run is seeded with
    gen = torch.Generator().manual_seed(0)

    def fits(b: int) -> bool:
        try:
            x = torch.randint(0, model.config.vocab_size, (b, seq_len), generator=gen)  # (b, T)
            with amp:
                _, loss = model(x, x)
            loss.backward()
            return True
        except Exception as exc:  # only an allocation failure means "does not fit"
            if is_out_of_memory(exc):
                return False
            raise
        finally:
            model.zero_grad(set_to_none=True)

    return find_micro_batch(fits, limit=AUTO_MICRO_BATCH_LIMIT_CPU)
