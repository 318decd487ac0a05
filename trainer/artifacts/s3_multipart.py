"""One multipart upload of a file to the s3:// store, resumable from its journal (see s3.py's
module doc for how the bytes are checked on the way)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from trainer.artifacts import manifest as mf
from trainer.artifacts.errors import IntegrityError
from trainer.artifacts.s3_wire import crc32, error_code
from trainer.artifacts.store import TransferStats

if TYPE_CHECKING:  # the store drives an upload; the upload calls back into the store
    from trainer.artifacts.s3 import S3Store


class MultipartUpload:
    """One file as a multipart upload: parallel parts, resumable through a journal file."""

    def __init__(self, store: S3Store, local: Path, key: str, size: int, sha256: str | None, stats: TransferStats):
        self.s, self.local, self.key, self.size, self.sha256, self.stats = (store, local, key, size, sha256, stats)
        self.bucket, self.obj = store.bucket, store._key(key)
        self.journal = store.journal_path(local, key, size, sha256)
        self.lock = threading.Lock()

    def run(self) -> tuple[str, str, str]:
        upload_id, done = self._resume() or (self._create(), {})
        n_parts = -(-self.size // self.s.part_size)
        whole = hashlib.sha256()
        read = 0
        parts: dict[int, dict] = {}
        pool = ThreadPoolExecutor(self.s.concurrency, thread_name_prefix="s3-part")
        # The whole-file SHA-256 runs on its own thread, fed the parts in order (one worker keeps
        # them in order; hashlib releases the GIL), so hashing never holds up the next read.
        hasher = ThreadPoolExecutor(1, thread_name_prefix="s3-sha256")
        pending: set[Future] = set()
        try:
            with open(self.local, "rb") as f:
                for number in range(1, n_parts + 1):
                    data = f.read(self.s.part_size)
                    hasher.submit(whole.update, data)
                    read += len(data)
                    reused = self._reusable(done.get(number), data)
                    if reused is not None:
                        parts[number] = reused
                        self.stats.parts_reused += 1
                        continue
                    # Keep a part queued behind each busy thread (so none waits on the reader),
                    # and no more: at most 2 x concurrency parts in memory.
                    if len(pending) >= 2 * self.s.concurrency:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            fut.result()
                    pending.add(pool.submit(self._send, upload_id, number, data, parts))
            for fut in pending:
                fut.result()
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)
            hasher.shutdown(wait=True)
        got = whole.hexdigest()
        if len(parts) != n_parts or read != self.size or (self.sha256 and got != self.sha256):
            self._abort(upload_id)
            raise IntegrityError(
                f"{self.local} has sha256 {got}, its manifest says {self.sha256}: the "
                f"local file changed or is corrupt; nothing was stored"
            )
        ordered = [parts[i] for i in range(1, n_parts + 1)]
        self._complete(upload_id, ordered)
        self.journal.unlink(missing_ok=True)
        composite = crc32(b"".join(base64.b64decode(p["ChecksumCRC32"]) for p in ordered))
        return got, "ChecksumCRC32", f"{composite}-{n_parts}"

    def _create(self) -> str:
        r = self.s._call(
            f"CREATE upload {self.s.uri_of(self.key)}",
            self.s.client.create_multipart_upload,
            Bucket=self.bucket,
            Key=self.obj,
            ChecksumAlgorithm="CRC32",
            ChecksumType="COMPOSITE",
            Metadata={"sha256": self.sha256} if self.sha256 else {},
        )
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.journal.with_suffix(".tmp")
        mf.fsync_write(
            tmp,
            json.dumps(
                {
                    "bucket": self.bucket,
                    "key": self.obj,
                    "upload_id": r["UploadId"],
                    "part_size": self.s.part_size,
                    "local": str(self.local),
                }
            ).encode(),
        )
        os.replace(tmp, self.journal)
        return r["UploadId"]

    def _resume(self) -> tuple[str, dict[int, dict]] | None:
        """(upload id, parts already uploaded) from an interrupted attempt, or None."""
        if self.sha256 is None or not self.journal.is_file():
            return None  # without a known SHA-256 the old parts could belong to other bytes
        try:
            upload_id = json.loads(self.journal.read_text())["upload_id"]
        except (ValueError, KeyError):
            return None
        done: dict[int, dict] = {}
        marker = 0
        try:
            while True:
                page = self.s._call(
                    f"LIST parts {self.s.uri_of(self.key)}",
                    self.s.client.list_parts,
                    Bucket=self.bucket,
                    Key=self.obj,
                    UploadId=upload_id,
                    PartNumberMarker=marker,
                )
                for p in page.get("Parts", []):
                    done[p["PartNumber"]] = p
                if not page.get("IsTruncated"):
                    break
                marker = page["NextPartNumberMarker"]
        except ClientError as e:
            if error_code(e) == "NoSuchUpload":  # completed or aborted since: start again
                self.journal.unlink(missing_ok=True)
                return None
            raise
        return upload_id, done

    @staticmethod
    def _reusable(part: dict | None, data: bytes) -> dict | None:
        """The part's entry for CompleteMultipartUpload if the stored part holds exactly `data`."""
        if part is None or part.get("Size") != len(data):
            return None
        mine = crc32(data)
        theirs = part.get("ChecksumCRC32")
        same = theirs == mine if theirs else part["ETag"].strip('"') == hashlib.md5(data).hexdigest()
        return {"PartNumber": part["PartNumber"], "ETag": part["ETag"], "ChecksumCRC32": mine} if same else None

    def _send(self, upload_id: str, number: int, data: bytes, parts: dict[int, dict]) -> None:
        checksum = crc32(data)
        r = self.s._call(
            f"PUT part {number} of {self.s.uri_of(self.key)}",
            self.s.client.upload_part,
            Bucket=self.bucket,
            Key=self.obj,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ChecksumCRC32=checksum,
        )
        with self.lock:
            parts[number] = {"PartNumber": number, "ETag": r["ETag"], "ChecksumCRC32": checksum}

    def _complete(self, upload_id: str, ordered: list[dict]) -> None:
        try:
            self.s._call(
                f"COMPLETE upload {self.s.uri_of(self.key)}",
                self.s.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=self.obj,
                UploadId=upload_id,
                MultipartUpload={"Parts": ordered},
            )
        except ClientError as e:
            # A retried Complete whose first try did land answers NoSuchUpload; the HeadObject
            # check that follows tells whether the object is really there and whole.
            if error_code(e) != "NoSuchUpload":
                raise

    def _abort(self, upload_id: str) -> None:
        self.journal.unlink(missing_ok=True)
        with contextlib.suppress(ClientError, BotoCoreError):  # best effort: the lifecycle rule collects the rest
            self.s.client.abort_multipart_upload(Bucket=self.bucket, Key=self.obj, UploadId=upload_id)
