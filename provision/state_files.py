"""Small, safe file helpers for the state provision keeps on this machine: pinned host keys, the
`ssh` provider's host claims, the simulator's ledger and state.

Several processes (the service, workers, the CLI) may touch the same file, so every
read-modify-write holds an exclusive lock on a side file (`locked`), and every write goes to a
temporary file that is then renamed over the old one: a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock


def locked(path: Path) -> FileLock:
    """An exclusive lock, across processes and threads, for read-modify-writes of `path` (held on
    `<path>.lock`, private like the state it guards). Use as `with locked(path): ...`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock", mode=0o600)


def atomic_write_text(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace `path` with `text` in one rename; the file gets `mode` (private by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path, default: Any) -> Any:
    """The JSON in `path`, or `default` when the file does not exist yet."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
