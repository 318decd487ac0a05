"""Artifact store: checkpoints and data files under a URI, `file://` (embedded default) or `s3://`.

    from trainer.artifacts import open_store
    store = open_store("s3://bucket/runs/r1", endpoint_url="http://127.0.0.1:9000")
    store.put_checkpoint("run/checkpoints/step_000100", "checkpoints/step_000100")
    store.list_checkpoints("checkpoints")          # only committed ones (manifest present)
    store.get_checkpoint("checkpoints/step_000100", "restore/step_000100")

Modules: manifest (the checkpoint manifest, shared with trainer.checkpoint), store (the interface
and the checkpoint rules), file (file://), s3 (s3://, boto3), errors, retry, and __main__ (the
push/pull/list CLI). The short-lived credentials a node uses are minted by the service
(orchestrator/grants.py); a node only reads them.

Imports neither torch (the service imports this) nor boto3 (loaded only when an s3:// store is
opened).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from trainer.artifacts.errors import ArtifactError, IntegrityError, TransferError
from trainer.artifacts.store import ArtifactStore, TransferStats

__all__ = [
    "open_store",
    "split_uri",
    "ArtifactStore",
    "TransferStats",
    "ArtifactError",
    "IntegrityError",
    "TransferError",
]


def split_uri(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket or '' for file, path/prefix) of an artifact URI; ArtifactError if bad."""
    u = urlparse(uri)
    if u.scheme == "file":
        if u.netloc not in ("", "localhost") or not u.path.startswith("/"):
            raise ArtifactError(f"artifact URI {uri!r}: a file:// URI needs an absolute path (file:///data/artifacts)")
        return "file", "", unquote(u.path)
    if u.scheme == "s3":
        if not u.netloc or u.query or u.fragment:
            raise ArtifactError(f"artifact URI {uri!r}: expected s3://BUCKET[/PREFIX]")
        return "s3", u.netloc, u.path.strip("/")
    raise ArtifactError(f"artifact URI {uri!r}: the scheme must be file:// or s3://")


def open_store(
    uri: str, *, endpoint_url: str | None = None, credentials: dict | None = None, **options
) -> ArtifactStore:
    """The store rooted at `uri`.

    file:///abs/path       a local folder (created on first write).
    s3://bucket[/prefix]   through boto3; `endpoint_url` for any S3-compatible server (default:
                           AWS, or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL from the environment);
                           `credentials` {access_key_id, secret_access_key, session_token?,
                           region?}, default: boto3's chain (environment, profile, instance role).
    options (s3 only): part_size, concurrency, state_dir, region, attempts.
    """
    scheme, bucket, path = split_uri(uri)
    if scheme == "file":
        from trainer.artifacts.file import FileStore

        return FileStore(Path(path))
    from trainer.artifacts.s3 import S3Store  # imports boto3: only for s3://

    return S3Store(bucket, path, endpoint_url=endpoint_url, credentials=credentials, **options)
