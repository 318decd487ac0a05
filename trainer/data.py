"""Prepared token data: uint16 shards per split plus a manifest, and the readers training uses.

A prepared folder (written by `python -m trainer.prepare`):

    DATA_DIR/manifest.json          written last: its presence means the folder is complete
    DATA_DIR/train_000000.bin ...   raw little-endian uint16 tokens, <|endoftext|> after each document
    DATA_DIR/val_000000.bin ...
    DATA_DIR/test_000000.bin ...

Each split is one token stream (its shards concatenated in order) identified by its token count and
the SHA-256 of those bytes. Training reads contiguous windows of seq_len + 1 tokens, one epoch, no
shuffling; which window a rank reads is a pure function of (token offset, world size, rank,
micro-step), so resuming at a saved offset replays exactly the same batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from trainer import tokenizer
from trainer.errors import DataError

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
DTYPE = np.dtype("<u2")  # GPT-2's 50257 ids fit in uint16


class ShardWriter:
    """Appends one split's tokens into shards of at most shard_tokens tokens."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int):
        self.out_dir, self.split, self.shard_tokens = out_dir, split, shard_tokens
        self.shards: list[dict] = []
        self.tokens = self.bytes = self.documents = 0
        self._hash = hashlib.sha256()  # over the whole split, in shard order
        self._buf: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids: np.ndarray, n_bytes: int, documents: int = 1) -> None:
        """Append whole documents: their tokens (each followed by <|endoftext|>) and text bytes."""
        self._buf.append(ids.astype(DTYPE))
        self._buffered += len(ids)
        self.tokens += len(ids)
        self.bytes += n_bytes
        self.documents += documents
        while self._buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> dict:
        if self._buffered:
            self._flush(self._buffered)
        return {
            "tokens": self.tokens,
            "bytes": self.bytes,
            "documents": self.documents,
            "sha256": self._hash.hexdigest(),
            "shards": self.shards,
        }

    def _flush(self, n: int) -> None:
        flat = np.concatenate(self._buf)  # (buffered,)
        shard, rest = flat[:n], flat[n:]
        self._buf, self._buffered = ([rest] if len(rest) else []), len(rest)
        data = shard.tobytes()
        name = f"{self.split}_{len(self.shards):06d}.bin"
        (self.out_dir / name).write_bytes(data)
        self._hash.update(data)
        self.shards.append({"file": name, "tokens": len(shard), "sha256": hashlib.sha256(data).hexdigest()})


def write_manifest(out_dir: Path, manifest: dict) -> None:
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / MANIFEST)


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{data_dir} holds no prepared data ({MANIFEST} is missing); run python -m trainer.prepare first"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    tok = manifest.get("tokenizer", {})
    if tok.get("name") != tokenizer.NAME:
        raise DataError(f"{data_dir} was tokenised with {tok.get('name')!r}, not {tokenizer.NAME}")
    return manifest


class SplitTokens:
    """One split's shards as a single read-only token stream (memory-mapped)."""

    def __init__(self, data_dir: str | Path, split: str, verify_hash: bool = False):
        self.data_dir = Path(data_dir)
        manifest = load_manifest(data_dir)
        if split not in manifest.get("splits", {}):
            raise DataError(f"{data_dir} has no {split!r} split")
        self.info = manifest["splits"][split]
        self.split = split
        self._maps: list[np.memmap] = []
        self._starts: list[int] = []
        total = 0
        digest = hashlib.sha256()
        for shard in self.info["shards"]:
            path = self.data_dir / shard["file"]
            if not path.is_file():
                raise DataError(f"shard {path} listed in the manifest is missing")
            if path.stat().st_size != shard["tokens"] * DTYPE.itemsize:
                raise DataError(
                    f"shard {path} is {path.stat().st_size} bytes, the manifest says "
                    f"{shard['tokens']} tokens ({shard['tokens'] * DTYPE.itemsize} bytes)"
                )
            if verify_hash:
                with open(path, "rb") as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest() != shard["sha256"]:
                    raise DataError(f"shard {path} does not match the sha256 in the manifest")
                digest.update(data)
            self._starts.append(total)
            self._maps.append(np.memmap(path, dtype=DTYPE, mode="r"))
            total += shard["tokens"]
        self.n_tokens = total
        if total != self.info["tokens"]:
            raise DataError(f"{split} split holds {total} tokens, the manifest says {self.info['tokens']}")
        if verify_hash and digest.hexdigest() != self.info["sha256"]:
            raise DataError(f"{split} split of {data_dir} does not match its manifest sha256")
        self.sha256 = self.info["sha256"]

    def __len__(self) -> int:
        return self.n_tokens

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) across shard boundaries, as int64."""
        if start < 0 or start + n > self.n_tokens:
            raise DataError(
                f"read of tokens [{start}, {start + n}) past the end of the {self.split} split ({self.n_tokens} tokens)"
            )
        out = np.empty(n, dtype=np.int64)  # (n,)
        filled, pos = 0, start
        i = int(np.searchsorted(self._starts, pos, side="right")) - 1
        while filled < n:
            m, s0 = self._maps[i], self._starts[i]
            take = min(n - filled, len(m) - (pos - s0))
            out[filled : filled + take] = m[pos - s0 : pos - s0 + take]
            filled, pos, i = filled + take, pos + take, i + 1
        return out


class TrainBatches:
    """The micro-batches of every rank, as a pure function of the step's starting token offset.

    One optimizer step consumes world * grad_accum * micro_batch consecutive windows of seq_len
    tokens starting at `offset`. Rank r's micro-step m reads windows (m * world + r) * micro_batch
    + [0, micro_batch): disjoint across ranks, contiguous per micro-batch, and independent of
    anything but the offset, so a resumed run reads exactly what an uninterrupted one would.
    """

    def __init__(
        self,
        tokens: SplitTokens,
        seq_len: int,
        micro_batch: int,
        grad_accum: int,
        world: int,
        rank: int,
        device: torch.device,
    ):
        self.tokens, self.T, self.B = tokens, seq_len, micro_batch
        self.accum, self.world, self.rank, self.device = grad_accum, world, rank, device
        self.tokens_per_step = seq_len * micro_batch * grad_accum * world

    def steps_available(self, offset: int) -> int:
        # the last window needs one extra token as the final target
        return max(0, (len(self.tokens) - 1 - offset) // self.tokens_per_step)

    def get(self, offset: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = (micro_step * self.world + self.rank) * self.B  # window index within the step
        start = offset + first * self.T
        buf = self.tokens.read(start, self.B * self.T + 1)  # (B*T + 1,)
        # consecutive windows share their boundary token: window j is buf[j*T : j*T + T + 1]
        x = torch.from_numpy(buf[:-1].reshape(self.B, self.T))  # (B, T)
        y = torch.from_numpy(buf[1:].reshape(self.B, self.T))  # (B, T)
        if self.device.type == "cuda":
            return (
                x.pin_memory().to(self.device, non_blocking=True),
                y.pin_memory().to(self.device, non_blocking=True),
            )
        return x, y


def eval_windows(n_tokens: int, seq_len: int, limit: int | None = None) -> list[tuple[int, int]]:
    """(start, length) of consecutive windows covering every token after the first once as a target.

    The last window may be shorter than seq_len, so a fixed test set is scored in full.
    """
    usable = n_tokens - 1 if limit is None else min(n_tokens - 1, limit)
    return [(s, min(seq_len, usable - s)) for s in range(0, usable, seq_len)]
