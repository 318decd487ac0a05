"""ArtifactStore: checkpoints and data files under a URI, committed by a manifest written last.

A checkpoint in a store is the folder layout of `docs/trainer-contract.md` under a key prefix:
`<prefix>/model.safetensors`, ..., `<prefix>/manifest.json`. The rules every backend keeps:

- put_checkpoint uploads every file the local manifest lists, checks each one's SHA-256 against
  the manifest (while streaming it, and on the stored object), and only then writes manifest.json.
  Whatever stops an upload half-way (a kill, a lost network) leaves no manifest, so the prefix is not
  listed and not pulled; running the same upload again skips the files already stored with the
  right size and SHA-256 and completes it.
- get_checkpoint downloads into a `.tmp-` folder beside the destination, checks every file against
  the manifest, writes the manifest last, then renames the folder into place: the local copy is
  either complete and verified or absent, exactly like a checkpoint the trainer saved itself.
- delete_checkpoint deletes the manifest first, so a half-deleted checkpoint no longer looks whole.

Backends implement a handful of object primitives (`_stat`, `_upload`, `_download`, `_put_bytes`,
`_get_bytes`, `_list_keys`, `_delete_key`, `_delete_prefix`); the checkpoint semantics live here, once.
"""

from __future__ import annotations

import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from trainer.artifacts import manifest as mf
from trainer.artifacts.errors import ArtifactError, IntegrityError
from trainer.errors import CheckpointError


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    sha256: str | None  # as recorded when we stored it (None: stored by something else)


@dataclass
class TransferStats:
    """What one operation moved; the CLIs print it as their JSON summary line."""

    files_sent: int = 0
    files_skipped: int = 0  # already stored with the right size and SHA-256
    bytes_sent: int = 0
    parts_reused: int = 0  # multipart parts found already uploaded by an interrupted attempt
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def join_key(*parts: str) -> str:
    """'/'-join non-empty parts; refuse keys that could escape a prefix or a local folder."""
    key = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    for seg in key.split("/") if key else []:
        if seg in ("", ".", "..") or "\\" in seg or "\0" in seg:
            raise ArtifactError(f"invalid artifact key {key!r}")
    return key


class ArtifactStore(ABC):
    """A store rooted at `uri`; every key given to a method is relative to that root."""

    uri: str

    # --- object primitives, one set per backend ------------------------------------------------
    @abstractmethod
    def _stat(self, key: str) -> ObjectInfo | None:
        """Size and recorded SHA-256 of an object, or None when there is none."""

    @abstractmethod
    def _upload(self, local: Path, key: str, size: int, sha256: str | None, stats: TransferStats) -> str:
        """Store a local file under key; returns its SHA-256 as streamed. When `sha256` is given a
        mismatch (the local file is not what its manifest says) stores nothing and raises
        IntegrityError. The stored object is checked before this returns."""

    @abstractmethod
    def _download(self, key: str, dest: Path) -> None:
        """Write the object to dest (a temporary path the caller owns and checks)."""

    @abstractmethod
    def _put_bytes(self, key: str, data: bytes) -> None:
        """Store a small object in one atomic write."""

    @abstractmethod
    def _get_bytes(self, key: str) -> bytes | None:
        """A small object's bytes, or None when there is none."""

    @abstractmethod
    def _list_keys(self, prefix: str) -> Iterator[str]:
        """Every key under prefix (a folder-like prefix: 'a/b' lists 'a/b/...', never 'a/bc')."""

    @abstractmethod
    def _delete_prefix(self, prefix: str) -> None:
        """Delete every object (and unfinished upload) under prefix."""

    @abstractmethod
    def _delete_key(self, key: str) -> None:
        """Delete one object if it exists."""

    @abstractmethod
    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """An object's bytes in chunks, for serving it onward (the service streams checkpoint
        files to the CLI this way); ArtifactError if it does not exist. Not verified here: the
        reader checks the SHA-256 its manifest records."""

    def uri_of(self, key: str) -> str:
        return self.uri.rstrip("/") + ("/" + key if key else "")

    def read_bytes(self, key: str) -> bytes | None:
        """A small object's bytes (a manifest), or None when there is none. Reads one known key
        (no listing), so it works with a node's credentials, which cannot list the bucket; on S3
        without s3:ListBucket a missing key answers 403, also taken as absent."""
        return self._get_bytes(join_key(key))

    # --- checkpoints ------------------------------------------------------------------------------
    def put_checkpoint(self, local_dir: str | Path, key_prefix: str = "") -> TransferStats:
        """Upload a committed local checkpoint; its manifest goes last. Safe to re-run after any
        interruption: stored files that match are skipped, and the manifest is rewritten only once
        every file is in place and checked."""
        t0 = time.monotonic()
        local_dir = Path(local_dir)
        manifest_bytes, manifest = _read_local_manifest(local_dir)
        prefix = join_key(key_prefix)
        stats = TransferStats()
        mkey = join_key(prefix, mf.MANIFEST)
        remote = self._get_bytes(mkey)
        if remote == manifest_bytes:  # already committed, byte for byte: nothing to do
            stats.files_skipped = len(manifest["files"])
            stats.seconds = time.monotonic() - t0
            return stats
        if remote is not None:
            # Another checkpoint (a re-save of the same step) is committed here: uncommit it first,
            # so no reader ever sees its manifest over a mix of old and new files.
            self._delete_key(mkey)
        for name, meta in manifest["files"].items():
            key = join_key(prefix, name)
            have = self._stat(key)
            if have is not None and have.size == meta["bytes"] and have.sha256 == meta["sha256"]:
                stats.files_skipped += 1
                continue
            self._upload(local_dir / name, key, meta["bytes"], meta["sha256"], stats)
            stats.files_sent += 1
        self._put_bytes(mkey, manifest_bytes)  # the commit point
        stats.seconds = time.monotonic() - t0
        return stats

    def read_manifest(self, key_prefix: str) -> dict | None:
        """The committed manifest under key_prefix, or None when nothing is committed there."""
        data = self._get_bytes(join_key(key_prefix, mf.MANIFEST))
        return None if data is None else mf.parse(data, self.uri_of(join_key(key_prefix)))

    def list_checkpoints(self, prefix: str = "") -> list[str]:
        """Key prefixes of the committed checkpoints under prefix (those with a manifest), sorted."""
        found = []
        for key in self._list_keys(join_key(prefix)):
            if key == mf.MANIFEST:
                found.append("")
            elif key.endswith("/" + mf.MANIFEST):
                found.append(key[: -len(mf.MANIFEST) - 1])
        return sorted(found)

    def get_checkpoint(self, key_prefix: str, local_dir: str | Path) -> TransferStats:
        """Download a committed checkpoint into local_dir, verified, manifest last, then renamed
        into place. A re-run after an interruption keeps the files already fetched and intact."""
        t0 = time.monotonic()
        prefix = join_key(key_prefix)
        where = self.uri_of(prefix)
        data = self._get_bytes(join_key(prefix, mf.MANIFEST))
        if data is None:
            raise ArtifactError(
                f"{where} is not a committed checkpoint (no {mf.MANIFEST}, or no permission to read it)"
            )
        manifest = mf.parse(data, where)
        local_dir = Path(local_dir)
        stats = TransferStats()
        if (local_dir / mf.MANIFEST).is_file() and (local_dir / mf.MANIFEST).read_bytes() == data:
            try:
                mf.verify(local_dir)
                stats.files_skipped = len(manifest["files"])
                return stats
            except CheckpointError:
                pass  # a damaged local copy: fetch it again below
        local_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_dir.parent / f".tmp-{local_dir.name}"
        tmp.mkdir(exist_ok=True)
        (tmp / mf.MANIFEST).unlink(missing_ok=True)
        for name, meta in manifest["files"].items():
            dest = tmp / name
            if dest.is_file() and dest.stat().st_size == meta["bytes"] and mf.sha256_file(dest) == meta["sha256"]:
                stats.files_skipped += 1  # fetched by an interrupted earlier pull
                continue
            part = tmp / f".{name}.part"
            self._download(join_key(prefix, name), part)
            got_size, got_sha = part.stat().st_size, mf.sha256_file(part)
            if got_size != meta["bytes"] or got_sha != meta["sha256"]:
                part.unlink()
                raise IntegrityError(
                    f"{self.uri_of(join_key(prefix, name))} is {got_size} bytes with "
                    f"sha256 {got_sha[:12]}..., the manifest says {meta['bytes']} "
                    f"bytes, {meta['sha256'][:12]}... (corrupt in the store)"
                )
            mf.fsync_file(part)
            part.replace(dest)
            stats.files_sent += 1
            stats.bytes_sent += got_size
        for extra in tmp.iterdir():  # leftovers of another checkpoint pulled into the same tmp
            if extra.name not in manifest["files"]:
                shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
        mf.fsync_write(tmp / mf.MANIFEST, data)
        mf.fsync_file(tmp)
        if local_dir.exists():
            shutil.rmtree(local_dir)
        tmp.rename(local_dir)
        mf.fsync_file(local_dir.parent)
        stats.seconds = time.monotonic() - t0
        return stats

    def delete_checkpoint(self, key_prefix: str) -> None:
        """Uncommit (manifest first), then delete every object under the prefix."""
        prefix = join_key(key_prefix)
        if not prefix:
            raise ArtifactError("refusing to delete the whole store: give a checkpoint's prefix")
        self._delete_key(join_key(prefix, mf.MANIFEST))
        self._delete_prefix(prefix)

    # --- single files (data shards) ----------------------------------------------------------------
    def put_file(self, local: str | Path, key: str, sha256: str | None = None) -> str:
        """Upload one file (its SHA-256 recorded with it, checked against `sha256` if given)."""
        local = Path(local)
        if not local.is_file():
            raise ArtifactError(f"{local} is not a file")
        # Known up front because S3 fixes an object's metadata when its upload starts; a shard's
        # SHA-256 is usually in the data manifest already, so this read is rarely needed.
        sha256 = sha256 or mf.sha256_file(local)
        return self._upload(local, join_key(key), local.stat().st_size, sha256, TransferStats())

    def get_file(self, key: str, local: str | Path, sha256: str | None = None) -> str:
        """Download one file atomically (temp + rename), checked against `sha256` or, failing
        that, against the SHA-256 recorded when it was stored. Returns its SHA-256."""
        key, local = join_key(key), Path(local)
        info = self._stat(key)
        if info is None:
            raise ArtifactError(f"{self.uri_of(key)} does not exist (or is not readable with these credentials)")
        expected = sha256 or info.sha256
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.parent / f".{local.name}.part"
        self._download(key, part)
        got = mf.sha256_file(part)
        if expected is not None and got != expected:
            part.unlink()
            raise IntegrityError(f"{self.uri_of(key)} has sha256 {got}, expected {expected} (corrupt in the store)")
        mf.fsync_file(part)
        part.replace(local)
        return got


def _read_local_manifest(local_dir: Path) -> tuple[bytes, dict]:
    """The local manifest (bytes as written, parsed) after checking that every file it lists is
    there with its size; the SHA-256 of each is checked while it is uploaded."""
    mpath = local_dir / mf.MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {local_dir} is not committed: {mf.MANIFEST} is missing")
    data = mpath.read_bytes()
    manifest = mf.parse(data, f"checkpoint {local_dir}")
    for name, meta in manifest["files"].items():
        f = local_dir / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {local_dir}: {name} is missing")
        if f.stat().st_size != meta["bytes"]:
            raise CheckpointError(
                f"checkpoint {local_dir}: {name} is {f.stat().st_size} bytes, the "
                f"manifest says {meta['bytes']} (truncated or corrupt)"
            )
    return data, manifest
