"""Training throughput and peak memory: trainer.model.GPT vs the book's plain GPTModel, on CPU,
with the two differences in attention measured one at a time.

    .venv/bin/python benchmarks/trainer/bench_cpu.py                   # defaults below, 15 rounds
    .venv/bin/python benchmarks/trainer/bench_cpu.py --rounds 21 --n-layer 4 --n-embd 256 --batch 8
    .venv/bin/python benchmarks/trainer/bench_cpu.py --threads 1      # CPU time without OpenMP's spinning

Four models at one config (vocab 50257, untied head, no QKV bias, dropout 0.1), each trained from
the same init seed with the same AdamW on the same random tokens:

    ours           trainer.model.GPT: fused QKV projection + F.scaled_dot_product_attention
    ours_no_sdpa   ours with SDPA replaced by the book's masked softmax attention
    ours_unfused   ours_no_sdpa with three Q/K/V projections instead of one: the book's attention
    book           the book's GPTModel (book_gpt.py): also its hand-written LayerNorm and GELU

so ours/ours_no_sdpa is what SDPA buys, ours_no_sdpa/ours_unfused what the fused QKV buys, and
ours_unfused/book what the rest (nn.LayerNorm, nn.GELU kernels) buys.

Throughput: one child process; every round trains each model one step on the round's batch, in
an order rotated from round to round, timing each step by wall clock (time.perf_counter) and by
the process's CPU time (time.process_time). A shared machine's load changes over minutes, so each
round's ratio (book's step time / a model's step time, i.e. the tokens/s ratio) is taken within
the round and the report gives their median, IQR and min-max; warm-up rounds are not counted.
Peak memory: each of ours and book trains a few steps in a child of its own (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMPLS = ("ours", "ours_no_sdpa", "ours_unfused", "book")


def _book_attention(q, k, v, dropout):
    """The book's attention on (B, nh, T, hs) tensors: scores, causal mask, softmax, dropout."""
    import torch

    t = q.size(-2)
    scores = q @ k.transpose(-2, -1)  # (B, nh, T, T)
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=q.device), diagonal=1)
    weights = torch.softmax(scores.masked_fill(mask, -torch.inf) / k.size(-1) ** 0.5, dim=-1)  # (B, nh, T, T)
    return dropout(weights) @ v  # (B, nh, T, hs)


def _patch_attention(model, fused: bool) -> None:
    """Swap each block's attention forward for the book's math (fused: one QKV projection)."""
    import torch.nn as nn

    for block in model.transformer.h:
        attn = block.attn
        attn.attn_dropout = nn.Dropout(attn.dropout)
        if not fused:  # three projections, initialised from the fused one's thirds
            c = attn.c_proj.in_features
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                lin = nn.Linear(c, c, bias=False)
                lin.weight.data.copy_(attn.c_attn.weight.data[i * c : (i + 1) * c])
                setattr(attn, name, lin)
            del attn.c_attn

        def forward(x, attn=attn, fused=fused):
            b, t, c = x.size()  # (B, T, C)
            if fused:
                q, k, v = attn.c_attn(x).split(c, dim=2)  # 3 x (B, T, C)
            else:
                q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)  # 3 x (B, T, C)
            q, k, v = (z.view(b, t, attn.n_head, c // attn.n_head).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
            y = _book_attention(q, k, v, attn.attn_dropout).transpose(1, 2).contiguous().view(b, t, c)  # (B, T, C)
            return attn.resid_dropout(attn.c_proj(y))  # (B, T, C)

        attn.forward = forward


def build(impl: str, args):
    """(model, loss_fn) for one implementation at the benchmark's config."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    if impl.startswith("ours"):
        from trainer.model import GPT, make_config

        overrides = dict(
            n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.seq_len, dropout=0.1
        )
        model = GPT(make_config("gpt2-tiny", overrides))
        if impl != "ours":
            _patch_attention(model, fused=impl == "ours_no_sdpa")
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


def _spread(values: list[float]) -> dict:
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": med, "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def child(mode: str, args) -> dict:
    """mode "time": every model, one step each per round; "mem-ours"/"mem-book": one model's peak RSS."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(__file__).parent))
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    impls = IMPLS if mode == "time" else (mode.removeprefix("mem-"),)
    runs = {}
    for impl in impls:
        model, loss_of = build(impl, args)
        opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
        runs[impl] = (model, loss_of, opt)
    if mode == "time":  # the patched variants compute what ours computes (same init seed)
        probe = torch.randint(0, 50257, (1, 16))
        with torch.no_grad():
            want = runs["ours"][0].eval()(probe)[0]
            for impl in ("ours_no_sdpa", "ours_unfused"):
                got = runs[impl][0].eval()(probe)[0]
                assert (got - want).abs().max().item() < 1e-4, f"{impl} does not compute ours"
    for model, _, _ in runs.values():
        model.train()
    rounds = args.warmup + (args.rounds if mode == "time" else args.mem_steps)
    gen = torch.Generator().manual_seed(0)
    wall = {impl: [] for impl in impls}
    cpu = {impl: [] for impl in impls}
    losses = {impl: [] for impl in impls}
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        batch = torch.randint(0, 50257, (args.batch, args.seq_len + 1), generator=gen)
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T), (B, T)
        order = impls[r % len(impls) :] + impls[: r % len(impls)]  # each model takes each place in turn
        for impl in order:
            model, loss_of, opt = runs[impl]
            w0, c0 = time.perf_counter(), time.process_time()
            loss = loss_of(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            w1, c1 = time.perf_counter(), time.process_time()
            if r >= args.warmup:
                wall[impl].append(w1 - w0)
                cpu[impl].append(c1 - c0)
            losses[impl].append(loss.item())
        load.append(os.getloadavg()[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = args.batch * args.seq_len
    out: dict = {"load_average_1min": {"min": min(load), "max": max(load), "mean": statistics.fmean(load)}}
    for impl in impls:
        out[impl] = {
            "params": sum(p.numel() for p in runs[impl][0].parameters()),
            "tokens_per_s_median_wall": tokens / statistics.median(wall[impl]),
            "tokens_per_s_median_cpu": tokens / statistics.median(cpu[impl]),
            "step_s_wall": wall[impl],
            "step_s_cpu": cpu[impl],
            "first_loss": losses[impl][0],
            "last_loss": losses[impl][-1],
            "peak_rss_bytes": peak,
            "peak_rss_over_start_bytes": peak - start_rss,
        }
    if mode == "time":  # per-round ratios: book's step time / the model's, in the same round
        out["ratios_vs_book"] = {
            impl: {
                clock: _spread([b / m for b, m in zip(times["book"], times[impl], strict=True)])
                for clock, times in (("wall", wall), ("cpu", cpu))
            }
            for impl in impls
            if impl != "book"
        }
        out["ratios_stepwise"] = {  # what each difference buys, round by round
            f"{a}/{b}": {
                clock: _spread([tb / ta for ta, tb in zip(times[a], times[b], strict=True)])
                for clock, times in (("wall", wall), ("cpu", cpu))
            }
            for a, b in (("ours", "ours_no_sdpa"), ("ours_no_sdpa", "ours_unfused"), ("ours_unfused", "book"))
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds (each model one step per round)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--mem-steps", type=int, default=4, help="steps of each memory child")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's; 1 keeps OpenMP spin out of CPU time)"
    )
    ap.add_argument("--child", choices=("time", "mem-ours", "mem-book"))
    args = ap.parse_args()
    if args.rounds < 4:
        ap.error("--rounds must be at least 4 (quartiles)")
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
        "command": " ".join([".venv/bin/python", "benchmarks/trainer/bench_cpu.py", *sys.argv[1:]]),
        "config": {k: v for k, v in vars(args).items() if k != "child"},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads or torch.get_num_threads()} threads",
        "load_average_1min": t["load_average_1min"],
        "params": {impl: t[impl]["params"] for impl in IMPLS},
        "ratios_vs_book": t["ratios_vs_book"],
        "ratios_stepwise": t["ratios_stepwise"],
        "runs": {impl: {k: v for k, v in t[impl].items() if not k.startswith("peak")} for impl in IMPLS},
        "memory": {
            "ours": {k: mo[k] for k in ("peak_rss_bytes", "peak_rss_over_start_bytes")},
            "book": {k: mb[k] for k in ("peak_rss_bytes", "peak_rss_over_start_bytes")},
            "peak_rss_ratio": mo["peak_rss_bytes"] / mb["peak_rss_bytes"],
            "peak_rss_over_start_ratio": mo["peak_rss_over_start_bytes"] / mb["peak_rss_over_start_bytes"],
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
