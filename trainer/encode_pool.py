"""Pieces of a source (trainer.sources) read and encoded by N worker processes, handed back in
source order.

    with EncodePool(workers=8) as pool:
        for batch in pool.map(plan.pieces):   # Encoded, in the order of the pieces
            ...

Each piece is read and encoded by one worker. Results come back in the order the pieces were
made, whichever finishes first, so whatever the caller builds from them (prepare's shards) is the
same for any number of workers. At most 2 x workers pieces are in flight, so memory stays bounded
however large the source. With one worker nothing is started: pieces are encoded in this process.

The workers are forked (on Linux) when the pool is made, before the source is opened, so no
thread of a reader is forked with them; they inherit the encoding built here instead of building
their own. They ignore SIGINT: Ctrl-C stops the main process, which cancels what is queued.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np

from trainer import tokenizer
from trainer.sources import Piece

_EOT = np.array([tokenizer.EOT], dtype=np.uint32)


@dataclass
class Encoded:
    """The documents of one piece. tokens: (sum(lengths),) uint16, each document's tokens followed
    by <|endoftext|>; lengths: (documents,) tokens per document, <|endoftext|> included; nbytes:
    (documents,) UTF-8 bytes of each document's text; units: of the source the piece covered."""

    tokens: np.ndarray
    lengths: np.ndarray
    nbytes: np.ndarray
    units: float


def _encode(text: str) -> tuple[np.ndarray, int]:
    """(token ids as uint32, UTF-8 bytes); the same ids as tiktoken's encode_ordinary, without the
    Python list it builds (encode_to_numpy, tiktoken >= 0.8)."""
    enc = tokenizer.get_encoding()
    try:
        to_numpy = getattr(enc, "encode_to_numpy", None)
        if to_numpy is None:
            return np.asarray(enc.encode_ordinary(text), dtype=np.uint32), len(text.encode("utf-8"))
        # no special token is allowed or refused: "<|endoftext|>" in the text is plain text
        return to_numpy(text, disallowed_special=()), len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # lone surrogates (JSON can hold them): replaced, as tiktoken's encode_ordinary does
        return _encode(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))


def encode_piece(piece: Piece) -> Encoded:
    """Read one piece and encode its documents (runs in a worker)."""
    texts = piece.read()
    arrays: list[np.ndarray] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    nbytes = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        ids, nbytes[i] = _encode(text)
        arrays += (ids, _EOT)
        lengths[i] = len(ids) + 1
    tokens = np.concatenate(arrays).astype(np.uint16) if arrays else np.empty(0, dtype=np.uint16)
    return Encoded(tokens, lengths, nbytes, piece.units)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ready(_: int) -> int:
    return tokenizer.N_VOCAB


class EncodePool:
    """`workers` processes encoding pieces; `map` yields their results in order. A context manager:
    leaving it cancels what is still queued (e.g. once --max-tokens is reached)."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        tokenizer.get_encoding()  # built once, here: forked workers inherit it
        if workers > 1:
            method = "fork" if sys.platform == "linux" else "spawn"
            self._pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context(method), initializer=_ignore_sigint
            )
            # with fork every worker starts at the first submit: now, while this process has no
            # other thread (a source reader, pyarrow's pool) that a fork could copy mid-work
            list(self._pool.map(_ready, range(workers)))

    def map(self, pieces: Iterable[Piece]) -> Iterator[Encoded]:
        if self._pool is None:
            for piece in pieces:
                yield encode_piece(piece)
            return
        queued = iter(pieces)
        pending: deque[Future[Encoded]] = deque(
            self._pool.submit(encode_piece, p) for p in islice(queued, 2 * self.workers)
        )
        while pending:
            done = pending.popleft().result()  # a worker's DataError is raised here, in source order
            nxt = next(queued, None)
            if nxt is not None:  # refill before handing the result on: the workers stay busy
                pending.append(self._pool.submit(encode_piece, nxt))
            yield done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> EncodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
