"""A run's checkpoints: the list the controller recorded, one checkpoint's manifest read from the
artifact store, and its files streamed from there (the CLI's `checkpoints download` checks every
file against the manifest's SHA-256, so the service passes bytes on without holding them)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator import artifacts
from orchestrator.api.deps import DbDep
from orchestrator.api.limits import StepParam
from orchestrator.db.models import Checkpoint, CheckpointState, best_checkpoint
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.runs import get_run
from trainer.artifacts import ArtifactError, ArtifactStore

router = APIRouter(prefix="/runs/{run_id}/checkpoints", tags=["checkpoints"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such run, checkpoint or file"},
    409: {"description": "the checkpoint is not in the store (not uploaded yet, or deleted)"},
}


#: a checkpoint of the training, or the instruction-fine-tuned weights of the IFT stage
CheckpointKindParam = Annotated[Literal["train", "ift"], Query(description="train (default) or ift")]


class CheckpointOut(BaseModel):
    #: train: committed by the training; ift: the weights the IFT stage fine-tuned from it
    kind: str
    step: int
    tokens: int
    val_loss: float | None
    bytes: int | None
    #: the store URI once stored; before that the node's copy
    uri: str
    #: on_node | stored | deleting | deleted
    state: str
    #: the lowest validation loss of the run's checkpoints (retention keeps it)
    best: bool
    stored_at: datetime | None
    created_at: datetime


class CheckpointList(BaseModel):
    run_id: str
    items: list[CheckpointOut]


class StoredFile(BaseModel):
    name: str
    bytes: int
    sha256: str


class CheckpointDetail(CheckpointOut):
    files: list[StoredFile]
    manifest: dict


def _rows(session: Session, run_id: str) -> list[Checkpoint]:
    get_run(session, run_id)  # 404 for an unknown run
    return list(
        session.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step, Checkpoint.id))
    )


def _out(rows: list[Checkpoint]) -> list[CheckpointOut]:
    best_row = best_checkpoint(r for r in rows if r.state != CheckpointState.deleted.value and r.kind == "train")
    best = best_row.id if best_row is not None else None
    return [
        CheckpointOut(
            kind=r.kind,
            step=r.step,
            tokens=r.tokens,
            val_loss=r.val_loss,
            bytes=r.bytes,
            uri=r.uri,
            state=r.state,
            best=r.id == best,
            stored_at=r.stored_at,
            created_at=r.created_at,
        )
        for r in rows
    ]


def _stored(session: Session, run_id: str, step: int, kind: str = "train") -> tuple[CheckpointOut, str]:
    rows = _rows(session, run_id)
    out = {(o.kind, o.step): o for o in _out(rows)}.get((kind, step))
    if out is None:
        what = "checkpoint" if kind == "train" else f"{kind} checkpoint"
        raise NotFoundError(f"run {run_id} has no {what} of step {step}")
    if out.state != CheckpointState.stored.value:
        raise ConflictError(
            f"the checkpoint of step {step} of run {run_id} is {out.state.replace('_', ' ')}, not in the artifact store"
        )
    return out, out.uri


def _store_and_name(request: Request, uri: str) -> tuple[ArtifactStore, str]:
    parent, name = uri.rstrip("/").rsplit("/", 1)
    return artifacts.open_run_store(request.app.state.settings, parent), name


@router.get("", response_model=CheckpointList, responses={404: _ERRORS[404]})
async def list_checkpoints(run_id: str, db: DbDep) -> CheckpointList:
    """Every checkpoint the run committed, oldest first, with where it is now."""
    rows = await db.read(_rows, run_id)
    return CheckpointList(run_id=run_id, items=_out(rows))


def _read_manifest(store: ArtifactStore, name: str, uri: str) -> dict:
    try:
        manifest = store.read_manifest(name)
    except ArtifactError as exc:
        raise ConflictError(f"cannot read the manifest of {uri}: {exc}") from None
    if manifest is None:
        raise ConflictError(f"{uri} holds no committed checkpoint (no manifest.json)")
    return manifest


@router.get("/{step}", response_model=CheckpointDetail, responses=_ERRORS)
async def get_checkpoint(
    run_id: str, step: StepParam, db: DbDep, request: Request, kind: CheckpointKindParam = "train"
) -> CheckpointDetail:
    """One stored checkpoint with its manifest (every file's size and SHA-256)."""
    out, uri = await db.read(_stored, run_id, step, kind)
    store, name = _store_and_name(request, uri)
    manifest = await anyio.to_thread.run_sync(_read_manifest, store, name, uri)
    files = [
        StoredFile(name=n, bytes=int(f["bytes"]), sha256=str(f["sha256"]))
        for n, f in sorted(manifest.get("files", {}).items())
    ]
    return CheckpointDetail(**out.model_dump(), files=files, manifest=manifest)


@router.get("/{step}/files/{name}", responses=_ERRORS, response_class=StreamingResponse)
async def get_checkpoint_file(
    run_id: str, step: StepParam, name: str, db: DbDep, request: Request, kind: CheckpointKindParam = "train"
) -> StreamingResponse:
    """One file of a stored checkpoint (manifest.json included), as bytes."""
    _out_row, uri = await db.read(_stored, run_id, step, kind)
    store, ckpt = _store_and_name(request, uri)
    manifest = await anyio.to_thread.run_sync(_read_manifest, store, ckpt, uri)
    if name != "manifest.json" and name not in manifest.get("files", {}):
        raise NotFoundError(f"the checkpoint of step {step} has no file {name!r}")
    size = None if name == "manifest.json" else int(manifest["files"][name]["bytes"])
    chunks = store.read_stream(f"{ckpt}/{name}")
    try:  # the first chunk here: a missing object is a 409 now, not a broken stream later
        first = await anyio.to_thread.run_sync(next, chunks, b"")
    except ArtifactError as exc:
        raise ConflictError(str(exc)) from None

    def body() -> Iterator[bytes]:
        yield first
        yield from chunks

    headers = {"Content-Length": str(size)} if size is not None else {}
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)
