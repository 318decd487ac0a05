"""What the s3:// store and its multipart uploads share: part sizes, checksums as S3 spells them,
which errors are worth retrying, and the botocore client's configuration."""

from __future__ import annotations

import base64
import builtins
import zlib

from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, IncompleteReadError

from trainer.artifacts.errors import ArtifactError

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
# boto3's own defaults; measured against moto on loopback, larger parts were slower, not faster.
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_CONCURRENCY = 10
TRANSIENT_CODES = {
    "RequestTimeout",
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
    "503",
    "500",
}


class AccessDenied(ArtifactError):
    """S3 answered 403: the key is outside what these credentials may touch (or, for reads
    without s3:ListBucket, does not exist)."""


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def crc32(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


def error_code(e: BaseException) -> str:
    return e.response.get("Error", {}).get("Code", "") if isinstance(e, ClientError) else ""


def http_status(e: BaseException) -> int:
    return e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) if isinstance(e, ClientError) else 0


def is_transient(e: BaseException) -> bool:
    """Worth retrying: the connection (refused, dropped, timed out) or the server (5xx, throttled)."""
    if isinstance(e, ClientError):
        return error_code(e) in TRANSIENT_CODES or http_status(e) >= 500
    # botocore's ConnectionError covers refused/endpoint/connect-timeout; HTTPClientError covers a
    # connection closed or timed out mid-request and a response body cut off mid-read.
    if isinstance(e, (ConnectionError, HTTPClientError, IncompleteReadError)):
        return True
    if type(e).__module__.startswith(("s3transfer", "urllib3")):  # RetriesExceededError, ProtocolError
        return True
    return isinstance(e, (builtins.ConnectionError, TimeoutError))  # sockets reset or timed out


def same_checksum(server: str, ours: str) -> bool:
    """Compare a server's SHA-256 checksum with ours; a composite one ends in "-<parts>", which
    some servers leave off (moto does), so the part count is compared only when both give it."""
    (s_val, _, s_n), (o_val, _, o_n) = server.partition("-"), ours.partition("-")
    return s_val == o_val and (not s_n or not o_n or s_n == o_n)


def client_config(concurrency: int, path_style: bool) -> Config:
    """Timeouts on every call; botocore retries each request (standard mode) before ours."""
    return Config(
        connect_timeout=10,
        read_timeout=120,
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=max(10, 2 * concurrency + 2),
        s3={"addressing_style": "path" if path_style else "auto"},
        # We send our own SHA-256 per part; without this botocore would add a CRC32 of its own.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
