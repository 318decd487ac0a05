"""Data preparation throughput: `trainer.prepare` at 1 and 2 worker processes against tiktoken's
own `encode_ordinary_batch` on the same text, in one run.

    .venv/bin/python benchmarks/trainer/bench_prepare.py > benchmarks/trainer/bench_prepare.result.json
    .venv/bin/python benchmarks/trainer/bench_prepare.py --rounds 11 --copies 8 --before 19b7aa3

The text: the shipped corpus (builtin:corpus: English prose) repeated --copies times, shuffled by
document with a fixed seed, in one parquet file with a `text` column and row groups of 256 rows
(the shape of FineWeb's files). Every round runs each of these once, in an order rotated from
round to round, so a shared machine's changing load hits all of them alike:

    tiktoken_1t   enc.encode_ordinary_batch(texts, num_threads=1), the texts already in memory:
                  tiktoken's own rate on one core
    tiktoken_2t   the same with num_threads=2
    prepare_1     trainer.prepare(the parquet file, workers=1): read, encode, deal to the splits,
                  write the shards and the manifest, in one process
    prepare_2     the same with workers=2
    before        (with --before REV) trainer/prepare.py as of git revision REV, the same call

Each is timed by wall clock and by CPU time (this process's plus its finished children's).
Rates are text tokens (without the <|endoftext|> after each document) per second. The report
gives, over the rounds after a warm-up round, the median and min-max of each rate and of the
ratios taken within a round:

    per_core_vs_tiktoken    prepare_1 / tiktoken_1t          goal >= 0.9
    scaling_1_to_2          prepare_2 / prepare_1 (wall)     goal >= 1.8
    prepare_2_vs_tiktoken_2t
    scaling_1_to_2_cpu_estimate   prepare_1's CPU time / max(prepare_2's main process CPU time,
                            its workers' CPU time / 2): what an idle machine would show. On a busy
                            Linux machine with sched_autogroup on, a session's processes share one
                            CPU share, so a second worker gains little wall time there.

and the load average before and after, since the machine may be shared. The projection for 10B
tokens on a 64-core node is on paper: 63 workers at prepare_1's tokens per CPU second (one core
left to the main process), capped by the main process: its tokens per CPU second in prepare_2
(everything it does there), and what it can deal to the splits and write alone, measured on
FineWeb-shaped documents (synthetic token ids, lengths exponentially
distributed around FineWeb sample-10BT's mean of about 670 tokens; the shipped corpus's documents
are twice as long, which would flatter the per-document work).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _cpu() -> tuple[float, float]:
    """(this process's CPU seconds, its finished children's)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), kids.ru_utime + kids.ru_stime


def _source(folder: Path, copies: int) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer import corpus

    docs = list(corpus.documents()) * copies
    random.Random(0).shuffle(docs)
    pq.write_table(pa.table({"text": docs}), folder / "text.parquet", row_group_size=256)
    return docs


def _load_before(rev: str, scratch: Path):
    """trainer/prepare.py as of git revision `rev`, as a module of its own."""
    code = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:trainer/prepare.py"], capture_output=True, text=True, check=True
    ).stdout
    path = scratch / "prepare_before.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("prepare_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runners(src: Path, texts: list[str], scratch: Path, before) -> dict:
    from trainer import prepare, tokenizer

    enc = tokenizer.get_encoding()
    out = scratch / "out"

    def prep(fn, **kw):
        def run():
            shutil.rmtree(out, ignore_errors=True)
            return fn(str(src), out, **kw)["documents"]

        return run

    runners = {
        "tiktoken_1t": lambda: len(enc.encode_ordinary_batch(texts, num_threads=1)),
        "tiktoken_2t": lambda: len(enc.encode_ordinary_batch(texts, num_threads=2)),
        "prepare_1": prep(prepare.prepare, workers=1),
        "prepare_2": prep(prepare.prepare, workers=2),
    }
    if before is not None:
        runners["before"] = prep(before.prepare)
    return runners


def _main_process_rate(scratch: Path, tokens: int = 20_000_000, mean_doc: float = 670.0) -> float:
    """Tokens per CPU second the main process deals and writes (prepare's SplitDealer and shard
    writers, 100M-token shards), fed pieces of 1,500 already encoded FineWeb-shaped documents."""
    import numpy as np

    from trainer.data import SPLITS, ShardWriter
    from trainer.encode_pool import Encoded
    from trainer.prepare import SplitDealer

    rng = np.random.default_rng(0)
    batches = []
    for _ in range(max(1, int(tokens / mean_doc / 1500))):
        lengths = np.maximum(1, rng.exponential(mean_doc, 1500)).astype(np.int64)
        ids = rng.integers(0, 50256, int(lengths.sum()), dtype=np.uint16)
        batches.append(Encoded(ids, lengths, lengths * 4, 0.0))
    out = scratch / "deal"
    out.mkdir()
    writers = [ShardWriter(out, s, 100_000_000) for s in SPLITS]
    dealer = SplitDealer((0.9, 0.05, 0.05), writers, None)
    t0 = time.process_time()
    for b in batches:
        dealer.take(b)
    for w in writers:
        w.close()
    took = time.process_time() - t0
    shutil.rmtree(out)
    return dealer.total / took


def _autogroup() -> str | None:
    """/proc/sys/kernel/sched_autogroup_enabled ("1": this session's processes share one CPU share)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return None


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (after one warm-up round)")
    ap.add_argument("--copies", type=int, default=4, help="copies of the shipped corpus in the text")
    ap.add_argument(
        "--before", default=None, metavar="REV", help="also time trainer/prepare.py as of this git revision"
    )
    args = ap.parse_args()

    from trainer import tokenizer

    load_start = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        texts = _source(scratch, args.copies)
        tokens = sum(len(ids) for ids in tokenizer.get_encoding().encode_ordinary_batch(texts))
        before = _load_before(args.before, scratch) if args.before else None
        runners = _runners(scratch / "text.parquet", texts, scratch, before)
        names = list(runners)
        rounds = []
        for r in range(args.rounds + 1):
            order = names[r % len(names) :] + names[: r % len(names)]
            timing = {}
            for name in order:
                cpu0, wall0 = _cpu(), time.perf_counter()
                docs = runners[name]()
                wall, cpu1 = time.perf_counter() - wall0, _cpu()
                main_cpu, kids_cpu = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
                assert docs == len(texts), (name, docs)
                timing[name] = {
                    "wall_s": wall,
                    "cpu_s": main_cpu + kids_cpu,
                    "main_cpu_s": main_cpu,
                    "kids_cpu_s": kids_cpu,
                }
            print(
                f"round {r}{' (warm-up)' if r == 0 else ''}: "
                + ", ".join(f"{n} {tokens / t['wall_s'] / 1e6:.2f}M/s" for n, t in timing.items()),
                file=sys.stderr,
                flush=True,
            )
            if r:
                rounds.append(timing)
        main_ceiling = statistics.median(_main_process_rate(scratch) for _ in range(3))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_end = os.getloadavg()

    rate = {n: [tokens / t[n]["wall_s"] for t in rounds] for n in names}
    cpu_rate = {n: [tokens / t[n]["cpu_s"] for t in rounds] for n in names}
    ratios = {
        "per_core_vs_tiktoken": [t["tiktoken_1t"]["wall_s"] / t["prepare_1"]["wall_s"] for t in rounds],
        "per_core_vs_tiktoken_cpu": [t["tiktoken_1t"]["cpu_s"] / t["prepare_1"]["cpu_s"] for t in rounds],
        "scaling_1_to_2": [t["prepare_1"]["wall_s"] / t["prepare_2"]["wall_s"] for t in rounds],
        "prepare_2_vs_tiktoken_2t": [t["tiktoken_2t"]["wall_s"] / t["prepare_2"]["wall_s"] for t in rounds],
        # what an idle machine would show: prepare_2's wall time is at least its main process's CPU
        # time and its two workers' CPU time over two (an estimate from CPU times, not a timing)
        "scaling_1_to_2_cpu_estimate": [
            t["prepare_1"]["cpu_s"] / max(t["prepare_2"]["main_cpu_s"], t["prepare_2"]["kids_cpu_s"] / 2)
            for t in rounds
        ],
    }
    if "before" in names:
        ratios["prepare_2_vs_before"] = [t["before"]["wall_s"] / t["prepare_2"]["wall_s"] for t in rounds]
    per_core = statistics.median(cpu_rate["prepare_1"])  # tokens per CPU second of one worker
    workers = 63 * per_core  # one core of 64 left to the main process
    prepare_2_main = statistics.median(tokens / t["prepare_2"]["main_cpu_s"] for t in rounds)
    node_rate = min(workers, main_ceiling, prepare_2_main)
    report = {
        "command": "benchmarks/trainer/bench_prepare.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": {"start": load_start, "end": load_end},
        "sched_autogroup": _autogroup(),
        "text": {"documents": len(texts), "tokens": tokens, "chars": sum(map(len, texts)), "copies": args.copies},
        "rounds": args.rounds,
        "tokens_per_s": {n: _summary(v) for n, v in rate.items()},
        "tokens_per_cpu_s": {n: _summary(v) for n, v in cpu_rate.items()},
        "ratios": {n: _summary(v) for n, v in ratios.items()},
        "projection_10b_tokens_64_cores": {
            "worker_tokens_per_cpu_s": per_core,
            "63_workers_tokens_per_s": workers,
            # the main process dealing and writing alone, FineWeb-shaped documents
            "main_deal_write_tokens_per_cpu_s": main_ceiling,
            # the main process in prepare_2 as a whole: the pool's start, receiving the workers'
            # results, dealing, writing (the corpus's documents; its start is not amortised)
            "main_in_prepare_2_tokens_per_cpu_s": prepare_2_main,
            "node_tokens_per_s": node_rate,
            "minutes": 10e9 / node_rate / 60,
        },
        "per_round": rounds,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
