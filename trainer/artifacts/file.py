"""file:// store: the embedded default, a folder on this machine (or a shared mount).

Keys are paths under the root folder. Every object is written to a hidden temp file beside its
final name, fsynced, then renamed into place (and the folder fsynced), so a reader sees a whole
file or none. The SHA-256 of a stored file is computed by reading it: a local folder has nowhere
trustworthy to keep metadata, and a read is cheap here. A large file interrupted mid-copy is
copied again from its start (there are no parts to resume on a local disk).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from trainer.artifacts import manifest as mf
from trainer.artifacts.errors import ArtifactError, IntegrityError
from trainer.artifacts.store import ArtifactStore, ObjectInfo, TransferStats, join_key

_CHUNK = 16 << 20
_PARTIAL = ".partial-"  # in the names of temp files; never listed as keys


def _is_partial(name: str) -> bool:
    return name.startswith(".") and _PARTIAL in name


class FileStore(ArtifactStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def _temp_beside(self, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest.parent / f".{dest.name}{_PARTIAL}{uuid.uuid4().hex[:12]}"

    def _commit(self, tmp: Path, dest: Path) -> None:
        os.replace(tmp, dest)
        mf.fsync_file(dest.parent)

    def _stat(self, key: str) -> ObjectInfo | None:
        p = self._path(key)
        if not p.is_file():
            return None
        return ObjectInfo(size=p.stat().st_size, sha256=mf.sha256_file(p))

    def _upload(self, local: Path, key: str, size: int, sha256: str | None, stats: TransferStats) -> str:
        dest = self._path(key)
        for stale in dest.parent.glob(f".{dest.name}{_PARTIAL}*") if dest.parent.is_dir() else []:
            stale.unlink(missing_ok=True)  # left by a copy that was killed part-way
        tmp = self._temp_beside(dest)
        h = hashlib.sha256()
        try:
            with open(local, "rb") as src, open(tmp, "wb") as out:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            got = h.hexdigest()
            if sha256 is not None and got != sha256:
                raise IntegrityError(
                    f"{local} has sha256 {got}, its manifest says {sha256}: the local "
                    f"file changed or is corrupt; nothing was stored"
                )
            if tmp.stat().st_size != size:
                raise IntegrityError(f"{local} changed size while it was copied")
            self._commit(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        stats.bytes_sent += size
        return got

    def _download(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise ArtifactError(f"{self.uri_of(key)} does not exist")
        shutil.copyfile(src, dest)

    def _put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        tmp = self._temp_beside(dest)
        try:
            mf.fsync_write(tmp, data)
            self._commit(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _get_bytes(self, key: str) -> bytes | None:
        p = self._path(key)
        return p.read_bytes() if p.is_file() else None

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        p = self._path(join_key(key))
        if not p.is_file():
            raise ArtifactError(f"{self.uri_of(key)} does not exist")
        with p.open("rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def _list_keys(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if not _is_partial(name):
                    yield Path(dirpath, name).relative_to(self.root).as_posix()

    def _delete_key(self, key: str) -> None:
        p = self._path(key)
        p.unlink(missing_ok=True)
        if p.parent.is_dir():
            mf.fsync_file(p.parent)

    def _delete_prefix(self, prefix: str) -> None:
        p = self._path(prefix)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.is_file():
            p.unlink()
