"""Checkpoints leave the node as they are committed, and a run can resume from one in a store.

Uploads (train config `artifact_uri`). Rank 0 hands every committed checkpoint to one background
thread, which uploads them one at a time, in commit order, to `<artifact_uri>/<folder name>`
(`ArtifactStore.put_checkpoint`: every file checked against the manifest, the manifest last), so
training never waits for the network. Each upload opens a fresh store, so credentials the service
rewrites in the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`) are read again; the S3
endpoint is `AWS_ENDPOINT_URL_S3`. After each upload the thread appends a metrics line:

    {"kind": "checkpoint_stored", "step", "tokens", "val_loss", "bytes", "uri", "seconds"}
    {"kind": "checkpoint_upload_failed", "step", "error"}     (after the store's own retries)

A failed upload does not stop training; the next commit is uploaded as usual. The names of the
checkpoints queued or in flight are `pending()`, which pruning (keep_last) must leave alone. At the
end the trainer waits for the queue (`drain`) and fails if the last checkpoint was not stored
(`require_stored`), since terminating the node would lose it.

Resume (`train --resume-from URI`). `pull_for_resume` fetches one committed checkpoint from a store
into RUN_DIR/checkpoints/<its folder name> (verified, manifest last, renamed into place) and points
`latest` at it, unless the run dir already holds a checkpoint at least as new. It only reads known
keys (a node's credentials cannot list the bucket).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainer import checkpoint
from trainer.artifacts import ArtifactStore, open_store, split_uri
from trainer.errors import CheckpointError, TrainerError


def open_artifact_store(uri: str) -> ArtifactStore:
    """A fresh store for `uri`; an s3:// one uses AWS_ENDPOINT_URL_S3 (path-style) when it is set,
    and boto3's credential chain, read anew each time."""
    return open_store(uri, endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None)


def _one_line(e: BaseException) -> str:
    text = str(e) if isinstance(e, TrainerError) else f"{type(e).__name__}: {e}"
    return " ".join(text.split()) or type(e).__name__


class CheckpointUploadError(TrainerError):
    """The run's last checkpoint could not be stored; its exit code is that of the cause (2 for
    bad input such as access denied or a missing bucket, 1 for an unreachable store)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class _Job:
    path: Path
    step: int
    tokens: int
    val_loss: float | None
    nbytes: int


class CheckpointUploader:
    """One upload thread for the committed checkpoints of a run (rank 0 only)."""

    def __init__(
        self,
        artifact_uri: str,
        log: Callable[..., None],
        progress: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
        opener: Callable[[str], ArtifactStore] | None = None,
    ):
        self.uri = artifact_uri.rstrip("/")
        self._log, self._progress = log, progress
        self._open = opener or open_artifact_store
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: list[str] = []  # folder names queued or being uploaded
        self._errors: dict[int, BaseException | None] = {}  # step -> None (stored) or the failure
        self._thread = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
        self._thread.start()

    def submit(self, path: Path, step: int, tokens: int, val_loss: float | None, nbytes: int) -> None:
        """Queue a committed checkpoint folder; returns at once."""
        with self._lock:
            self._pending.append(path.name)
            self._errors.pop(step, None)
        self._queue.put(_Job(Path(path), step, tokens, val_loss, nbytes))

    def pending(self) -> frozenset[str]:
        """Folder names still queued or being uploaded: pruning must not delete them."""
        with self._lock:
            return frozenset(self._pending)

    def drain(self) -> None:
        """Wait until every queued checkpoint has been uploaded (or has failed)."""
        self._queue.join()

    def require_stored(self, step: int) -> None:
        """After drain(): raise CheckpointUploadError unless the checkpoint of `step` is stored."""
        with self._lock:
            if step not in self._errors:
                return  # never queued: nothing of this process's to lose
            err = self._errors[step]
        if err is not None:
            raise CheckpointUploadError(
                f"the last checkpoint ({checkpoint.step_dir_name(step)}) could not be stored at "
                f"{self.uri}: {_one_line(err)}",
                getattr(err, "exit_code", 1),
            )

    def close(self) -> None:
        """Finish the queued uploads, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._upload(job)
            finally:
                if job is not None:
                    with self._lock:
                        self._pending.remove(job.path.name)
                self._queue.task_done()

    def _upload(self, job: _Job) -> None:
        t0 = time.monotonic()
        try:
            store = self._open(self.uri)  # fresh: re-reads rotated credentials
            store.put_checkpoint(job.path, job.path.name)
            uri = store.uri_of(job.path.name)
        except Exception as e:  # noqa: BLE001 - any failure is reported and training goes on
            with self._lock:
                self._errors[job.step] = e
            self._log("checkpoint_upload_failed", step=job.step, error=_one_line(e))
            self._progress(f"checkpoint {job.path.name} could not be stored: {_one_line(e)}")
            return
        seconds = round(time.monotonic() - t0, 3)
        with self._lock:
            self._errors[job.step] = None
        self._log(
            "checkpoint_stored",
            step=job.step,
            tokens=job.tokens,
            val_loss=job.val_loss,
            bytes=job.nbytes,
            uri=uri,
            seconds=seconds,
        )


def pull_for_resume(uri: str, run_dir: Path) -> Path | None:
    """Rank 0, before load_resume: make the checkpoint at `uri` the run's `latest` unless the run
    dir's own latest checkpoint is at least as new. Returns the pulled folder, or None."""
    _, _, path = split_uri(uri)
    store = open_artifact_store(uri)
    manifest = store.read_manifest("")
    if manifest is None:
        raise CheckpointError(
            f"--resume-from {uri} is not a committed checkpoint (no manifest.json "
            f"there, or not readable with these credentials)"
        )
    step = manifest.get("step")
    if not isinstance(step, int) or step < 0:
        raise CheckpointError(f"--resume-from {uri}: its manifest has no valid step")
    try:
        local = checkpoint.latest(run_dir)
    except CheckpointError:
        local = None  # `latest` names a folder that is gone: the stored checkpoint replaces it
    if local is not None and (checkpoint.step_of(local.name) or 0) >= step:
        return None
    name = path.rstrip("/").rpartition("/")[2]
    if checkpoint.step_of(name) is None:
        name = checkpoint.step_dir_name(step)
    root = run_dir / "checkpoints"
    dest = root / name
    store.get_checkpoint("", dest)  # verified, manifest last, renamed into place
    checkpoint.set_latest(root, name)
    return dest
