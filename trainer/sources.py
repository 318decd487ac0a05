"""A text source cut into pieces that any process can read, in a fixed order.

`plan(source, fmt, field)` describes the source as a stream of pieces, each small enough to
encode in about a tenth of a second and self-contained, so `trainer.encode_pool` can hand them to
worker processes and still put the documents back in source order:

    ParquetGroup   one row group of a .parquet file (the worker reads it: reading is parallel too)
    JsonlRange     a byte range of a .jsonl file, cut at line ends (the worker parses it)
    TextFile       one .txt/.md file, one document (the worker reads it)
    CorpusFiles    a few standard library files of builtin:corpus (the worker parses them)
    Texts          documents read by the main process (pydoc topics, hf: streams)

Each piece carries `units` of the source it covers (bytes of a local file, rows of a stream), so
the progress line can show how much is done when `Plan.total_units` is known. Reading a piece
gives exactly the documents the single-process reader gave, in the same order: a text file is one
document, a JSONL line one document (blank lines skipped), a parquet or hf row one document when
its text is not empty.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Union

from trainer import corpus
from trainer.errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
#: a piece of text read in the main process, or a JSONL range, is cut at about this many characters/bytes
PIECE_CHARS = 1 << 20
PIECE_DOCS = 4096
#: standard library files of builtin:corpus parsed by one worker at a time
CORPUS_FILES = 16


@dataclass(frozen=True)
class Texts:
    texts: list[str]
    units: float = 0.0

    def read(self) -> list[str]:
        return self.texts


@dataclass(frozen=True)
class TextFile:
    path: str
    units: float

    def read(self) -> list[str]:
        return [Path(self.path).read_text(encoding="utf-8", errors="replace")]


@dataclass(frozen=True)
class JsonlRange:
    path: str
    start: int  # byte offset of the first line
    end: int  # byte offset just past the last line
    field: str

    @property
    def units(self) -> float:
        return float(self.end - self.start)

    def read(self) -> list[str]:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            data = f.read(self.end - self.start)
        texts = []
        for i, raw in enumerate(data.split(b"\n")):
            line = raw.decode("utf-8")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{self.path}:{self._lineno(i)} is not valid JSON: {e}") from None
            if not isinstance(row, dict) or not isinstance(row.get(self.field), str):
                raise DataError(f"{self.path}:{self._lineno(i)} has no string field {self.field!r}")
            texts.append(row[self.field])
        return texts

    def _lineno(self, index: int) -> int:
        """The 1-based line number of line `index` of this range (counted only for an error)."""
        with open(self.path, "rb") as f:
            return f.read(self.start).count(b"\n") + index + 1


@dataclass(frozen=True)
class ParquetGroup:
    path: str
    row_group: int
    field: str
    units: float

    def read(self) -> list[str]:
        import pyarrow.parquet as pq

        column = pq.ParquetFile(self.path).read_row_group(self.row_group, columns=[self.field]).column(0)
        return [text for text in column.to_pylist() if text]


@dataclass(frozen=True)
class CorpusFiles:
    paths: tuple[str, ...]

    @property
    def units(self) -> float:
        return float(len(self.paths))

    def read(self) -> list[str]:
        # trainer.corpus's own reader, so the documents are exactly corpus.documents()'s
        docs = (corpus._module_document(Path(p)) for p in self.paths)
        return [d for d in docs if d is not None]


Piece = Union[Texts, TextFile, JsonlRange, ParquetGroup, CorpusFiles]


@dataclass
class Plan:
    pieces: Iterator[Piece]
    #: the units of the whole source (file bytes, stream rows), None when not known in advance
    total_units: float | None


def plan(source: str, fmt: str = "auto", field: str = "text") -> Plan:
    """The pieces of a source, in a fixed order (DataError for a source that cannot be read)."""
    if source == "builtin:corpus":
        return _corpus_plan()
    if source.startswith("hf:") or fmt == "hf":
        return _hf_plan(source.removeprefix("hf:"), field)
    files = _files(source, fmt)
    kinds = [(f, _file_format(f, fmt)) for f in files]  # every file's format checked up front
    return Plan(_file_pieces(kinds, field), float(sum(f.stat().st_size for f in files)))


def _files(source: str, fmt: str) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and (fmt != "auto" or p.suffix.lower() in TEXT_SUFFIXES + (".jsonl", ".parquet"))
        )
        if not files:
            raise DataError(f"{source} holds no .txt, .md, .jsonl or .parquet files")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"source {source} does not exist (expected a file, a folder, builtin:corpus or hf:NAME[:CONFIG])")


def _file_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise DataError(f"cannot tell the format of {path}; pass --format text|jsonl|parquet")


def _file_pieces(kinds: list[tuple[Path, str]], field: str) -> Iterator[Piece]:
    for path, kind in kinds:
        if kind == "text":
            yield TextFile(str(path), float(path.stat().st_size))
        elif kind == "jsonl":
            yield from _jsonl_ranges(path, field)
        else:
            yield from _parquet_groups(path, field)


def _jsonl_ranges(path: Path, field: str) -> Iterator[JsonlRange]:
    """Ranges of about PIECE_CHARS bytes, each ending just after a newline (or at the end)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = 0
        while start < size:
            f.seek(min(start + PIECE_CHARS, size))
            f.readline()  # on to the end of the line the cut fell in
            end = min(f.tell(), size)
            yield JsonlRange(str(path), start, end, field)
            start = end


def _parquet_groups(path: Path, field: str) -> Iterator[ParquetGroup]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading parquet needs pyarrow: pip install 'trainyard[data]'") from None
    meta = pq.ParquetFile(path)
    names = meta.schema_arrow.names
    if field not in names:
        raise DataError(f"{path} has no column {field!r} (columns: {', '.join(names)})")
    rows, size = max(meta.metadata.num_rows, 1), path.stat().st_size
    for i in range(meta.num_row_groups):
        yield ParquetGroup(str(path), i, field, size * meta.metadata.row_group(i).num_rows / rows)


def _texts(docs: Iterable[tuple[str | None, float]]) -> Iterator[Texts]:
    """(document or None for a row without text, units) read here, gathered into pieces of about
    PIECE_CHARS characters."""
    batch: list[str] = []
    chars, units = 0, 0.0
    for text, u in docs:
        units += u
        if text is None:
            continue
        batch.append(text)
        chars += len(text)
        if chars >= PIECE_CHARS or len(batch) >= PIECE_DOCS:
            yield Texts(batch, units)
            batch, chars, units = [], 0, 0.0
    if batch or units:
        yield Texts(batch, units)


def _corpus_plan() -> Plan:
    """corpus.documents() in pieces: the pydoc topics (one unit), then the standard library's
    files, CORPUS_FILES to a piece (a unit each), parsed by the workers."""
    files = [str(p) for p in corpus._stdlib_files()]
    topics = Texts(list(corpus._topic_documents()), 1.0)
    groups = (CorpusFiles(tuple(files[i : i + CORPUS_FILES])) for i in range(0, len(files), CORPUS_FILES))
    return Plan(chain([topics], groups), float(len(files) + 1))


def _hf_plan(spec: str, field: str) -> Plan:
    try:
        import datasets
    except ImportError:
        raise DataError("hf: sources need the datasets package: pip install 'trainyard[data]'") from None
    name, _, config = spec.partition(":")
    ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
    info = getattr(ds, "info", None)
    splits = getattr(info, "splits", None) or {}
    total = getattr(splits.get("train"), "num_examples", None) if hasattr(splits, "get") else None

    def rows() -> Iterator[tuple[str | None, float]]:
        for batch in ds.iter(batch_size=1000):  # columns of 1000 rows: much faster than row dicts
            if field not in batch:
                raise DataError(f"dataset {name} has no field {field!r} (fields: {', '.join(batch)}); pass --field")
            for text in batch[field]:
                yield (text or None), 1.0

    return Plan(_texts(rows()), float(total) if total else None)


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
