"""The checkpoint manifest, without torch: hashing, durable writes, and verifying a folder.

`trainer.checkpoint` (which imports torch) writes checkpoints with these helpers; the artifact
store (imported by the service, which must never load torch) reads and checks the same manifests
with them. One definition of what "committed and intact" means, used on both sides.

    manifest.json  {"format": 1, "step": N, "tokens": T,
                    "files": {"model.safetensors": {"bytes": n, "sha256": h}, ...}}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from trainer.errors import CheckpointError

FORMAT = 1
MANIFEST = "manifest.json"
REQUIRED = ("model.safetensors", "optimizer.pt", "state.pt", "config.json", "metrics.json")
_CHUNK = 1 << 22


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_write(path: str | Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_file(path: str | Path) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_file_name(name: str, where: str) -> str:
    """A manifest names plain files inside its folder; anything else could write outside it."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or name == MANIFEST
    ):
        raise CheckpointError(f"{where}: the manifest lists an invalid file name {name!r}")
    return name


def parse(data: bytes | str, where: str) -> dict:
    """Parse and sanity-check manifest bytes (format, and every file's name, size and sha256)."""
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{where}: {MANIFEST} is unreadable") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{where}: unknown manifest format {manifest.get('format')!r}")
    for name, meta in files.items():
        check_file_name(name, where)
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("bytes"), int)
            or meta["bytes"] < 0
            or not isinstance(meta.get("sha256"), str)
            or len(meta["sha256"]) != 64
        ):
            raise CheckpointError(f"{where}: the manifest entry for {name} is malformed")
    return manifest


def verify(ckpt: str | Path) -> dict:
    """Check every file against the manifest; returns the manifest or raises CheckpointError."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint {ckpt} does not exist")
    mpath = ckpt / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {ckpt} is not committed: {MANIFEST} is missing")
    manifest = parse(mpath.read_bytes(), f"checkpoint {ckpt}")
    files = manifest["files"]
    for name in REQUIRED:
        if name not in files:
            raise CheckpointError(f"checkpoint {ckpt}: the manifest does not list {name}")
    for name, meta in files.items():
        f = ckpt / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {ckpt}: {name} is missing")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(
                f"checkpoint {ckpt}: {name} is {size} bytes, the manifest says {meta['bytes']} (truncated or corrupt)"
            )
        if sha256_file(f) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {ckpt}: {name} does not match its sha256 (corrupt)")
    return manifest
