"""Tokenise a text source into uint16 shards with a train / validation / test split.

    python -m trainer.prepare --source builtin:corpus --out data/corpus
    python -m trainer.prepare --source books/ --out data/books            # .txt/.md/.jsonl/.parquet
    python -m trainer.prepare --source hf:HuggingFaceFW/fineweb:sample-10BT --out data/fineweb \
        --max-tokens 100000000 --val-fraction 0.01 --test-fraction 0.002

Sources: a file or folder (a text file is one document; JSONL and parquet give one document per
row's "text"), `builtin:corpus` (the shipped corpus, no download), or `hf:NAME[:CONFIG]` (streamed
with `datasets`, train split). Every document is followed by <|endoftext|> (50256).

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
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from trainer import corpus, tokenizer
from trainer.artifacts import ArtifactError, TransferError
from trainer.artifacts.manifest import fsync_file, fsync_write
from trainer.data import DTYPE, MANIFEST, SPLITS, ShardWriter, write_manifest
from trainer.errors import DataError, run_cli
from trainer.upload import open_artifact_store

FORMATS = ("auto", "text", "jsonl", "parquet", "hf")
_TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


def _text_docs(path: Path) -> Iterator[str]:
    yield path.read_text(encoding="utf-8", errors="replace")


def _jsonl_docs(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno} is not valid JSON: {e}") from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise DataError(f"{path}:{lineno} has no string field {field!r}")
            yield row[field]


def _parquet_docs(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading parquet needs pyarrow: pip install 'trainyard[data]'") from None
    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        raise DataError(f"{path} has no column {field!r} (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text:
                yield text


def _hf_docs(spec: str, field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError("hf: sources need the datasets package: pip install 'trainyard[data]'") from None
    name, _, config = spec.partition(":")
    ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
    for row in ds:
        if field not in row:
            raise DataError(f"dataset {name} has no field {field!r} (fields: {', '.join(row)}); pass --field")
        text = row[field]
        if text:
            yield text


def _file_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix in _TEXT_SUFFIXES:
        return "text"
    raise DataError(f"cannot tell the format of {path}; pass --format text|jsonl|parquet")


def iter_documents(source: str, fmt: str = "auto", field: str = "text") -> Iterator[str]:
    """The documents of a source, in a fixed order."""
    if source == "builtin:corpus":
        yield from corpus.documents()
        return
    if source.startswith("hf:") or fmt == "hf":
        yield from _hf_docs(source.removeprefix("hf:"), field)
        return
    path = Path(source)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and (fmt != "auto" or p.suffix.lower() in _TEXT_SUFFIXES + (".jsonl", ".parquet"))
        )
        if not files:
            raise DataError(f"{source} holds no .txt, .md, .jsonl or .parquet files")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(
            f"source {source} does not exist (expected a file, a folder, builtin:corpus or hf:NAME[:CONFIG])"
        )
    for f in files:
        kind = _file_format(f, fmt)
        if kind == "text":
            yield from _text_docs(f)
        elif kind == "jsonl":
            yield from _jsonl_docs(f, field)
        else:
            yield from _parquet_docs(f, field)


def _batched(docs: Iterable[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for d in docs:
        batch.append(d)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


DTYPE_BYTES = DTYPE.itemsize
_SHARD = re.compile(r"^(train|val|test)_\d{6}\.bin$")


def _options(
    fmt: str, val_fraction: float, test_fraction: float, shard_tokens: int, max_tokens: int | None, field: str
) -> dict:
    """The checked options, as recorded in the manifest."""
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


def prepare(
    source: str,
    out: str | Path,
    fmt: str = "auto",
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    shard_tokens: int = 100_000_000,
    max_tokens: int | None = None,
    field: str = "text",
    log=None,
) -> dict:
    """Tokenise `source` into `out`; returns the manifest. Idempotent for the same inputs."""
    options = _options(fmt, val_fraction, test_fraction, shard_tokens, max_tokens, field)
    out = Path(out)
    existing = _prepared(out, source, options)
    if existing is not None:
        return existing
    out.mkdir(parents=True, exist_ok=True)

    enc = tokenizer.get_encoding()
    fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    writers = {s: ShardWriter(out, s, shard_tokens) for s in SPLITS}
    total, docs, t0 = 0, 0, time.time()
    for batch in _batched(iter_documents(source, fmt, field), 256):
        for text, ids in zip(batch, enc.encode_ordinary_batch(batch, num_threads=4), strict=True):
            ids.append(tokenizer.EOT)
            if max_tokens is not None and total + len(ids) > max_tokens:
                break
            # deal the document to the split furthest below its share of the tokens so far
            after = total + len(ids)
            split = max(SPLITS, key=lambda s: fractions[s] * after - writers[s].tokens)
            writers[split].add(np.asarray(ids, dtype=np.int64), len(text.encode("utf-8")))
            total, docs = after, docs + 1
        else:
            if log and docs % 10_000 < 256:
                log(f"prepare: {docs:,} documents, {total:,} tokens, {time.time() - t0:.0f}s")
            continue
        break  # max_tokens reached
    if total == 0:
        raise DataError(f"source {source} produced no documents")
    manifest = {
        "format": 1,
        "dtype": "uint16",
        "tokenizer": {"name": tokenizer.NAME, "n_vocab": tokenizer.N_VOCAB, "eot": tokenizer.EOT},
        "source": source,
        "source_detail": corpus.fingerprint() if source == "builtin:corpus" else source,
        "options": options,
        "documents": docs,
        "tokens": total,
        "splits": {s: w.close() for s, w in writers.items()},
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
    log=None,
    warn=lambda s: print(s, file=sys.stderr, flush=True),
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
    manifest = existing or prepare(source, out, fmt, val_fraction, test_fraction, shard_tokens, max_tokens, field, log)
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
    args = ap.parse_args(argv)

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    options = (args.format, args.val_fraction, args.test_fraction, args.shard_tokens, args.max_tokens, args.field)
    if args.cache:
        m, cache = prepare_cached(args.source, args.out, args.cache, *options, log=log)
    else:
        m, cache = prepare(args.source, args.out, *options, log=log), {"cache": "off"}
    summary = {s: {k: v for k, v in info.items() if k != "shards"} for s, info in m["splits"].items()}
    print(json.dumps({"out": str(args.out), "source": m["source"], "tokens": m["tokens"], "splits": summary, **cache}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
