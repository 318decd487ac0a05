"""Training tokens/s and MFU of gpt2-small in bf16 on one GPU, with and without torch.compile.

    python benchmarks/trainer/gpu_mfu.py --out benchmarks/trainer/gpu_mfu.json    # a CUDA machine
    python benchmarks/trainer/gpu_mfu.py --cpu-smoke                              # code path on CPU

Each mode builds the model afresh, picks the micro-batch with the trainer's own search (largest
that fits, by catching out-of-memory) unless --micro-batch is given, and times full training steps
(bf16 autocast forward + backward, gradient clipping, fused AdamW) after warm-up steps, which
also absorb compilation. MFU = flops/token (trainer.model.GPT.flops_per_token: 6N + attention)
x tokens/s / the GPU's dense bf16 peak (trainer/gpus.json, or --peak-flops).
--cpu-smoke runs the same code on CPU with a 2-layer gpt2-tiny, to check the script, not the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer.config import TrainConfig
from trainer.metrics import peak_flops, peak_memory_bytes
from trainer.model import GPT, make_config
from trainer.runtime import autotune_micro_batch
from trainer.train import make_optimizer


def measure(args, compiled: bool, device: torch.device) -> dict:
    torch.manual_seed(0)
    overrides = {"dropout": 0.0}
    if args.cpu_smoke:
        overrides.update(n_layer=2, block_size=args.seq_len)
    model = GPT(make_config(args.model, overrides)).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    micro = args.micro_batch
    if micro == "auto":
        micro = autotune_micro_batch(model, args.seq_len, device, amp) if device.type == "cuda" else 2
    micro = int(micro)
    optimizer = make_optimizer(model, TrainConfig(data_dir="-", lr=4e-4), device)
    step_model = torch.compile(model) if compiled else model
    x = torch.randint(0, 50257, (micro, args.seq_len + 1), device=device)  # (B, T+1)
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()  # (B, T), (B, T)

    def step():
        with amp:
            _, loss = step_model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_compile = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t_compile
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    dt = time.perf_counter() - t0
    tok_s = args.steps * micro * args.seq_len / dt
    peak = peak_flops(device, "bf16", args.peak_flops)
    flops_tok = model.flops_per_token(args.seq_len)
    return {
        "compile": compiled,
        "micro_batch": micro,
        "seq_len": args.seq_len,
        "params": model.num_params(),
        "tokens_per_s": tok_s,
        "step_s": dt / args.steps,
        "warmup_s": warmup_s,
        "flops_per_token": flops_tok,
        "peak_flops": peak,
        "mfu": flops_tok * tok_s / peak if peak else None,
        "peak_mem_bytes": peak_memory_bytes(device),
        "last_loss": loss.item(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2-small")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--micro-batch", default="auto")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", choices=("both", "on", "off"), default="both")
    ap.add_argument("--peak-flops", type=float, default=None, help="override the GPU's bf16 peak")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU: checks the code path")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.cpu_smoke:
        device = torch.device("cpu")
        args.model, args.seq_len, args.steps, args.warmup = "gpt2-tiny", 64, 2, 1
    elif not torch.cuda.is_available():
        print("error: no CUDA device; run with --cpu-smoke to check the script on CPU", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda", 0)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.compile]
    results = []
    for compiled in modes:
        results.append(measure(args, compiled, device))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "model": args.model,
        "dtype": "bf16",
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
