"""s3:// store through boto3: any S3-compatible endpoint (AWS, MinIO, moto, ...).

Uploads. A file up to one part is a single PutObject; larger files are multipart uploads whose
parts are read in order (so the whole file's SHA-256 is computed in the same pass) and sent by
`concurrency` threads, at most 2 x `concurrency` + 1 parts held in memory (160 MiB by default).

How a stored object's SHA-256 is checked without downloading it again. An S3 ETag is not usable:
a multipart object's ETag is the MD5 of its parts' MD5s (and under SSE-KMS not even that). So:
- the whole file's SHA-256 is computed from the very bytes that are sent, in the same read, and
  must equal the manifest's, or the upload is aborted before it completes (the local file is not
  what its manifest says);
- those bytes reach the server intact: every part carries a CRC32 (`ChecksumCRC32`, as boto3's
  own uploads do; a single PutObject carries the SHA-256 itself, `ChecksumSHA256`), which S3 and
  the S3-compatible servers with additional checksums recompute on arrival, refusing a part whose
  bytes differ. After completing, HeadObject's "checksum of checksums" (CRC32 over the parts'
  CRC32s, "-N") must equal ours, and its size ours;
- the SHA-256 is stored as object metadata (`x-amz-meta-sha256`) and checked on HeadObject; later
  uploads use it to skip files already stored, and every download re-hashes each file against the
  manifest, so a corruption at rest is caught before use.
A SHA-256 per part instead of a CRC32 would hash every byte twice over (measured: enough CPU to
lose to boto3's `upload_file` on a busy two-core machine), without proving more than the chain
above; a full re-read after upload would move every byte twice.

Resuming. A multipart upload's id is kept in a small journal file (`state_dir`) until it completes.
A later attempt at the same file (same destination, size and SHA-256) lists the parts already
uploaded (ListParts, allowed on the object's own key, so a node's scoped credentials suffice) and
re-sends only those missing or not matching the local bytes (by CRC32 checksum when the server
reports it, else by the part's ETag, which for a single part is its MD5). Without a journal (a
new machine) the file is restarted; a bucket lifecycle rule for incomplete multipart uploads
(AbortIncompleteMultipartUpload) cleans up what such restarts leave.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    ClientError,
    NoCredentialsError,
)

from trainer.artifacts.errors import ArtifactError, IntegrityError
from trainer.artifacts.retry import with_retries
from trainer.artifacts.s3_multipart import MultipartUpload
from trainer.artifacts.s3_wire import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    MIN_PART_SIZE,
    AccessDenied,
    b64,
    client_config,
    error_code,
    http_status,
    is_transient,
    same_checksum,
)
from trainer.artifacts.store import ArtifactStore, ObjectInfo, TransferStats, join_key


class S3Store(ArtifactStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        credentials: dict | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        state_dir: str | Path | None = None,
        attempts: int = 5,
    ):
        if part_size < MIN_PART_SIZE:
            raise ArtifactError(f"part size {part_size} is below S3's minimum of {MIN_PART_SIZE} bytes")
        if concurrency < 1:
            raise ArtifactError("concurrency must be at least 1")
        self.bucket, self.prefix = bucket, join_key(prefix)
        self.uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.part_size, self.concurrency, self.attempts = part_size, concurrency, attempts
        self.endpoint_url = endpoint_url
        self.state_dir = Path(
            state_dir
            or os.environ.get("TRAINYARD_ARTIFACT_STATE_DIR")
            or Path.home() / ".cache" / "trainyard" / "uploads"
        )
        creds = credentials or {}
        session = boto3.session.Session(
            aws_access_key_id=creds.get("access_key_id"),
            aws_secret_access_key=creds.get("secret_access_key"),
            aws_session_token=creds.get("session_token"),
            region_name=region
            or creds.get("region")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1",
        )
        # Path-style addressing for custom endpoints: a loopback or in-cluster server has no
        # wildcard DNS for bucket.host names.
        self.client = session.client(
            "s3", endpoint_url=endpoint_url, config=client_config(concurrency, endpoint_url is not None)
        )

    # --- helpers -----------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        """One API call with our retries on top of botocore's; access errors become one line."""
        try:
            return with_retries(
                lambda: fn(*args, **kwargs), what=what, is_transient=is_transient, attempts=self.attempts
            )
        except NoCredentialsError:
            raise ArtifactError(
                f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass credentials)"
            ) from None
        except ClientError as e:
            if error_code(e) in ("AccessDenied", "403"):
                raise AccessDenied(f"{what}: access denied") from None
            if error_code(e) in (
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "InvalidToken",
                "ExpiredToken",
                "TokenRefreshRequired",
            ):
                raise ArtifactError(f"{what}: credentials refused ({error_code(e)})") from None
            if error_code(e) == "NoSuchBucket":
                raise ArtifactError(f"{what}: bucket {self.bucket} does not exist") from None
            raise

    # --- primitives --------------------------------------------------------------------------------
    def _stat(self, key: str) -> ObjectInfo | None:
        try:
            r = self._call(f"HEAD {self.uri_of(key)}", self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except AccessDenied:
            # 403: without s3:ListBucket (a node's grant has none) S3 answers 403 for a key that
            # does not exist. Taken as absent: an upload then fails on its PUT if the key is
            # really out of bounds, and a download reports it missing or not permitted.
            return None
        except ClientError as e:
            if http_status(e) == 404 or error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(size=r["ContentLength"], sha256=r.get("Metadata", {}).get("sha256"))

    def _put_bytes(self, key: str, data: bytes, digest: bytes | None = None) -> None:
        """One PUT whose body S3 checks against its SHA-256 (`digest`, when the caller has it)."""
        digest = digest or hashlib.sha256(data).digest()
        self._call(
            f"PUT {self.uri_of(key)}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            ChecksumSHA256=b64(digest),
            Metadata={"sha256": digest.hex()},
        )

    def _get_bytes(self, key: str) -> bytes | None:
        def fetch() -> bytes:
            r = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return r["Body"].read()  # inside the retry: a body cut off mid-read is fetched again

        try:
            return self._call(f"GET {self.uri_of(key)}", fetch)
        except AccessDenied:
            return None  # 403: missing, or not ours (see _stat)
        except ClientError as e:
            if error_code(e) in ("NoSuchKey", "404") or http_status(e) == 404:
                return None
            raise

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            r = self._call(
                f"GET {self.uri_of(key)}", self.client.get_object, Bucket=self.bucket, Key=self._key(join_key(key))
            )
        except ClientError as e:
            if http_status(e) == 404 or error_code(e) in ("404", "NoSuchKey"):
                raise ArtifactError(f"{self.uri_of(key)} does not exist") from None
            raise
        yield from r["Body"].iter_chunks(chunk_size)

    def _list_keys(self, prefix: str) -> Iterator[str]:
        root = self._key(prefix)
        full = root + "/" if root else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        token = None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kw["ContinuationToken"] = token
            page = self._call(f"LIST {self.uri_of(prefix)}", self.client.list_objects_v2, **kw)
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _delete_key(self, key: str) -> None:
        self._call(f"DELETE {self.uri_of(key)}", self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def _delete_prefix(self, prefix: str) -> None:
        keys = [self._key(k) for k in self._list_keys(prefix)]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            self._call(
                f"DELETE {self.uri_of(prefix)}/*",
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )
        ups = self._call(
            "LIST uploads", self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=self._key(prefix) + "/"
        )
        for up in ups.get("Uploads", []):
            self._call(
                "ABORT upload",
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=up["Key"],
                UploadId=up["UploadId"],
            )

    def _download(self, key: str, dest: Path) -> None:
        # s3transfer: parallel ranged GETs, each retried; the caller re-hashes the whole file.
        cfg = TransferConfig(
            multipart_threshold=self.part_size,
            multipart_chunksize=self.part_size,
            max_concurrency=self.concurrency,
            num_download_attempts=self.attempts,
        )
        try:
            self._call(
                f"GET {self.uri_of(key)}", self.client.download_file, self.bucket, self._key(key), str(dest), Config=cfg
            )
        except ClientError as e:
            if http_status(e) == 404 or error_code(e) in ("404", "NoSuchKey"):
                raise ArtifactError(f"{self.uri_of(key)} does not exist") from None
            raise

    def _upload(self, local: Path, key: str, size: int, sha256: str | None, stats: TransferStats) -> str:
        if size <= self.part_size:
            got = self._upload_single(local, key, size, sha256)
        else:
            got = MultipartUpload(self, local, key, size, sha256, stats).run()
        self._check_stored(key, size, got[0], got[1], got[2])
        stats.bytes_sent += size
        return got[0]

    def _upload_single(self, local: Path, key: str, size: int, sha256: str | None) -> tuple[str, str, str]:
        data = local.read_bytes()
        digest = hashlib.sha256(data).digest()
        if len(data) != size or (sha256 is not None and digest.hex() != sha256):
            raise IntegrityError(
                f"{local} has sha256 {digest.hex()} ({len(data)} bytes), its manifest "
                f"says {sha256} ({size} bytes): nothing was stored"
            )
        self._put_bytes(key, data, digest)
        return digest.hex(), "ChecksumSHA256", b64(digest)

    def _check_stored(self, key: str, size: int, sha256: str, field: str, checksum: str) -> None:
        """HeadObject after an upload: the size, our recorded SHA-256, and the server's checksum."""
        r = self._call(
            f"HEAD {self.uri_of(key)}",
            self.client.head_object,
            Bucket=self.bucket,
            Key=self._key(key),
            ChecksumMode="ENABLED",
        )
        server = r.get(field)
        if (
            r["ContentLength"] != size
            or r.get("Metadata", {}).get("sha256") != sha256
            or (server is not None and not same_checksum(server, checksum))
        ):
            self._delete_key(key)  # so a retry uploads it again instead of skipping it
            raise IntegrityError(
                f"{self.uri_of(key)} does not match what was sent "
                f"({r['ContentLength']} bytes, checksum {server}; sent {size} bytes, "
                f"checksum {checksum})"
            )

    def journal_path(self, local: Path, key: str, size: int, sha256: str | None) -> Path:
        ident = "|".join(
            [
                self.endpoint_url or "",
                self.bucket,
                self._key(key),
                str(local.resolve()),
                str(size),
                sha256 or "",
                str(self.part_size),
            ]
        )
        return self.state_dir / (hashlib.sha256(ident.encode()).hexdigest()[:32] + ".json")


__all__ = ["S3Store"]
