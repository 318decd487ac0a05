"""What a run reports: metrics.jsonl, heartbeat.json, a progress line on stderr. Rank 0 only.

metrics.jsonl gets one JSON object per line, appended and flushed line by line, so a reader that
follows the file by byte offset sees whole lines (and ignores a trailing partial one). Every line
has "kind" and "time" (unix seconds). heartbeat.json is rewritten atomically every few seconds by
a background thread, so a reader can tell a live run from a hung or dead one even between log steps.

Metrics.log is thread-safe: the checkpoint upload thread (trainer.upload) writes its lines through
the same writer as the training loop, each line whole, and a line logged after close() is dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

import torch

from trainer.gpus import gpu_for


def peak_flops(device: torch.device, dtype: str, override: float | None) -> float | None:
    """Peak FLOP/s of one device for MFU, or None when unknown (CPU unless configured)."""
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    gpu = gpu_for(torch.cuda.get_device_name(device))  # trainer/gpus.json: the one GPU table
    if gpu is None:
        return None
    # fp16 tensor cores run at the bf16 rate; fp32 (TF32) at half of it
    return gpu.peak_bf16_flops if dtype in ("bf16", "fp16") else gpu.peak_bf16_flops / 2


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated on CUDA; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the whole new one, never a half-written one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: object) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


class Metrics:
    """Appends metric lines, keeps the heartbeat fresh, prints progress. Inactive off rank 0."""

    def __init__(self, run_dir: Path, active: bool, heartbeat_every: float = 5.0):
        self.active = active
        self.run_dir = run_dir
        self.step = 0
        metrics_path = run_dir / "metrics.jsonl"
        self._f = open(metrics_path, "a", encoding="utf-8") if active else None  # noqa: SIM115 - close() closes it
        self._lock = threading.Lock()  # log() is called from the training loop and the upload thread
        self._stop = threading.Event()
        self._thread = None
        if active:
            self._beat()
            self._thread = threading.Thread(
                target=self._beat_loop, args=(heartbeat_every,), daemon=True, name="heartbeat"
            )
            self._thread.start()

    def log(self, kind: str, **fields) -> None:
        if not self.active:
            return
        line = json.dumps({"kind": kind, "time": round(time.time(), 3), **fields})
        with self._lock:
            if self.active:  # not closed meanwhile by another thread
                self._f.write(line + "\n")
                self._f.flush()

    def progress(self, text: str) -> None:
        if self.active:
            print(text, file=sys.stderr, flush=True)

    def _beat(self) -> None:
        write_atomic(
            self.run_dir / "heartbeat.json",
            json.dumps({"time": round(time.time(), 3), "step": self.step, "pid": os.getpid()}),
        )

    def _beat_loop(self, every: float) -> None:
        while not self._stop.wait(every):
            # a full disk must not kill training from a side thread; the next beat retries
            with contextlib.suppress(OSError):
                self._beat()

    def close(self) -> None:
        if not self.active:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._beat()
        with self._lock:
            self._f.close()
            self.active = False


def format_progress(step: int, steps: int, loss: float, lr: float, tok_s: float, mfu: float | None, eta: float) -> str:
    parts = [f"step {step}/{steps}", f"loss {loss:.4f}", f"lr {lr:.2e}", f"{tok_s:,.0f} tok/s"]
    if mfu is not None:
        parts.append(f"mfu {100 * mfu:.1f}%")
    parts.append(f"eta {int(eta // 60)}m{int(eta % 60):02d}s")
    return " | ".join(parts)
