"""Training throughput and peak memory: trainer.model.GPT vs the book's plain GPTModel, on CPU.

    .venv/bin/python benchmarks/trainer/bench_cpu.py                       # defaults below
    .venv/bin/python benchmarks/trainer/bench_cpu.py --n-layer 4 --n-embd 256 --batch 8 --seq-len 256

Same config (vocab 50257, untied head, no QKV bias, dropout 0.1), same batch, same AdamW, same
random tokens. Throughput: one child process trains both models with their steps interleaved
(ours, book, book, ours, ...), so a shared machine's changing load hits both alike; warm-up steps
are not counted. Peak memory: each model trains in a child of its own, so its peak RSS is its
own. The parent prints one JSON object with both results and the ratios (ours / book).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def build(impl: str, args):
    """(model, loss_fn) for one implementation at the benchmark's config."""
    import torch.nn.functional as F

    if impl == "ours":
        from trainer.model import GPT, make_config

        model = GPT(
            make_config(
                "gpt2-tiny",
                {
                    "n_layer": args.n_layer,
                    "n_head": args.n_head,
                    "n_embd": args.n_embd,
                    "block_size": args.seq_len,
                    "dropout": 0.1,
                },
            )
        )
        return model, lambda x, y: model(x, y)[1]
    from book_gpt import GPTModel

    model = GPTModel(
        {
            "vocab_size": 50257,
            "context_length": args.seq_len,
            "emb_dim": args.n_embd,
            "n_heads": args.n_head,
            "n_layers": args.n_layer,
            "drop_rate": 0.1,
            "qkv_bias": False,
        }
    )
    return model, lambda x, y: F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def child(mode: str, args) -> dict:
    """mode "time": both models, steps interleaved; "mem-ours"/"mem-book": one model's peak RSS."""
    import torch

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(__file__).parent))
    torch.manual_seed(0)
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    impls = ("ours", "book") if mode == "time" else (mode.removeprefix("mem-"),)
    runs = {}
    for impl in impls:
        model, loss_of = build(impl, args)
        opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
        model.train()
        runs[impl] = (model, loss_of, opt)
    data = torch.randint(0, 50257, (args.warmup + args.steps, args.batch, args.seq_len + 1))
    spent = {impl: 0.0 for impl in impls}
    losses = {impl: [] for impl in impls}
    for i in range(args.warmup + args.steps):
        # alternate who goes first, so drift in the machine's load hits both alike
        order = impls if i % 2 == 0 else impls[::-1]
        for impl in order:
            model, loss_of, opt = runs[impl]
            x, y = data[i, :, :-1], data[i, :, 1:]  # (B, T), (B, T)
            t0 = time.perf_counter()
            loss = loss_of(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= args.warmup:
                spent[impl] += time.perf_counter() - t0
            losses[impl].append(loss.item())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = args.steps * args.batch * args.seq_len
    return {
        impl: {
            "params": sum(p.numel() for p in runs[impl][0].parameters()),
            "tokens_per_s": tokens / spent[impl],
            "step_s": spent[impl] / args.steps,
            "first_loss": losses[impl][0],
            "last_loss": losses[impl][-1],
            "peak_rss_bytes": peak,
            "peak_rss_over_start_bytes": peak - start_rss,
        }
        for impl in impls
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--child", choices=("time", "mem-ours", "mem-book"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0
    results = {}
    for mode in ("time", "mem-ours", "mem-book"):  # one after the other: they share the cores
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, *sys.argv[1:]], capture_output=True, text=True, check=True
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    import torch

    t, mo, mb = results["time"], results["mem-ours"]["ours"], results["mem-book"]["book"]
    report = {
        "config": {k: v for k, v in vars(args).items() if k != "child"},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}",
        "params": t["ours"]["params"],
        "ours": {
            "tokens_per_s": t["ours"]["tokens_per_s"],
            "step_s": t["ours"]["step_s"],
            "peak_rss_bytes": mo["peak_rss_bytes"],
            "peak_rss_over_start_bytes": mo["peak_rss_over_start_bytes"],
            "first_loss": t["ours"]["first_loss"],
            "last_loss": t["ours"]["last_loss"],
        },
        "book": {
            "tokens_per_s": t["book"]["tokens_per_s"],
            "step_s": t["book"]["step_s"],
            "peak_rss_bytes": mb["peak_rss_bytes"],
            "peak_rss_over_start_bytes": mb["peak_rss_over_start_bytes"],
            "first_loss": t["book"]["first_loss"],
            "last_loss": t["book"]["last_loss"],
        },
        "tokens_per_s_ratio": t["ours"]["tokens_per_s"] / t["book"]["tokens_per_s"],
        "peak_rss_ratio": mo["peak_rss_bytes"] / mb["peak_rss_bytes"],
        "peak_rss_over_start_ratio": mo["peak_rss_over_start_bytes"] / mb["peak_rss_over_start_bytes"],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
