"""Tokenise a text source into uint16 shards with a train / validation / test split.

    python -m trainer.prepare --source builtin:corpus --out data/corpus
    python -m trainer.prepare --source books/ --out data/books            # .txt/.md/.jsonl/.parquet
    python -m trainer.prepare --source hf:HuggingFaceFW/fineweb:sample-10BT --out data/fineweb \
        --max-tokens 100000000 --val-fraction 0.01 --test-fraction 0.002

Sources: a file or folder (a text file is one document; JSONL and parquet give one document per
row's "text"), `builtin:corpus` (the shipped corpus, no download), or `hf:NAME[:CONFIG]` (streamed
with `datasets`, train split). Every document is followed by <|endoftext|> (50256).

Every core works (`--workers N`, default: all this process may use): the source is cut into pieces
(parquet row groups, ~1 MB ranges of a JSONL file, text files, batches of streamed documents; see
trainer.sources) that worker processes read and encode while this process deals the documents, in
source order, to the splits and writes the shards (trainer.encode_pool). The output is the same,
byte for byte, for any number of workers. Progress goes to stderr every `--progress-every` seconds
(default 10) as `prepare: N documents, N tokens, R tokens/s[, P%, ETA T]` (P and T when the size is
known: local files, a stream that says its length, or --max-tokens), and at the end as
`prepare: done: N documents, N tokens in S s, R tokens/s, W workers`; the service shows these lines
as run events.

Documents are dealt to the splits in stream order, each to the split furthest below its share of
tokens so far, so the three splits come from all through the source (not just its tail) and their
sizes track the fractions closely, without knowing the total in advance (streaming).

Running it again on a folder already prepared from the same source and options does nothing.

Shared cache (`--cache URI`, a file:// or s3:// store folder for exactly this dataset, e.g.
`s3://bucket/p/data/d-<hash>`). When `<URI>/manifest.json` exists the source is not read: every
shard the manifest lists is downloaded and checked against its SHA-256 into `.tmp-<out>` beside
--out, the manifest written last, the folder renamed into place (complete or absent, as always).
Otherwise the data is prepared from the source, then every shard is pushed and the manifest LAST,
so a cache cut off half-way has no manifest and is never taken as complete; a failed push only
prints a warning (the local data is fine). A cached shard that fails its SHA-256 (or is missing)
is an error (exit 2) naming the cache, not a silent re-prepare: the cache is shared, so it must be
repaired (delete its folder) rather than papered over. The cache is read by known keys only (a
node's credentials cannot list the bucket). The summary line says "cache": "hit" | "miss" | "off"
(and, on a miss, "cache_pushed": true | false).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from trainer import corpus, sources, tokenizer
from trainer.artifacts import ArtifactError, TransferError
from trainer.artifacts.manifest import fsync_file, fsync_write
from trainer.data import DTYPE, MANIFEST, SPLITS, ShardWriter, write_manifest
from trainer.encode_pool import Encoded, EncodePool
from trainer.errors import DataError, run_cli
from trainer.upload import open_artifact_store

FORMATS = ("auto", "text", "jsonl", "parquet", "hf")
#: seconds between two progress lines
PROGRESS_EVERY_S = 10.0
DTYPE_BYTES = DTYPE.itemsize
_SHARD = re.compile(r"^(train|val|test)_\d{6}\.bin$")


def _options(
    fmt: str, val_fraction: float, test_fraction: float, shard_tokens: int, max_tokens: int | None, field: str
) -> dict:
    """The checked options, as recorded in the manifest (the worker count is not one: it changes
    nothing in the output)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"--val-fraction ({val_fraction}) and --test-fraction ({test_fraction}) "
            f"must be in [0, 1) and leave room for training data"
        )
    if shard_tokens <= 0 or (max_tokens is not None and max_tokens <= 0):
        raise DataError("--shard-tokens and --max-tokens must be positive")
    return {
        "format": fmt,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "shard_tokens": shard_tokens,
        "max_tokens": max_tokens,
        "field": field,
    }


def _prepared(out: Path, source: str, options: dict) -> dict | None:
    """The manifest of `out` when it is already prepared from source with options; None when it
    is absent or holds only leftovers of an interrupted run (removed); DataError otherwise."""
    if (out / MANIFEST).is_file():
        existing = json.loads((out / MANIFEST).read_text())
        if existing.get("source") == source and existing.get("options") == options:
            return existing
        raise DataError(
            f"{out} already holds data prepared from {existing.get('source')!r} with "
            f"other options; remove it or choose another --out"
        )
    if out.exists():
        # leftovers of an interrupted run (no manifest, so none of it is valid) are removed;
        # anything else means --out points at someone else's folder
        ours = re.compile(r"^(train|val|test)_\d{6}\.bin$|^manifest\.json\.tmp$")
        strangers = [p.name for p in out.iterdir() if not ours.match(p.name)]
        if strangers:
            raise DataError(
                f"--out {out} is not empty and holds no prepared data "
                f"(found {', '.join(sorted(strangers)[:3])}); choose an empty folder"
            )
        for p in out.iterdir():
            p.unlink()
    return None


class SplitDealer:
    """Deals documents, in source order, each to the split furthest below its share of the tokens
    so far (ties to the first of train, val, test), and stops before the first document that would
    take the total past max_tokens."""

    def __init__(self, fractions: Sequence[float], writers: Sequence[ShardWriter], max_tokens: int | None):
        self.fractions, self.writers, self.max_tokens = tuple(fractions), writers, max_tokens
        self.split_tokens = [0] * len(writers)
        self.total = self.documents = 0

    def take(self, batch: Encoded) -> bool:
        """Deal a piece's documents; True once max_tokens is reached (nothing more will be taken)."""
        lengths = batch.lengths  # (docs,)
        n, full = len(lengths), False
        if self.max_tokens is not None:
            fits = int(np.searchsorted(self.total + np.cumsum(lengths), self.max_tokens, side="right"))
            if fits < n:
                n, full = fits, True
        f0, f1, f2 = self.fractions
        w, total, split_of = self.split_tokens, self.total, []
        for length in lengths[:n].tolist():  # plain ints: this loop runs once per document
            total += length
            a, b, c = f0 * total - w[0], f1 * total - w[1], f2 * total - w[2]
            s = 0 if (a >= b and a >= c) else (1 if b >= c else 2)
            w[s] += length
            split_of.append(s)
        self.total, self.documents = total, self.documents + n
        if n:
            self._write(batch, n, np.asarray(split_of, dtype=np.int8))
        return full

    def _write(self, batch: Encoded, n: int, split_of: np.ndarray) -> None:
        lengths, nbytes = batch.lengths[:n], batch.nbytes[:n]  # (n,)
        tokens = batch.tokens[: int(lengths.sum())]  # (tokens of the n documents,)
        labels = np.repeat(split_of, lengths)  # (tokens,) the split of each token's document
        for s, writer in enumerate(self.writers):
            docs = split_of == s  # (n,)
            count = int(docs.sum())
            if count == n:
                writer.add(tokens, int(nbytes.sum()), documents=n)
            elif count:
                writer.add(tokens[labels == s], int(nbytes[docs].sum()), documents=count)


class _Progress:
    """`prepare: ...` lines at most every `every_s` seconds, and one when done."""

    def __init__(
        self, log: Callable[[str], None] | None, every_s: float, total_units: float | None, max_tokens: int | None
    ):
        self.log, self.every_s, self.total_units, self.max_tokens = log, every_s, total_units, max_tokens
        self.t0 = self.last = time.monotonic()
        self.units = 0.0

    def update(self, documents: int, tokens: int, units: float) -> None:
        self.units += units
        now = time.monotonic()
        if self.log is not None and now - self.last >= self.every_s:
            self.last = now
            self.log(f"prepare: {self._counts(documents, tokens, now)}{self._eta(tokens, now)}")

    def done(self, documents: int, tokens: int, workers: int) -> None:
        if self.log is not None:
            now = time.monotonic()
            took = f" in {now - self.t0:.1f} s"
            self.log(
                f"prepare: done: {self._counts(documents, tokens, now, took)}, {workers} worker{'s' * (workers != 1)}"
            )

    def _counts(self, documents: int, tokens: int, now: float, took: str = "") -> str:
        rate = tokens / max(now - self.t0, 1e-9)
        return f"{documents:,} documents, {tokens:,} tokens{took}, {_si(rate)} tokens/s"

    def _eta(self, tokens: int, now: float) -> str:
        known = []
        if self.total_units:
            known.append(self.units / self.total_units)
        if self.max_tokens:
            known.append(tokens / self.max_tokens)
        if not known:
            return ""
        done = min(max(known), 1.0)  # the first limit reached ends the preparation
        if done <= 0 or done >= 1:
            return f", {100 * done:.0f}%"
        return f", {100 * done:.0f}%, ETA {_duration((now - self.t0) * (1 - done) / done)}"


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def prepare(
    source: str,
    out: str | Path,
    fmt: str = "auto",
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    shard_tokens: int = 100_000_000,
    max_tokens: int | None = None,
    field: str = "text",
    log: Callable[[str], None] | None = None,
    workers: int | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> dict:
    """Tokenise `source` into `out`; returns the manifest. Idempotent for the same inputs, and the
    same bytes for any `workers` (default: every core)."""
    options = _options(fmt, val_fraction, test_fraction, shard_tokens, max_tokens, field)
    out = Path(out)
    existing = _prepared(out, source, options)
    if existing is not None:
        return existing
    workers = workers or sources.default_workers()
    out.mkdir(parents=True, exist_ok=True)

    writers = [ShardWriter(out, s, shard_tokens) for s in SPLITS]
    dealer = SplitDealer((1 - val_fraction - test_fraction, val_fraction, test_fraction), writers, max_tokens)
    with EncodePool(workers) as pool:  # first: the workers fork before the source is opened
        plan = sources.plan(source, fmt, field)
        progress = _Progress(log, progress_every_s, plan.total_units, max_tokens)
        for batch in pool.map(plan.pieces):
            full = dealer.take(batch)
            progress.update(dealer.documents, dealer.total, batch.units)
            if full:
                break  # max_tokens reached
    if dealer.total == 0:
        raise DataError(f"source {source} produced no documents")
    progress.done(dealer.documents, dealer.total, workers)
    manifest = {
        "format": 1,
        "dtype": "uint16",
        "tokenizer": {"name": tokenizer.NAME, "n_vocab": tokenizer.N_VOCAB, "eot": tokenizer.EOT},
        "source": source,
        "source_detail": corpus.fingerprint() if source == "builtin:corpus" else source,
        "options": options,
        "documents": dealer.documents,
        "tokens": dealer.total,
        "splits": {s: w.close() for s, w in zip(SPLITS, writers, strict=True)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_manifest(out, manifest)  # last: a folder with a manifest is complete
    return manifest


def _shards(manifest: dict, where: str) -> list[dict]:
    """Every shard a data manifest lists ({"file", "tokens", "sha256"}), checked to be a plain
    shard name (a manifest from a store must not write outside the folder)."""
    try:
        shards = [s for split in SPLITS for s in manifest["splits"][split]["shards"]]
        for s in shards:
            if not _SHARD.match(s["file"]) or not isinstance(s["tokens"], int) or not isinstance(s["sha256"], str):
                raise ValueError(s)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: the data manifest is malformed") from None
    return shards


def prepare_cached(
    source: str,
    out: str | Path,
    cache: str,
    fmt: str = "auto",
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    shard_tokens: int = 100_000_000,
    max_tokens: int | None = None,
    field: str = "text",
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    workers: int | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> tuple[dict, dict]:
    """prepare() through the shared cache at `cache`; returns (manifest, {"cache": "hit"} or
    {"cache": "miss", "cache_pushed": bool}). See the module docstring for the rules."""
    options = _options(fmt, val_fraction, test_fraction, shard_tokens, max_tokens, field)
    out = Path(out)
    existing = _prepared(out, source, options)
    try:
        store = open_artifact_store(cache)
        cached = store.read_bytes(MANIFEST)
    except TransferError:
        raise
    except ArtifactError as e:
        raise DataError(f"--cache {cache}: {e}") from None
    if cached is not None:
        try:
            manifest = json.loads(cached)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(
                f"the data cache {cache} is corrupt: its {MANIFEST} is not JSON; "
                f"delete that folder (or run without --cache)"
            ) from None
        if manifest.get("source") != source or manifest.get("options") != options:
            raise DataError(
                f"the data cache {cache} holds data prepared from "
                f"{manifest.get('source')!r} with {manifest.get('options')}, not from "
                f"{source!r} with {options}: a cache URI must name one dataset"
            )
        if existing is None:
            _download(store, cache, cached, _shards(manifest, f"the data cache {cache}"), out, log)
        return (existing or manifest), {"cache": "hit"}
    manifest = existing or prepare(
        source, out, fmt, val_fraction, test_fraction, shard_tokens, max_tokens, field, log, workers, progress_every_s
    )
    try:
        for s in _shards(manifest, str(out)):
            store.put_file(out / s["file"], s["file"], sha256=s["sha256"])
        store.put_file(out / MANIFEST, MANIFEST)  # last: the cache's commit point
    except Exception as e:  # noqa: BLE001 - the local data is complete; the cache is a bonus
        warn(
            f"warning: the prepared data is complete in {out} but could not be pushed to the "
            f"cache {cache}: {' '.join(str(e).split()) or type(e).__name__}"
        )
        return manifest, {"cache": "miss", "cache_pushed": False}
    return manifest, {"cache": "miss", "cache_pushed": True}


def _download(store, cache: str, manifest_bytes: bytes, shards: list[dict], out: Path, log) -> None:
    """Every shard into .tmp-<out> beside out, each checked, the manifest last, then renamed."""
    tmp = out.parent / f".tmp-{out.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for i, s in enumerate(shards, 1):
            dest = tmp / s["file"]
            store.get_file(s["file"], dest, sha256=s["sha256"])
            if dest.stat().st_size != s["tokens"] * DTYPE_BYTES:
                raise DataError(
                    f"the data cache {cache} is corrupt: {s['file']} is "
                    f"{dest.stat().st_size} bytes for {s['tokens']} tokens; delete "
                    f"that folder (or run without --cache)"
                )
            if log:
                log(f"prepare: shard {i}/{len(shards)} ({s['file']}) from the cache")
        fsync_write(tmp / MANIFEST, manifest_bytes)  # last: a folder with a manifest is complete
        fsync_file(tmp)
        if out.exists():
            out.rmdir()  # empty: _prepared() removed any leftovers of ours
        tmp.rename(out)
        fsync_file(out.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ArtifactError) and not isinstance(e, TransferError):
            # a shard that fails its SHA-256 or is missing although the manifest is there
            raise DataError(
                f"the data cache {cache} is corrupt: {e}; delete that folder (or run "
                f"without --cache) to prepare from the source again"
            ) from None
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m trainer.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--source", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--format", default="auto", choices=FORMATS)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--test-fraction", type=float, default=0.05)
    ap.add_argument("--shard-tokens", type=int, default=100_000_000)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--field", default="text", help="JSONL/parquet/HF field holding the text")
    ap.add_argument(
        "--cache",
        default=None,
        metavar="URI",
        help="shared cache of this prepared dataset (file:// or s3:// folder): "
        "downloaded when it holds a manifest, else filled after preparing",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes reading and encoding the source (default: every core); the output is the same for any N",
    )
    ap.add_argument(
        "--progress-every",
        type=float,
        default=PROGRESS_EVERY_S,
        metavar="S",
        help=f"seconds between progress lines on stderr (default {PROGRESS_EVERY_S:g})",
    )
    args = ap.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise DataError(f"--workers must be at least 1, got {args.workers}")

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    options = (args.format, args.val_fraction, args.test_fraction, args.shard_tokens, args.max_tokens, args.field)
    run = dict(log=log, workers=args.workers, progress_every_s=args.progress_every)
    if args.cache:
        m, cache = prepare_cached(args.source, args.out, args.cache, *options, **run)
    else:
        m, cache = prepare(args.source, args.out, *options, **run), {"cache": "off"}
    summary = {s: {k: v for k, v in info.items() if k != "shards"} for s, info in m["splits"].items()}
    print(json.dumps({"out": str(args.out), "source": m["source"], "tokens": m["tokens"], "splits": summary, **cache}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
