"""Checkpoints that are either complete and verified, or not checkpoints at all.

    RUN_DIR/checkpoints/step_000100/   model.safetensors   the unwrapped model (never the DDP/compile wrapper)
                                       optimizer.pt        AdamW state
                                       state.pt            step, tokens, data offset, every rank's RNG states
                                       config.json         {"model": GPTConfig, "train": resolved train config}
                                       metrics.json        the latest train/val metrics
                                       manifest.json       sizes + SHA-256 of the above, written LAST
    RUN_DIR/checkpoints/latest         name of the newest committed folder

Saving writes into `.tmp-step_000100`, fsyncs, writes the manifest, renames the folder into place,
then moves `latest` (write + os.replace). A crash at any point leaves `latest` on the previous
committed checkpoint. Loading verifies every file against the manifest before reading any of them.
Only rank 0 calls save(); every rank may load.

Pruning (keep_last) never deletes the folder `latest` names, nor any folder in `protect`: the
checkpoints still queued for, or being sent by, the upload thread (trainer.upload). A checkpoint
pulled from a store (train --resume-from) is committed with set_latest(), like a saved one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Container

import torch
from safetensors.torch import load_model, save_model

# The manifest helpers live in a torch-free module so the artifact store (and the service) can
# check checkpoints with exactly the same rules without importing torch.
from trainer.artifacts.manifest import FORMAT, MANIFEST, REQUIRED, verify  # used here, and re-exported
from trainer.artifacts.manifest import fsync_file as _fsync_file
from trainer.artifacts.manifest import fsync_write as _fsync_write
from trainer.artifacts.manifest import sha256_file as _sha256
from trainer.errors import CheckpointError

_STEP_DIR = re.compile(r"^step_(\d{6,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def step_of(name: str) -> int | None:
    """The step of a checkpoint folder name (step_000100 -> 100), None for any other name."""
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


def save(
    run_dir: str | Path,
    step: int,
    tokens: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    config: dict,
    metrics: dict,
    keep_last: int,
    protect: Container[str] = (),
) -> tuple[Path, int]:
    """Write and commit a checkpoint; returns (its folder, total bytes). Rank 0 only.
    `protect`: folder names pruning must keep (checkpoints waiting to be uploaded)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = step_dir_name(step)
    final = ckpt_root / name
    size = commit(final, step, tokens, model, optimizer.state_dict(), state, config, metrics)
    set_latest(ckpt_root, name)
    prune(ckpt_root, keep_last, protect)
    return final, size


def commit(
    final: Path,
    step: int,
    tokens: int,
    model: torch.nn.Module,
    optimizer_state: dict,
    state: dict,
    config: dict,
    metrics: dict,
) -> int:
    """Write a committed checkpoint folder at `final`: files into `.tmp-<name>` beside it,
    fsynced, the manifest last, then renamed into place (replacing one already there). Returns
    the bytes of its files. save() for training; the fine-tuned weights of trainer.ift too."""
    tmp = final.parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))  # dedupes a tied head/embedding
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(state, tmp / "state.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    files = {}
    for f in REQUIRED:
        _fsync_file(tmp / f)
        files[f] = {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)}
    manifest = {
        "format": FORMAT,
        "step": step,
        "tokens": tokens,
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _fsync_write(tmp / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    if final.exists():  # a re-save of the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_file(final.parent)
    return sum(v["bytes"] for v in files.values())


def set_latest(ckpt_root: Path, name: str) -> None:
    """Point `latest` at a committed folder of ckpt_root (write + rename: never half-written)."""
    pointer = ckpt_root / ".latest.tmp"
    _fsync_write(pointer, (name + "\n").encode())
    os.replace(pointer, ckpt_root / "latest")
    _fsync_file(ckpt_root)


def committed(ckpt_root: Path) -> list[Path]:
    """Committed checkpoint folders (a manifest present), oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def prune(ckpt_root: Path, keep_last: int, protect: Container[str] = ()) -> None:
    """Delete all but the newest keep_last committed checkpoints (never the one `latest` names,
    nor those named in `protect`)."""
    latest = read_latest_name(ckpt_root)
    for p in committed(ckpt_root)[:-keep_last]:
        if p.name != latest and p.name not in protect:
            shutil.rmtree(p)


def clean_stale(run_dir: str | Path) -> None:
    """Remove half-written `.tmp-*` folders left by a crash during a save. Rank 0, at start."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-") and p.is_dir():
                shutil.rmtree(p)


def read_latest_name(ckpt_root: Path) -> str | None:
    pointer = ckpt_root / "latest"
    if not pointer.is_file():
        return None
    return pointer.read_text().strip() or None


def latest(run_dir: str | Path) -> Path | None:
    """The folder `latest` names, or None for a run that has not committed a checkpoint yet."""
    root = Path(run_dir) / "checkpoints"
    name = read_latest_name(root)
    if name is None:
        return None
    if not _STEP_DIR.match(name):
        raise CheckpointError(f"{root / 'latest'} holds {name!r}, not a checkpoint folder name")
    if not (root / name).is_dir():
        raise CheckpointError(f"{root / 'latest'} names {name}, which does not exist")
    return root / name


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or the latest one of a checkpoints folder or a run folder."""
    p = Path(path)
    if (p / MANIFEST).is_file() or _STEP_DIR.match(p.name):
        return p
    for root in (p, p / "checkpoints"):
        name = read_latest_name(root)
        if name is not None:
            return root / name
    raise CheckpointError(f"{path} is neither a checkpoint folder nor a run with a latest checkpoint")


def read_config(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / "config.json").read_text())


def load_weights(ckpt: Path, model: torch.nn.Module) -> None:
    """Load verified weights into an unwrapped model."""
    try:
        missing, unexpected = load_model(model, str(Path(ckpt) / "model.safetensors"), strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {ckpt}: weights do not fit the model: {str(e).splitlines()[0]}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {ckpt}: weights do not fit the model "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )


def load_training(ckpt: Path, model: torch.nn.Module) -> tuple[dict, dict]:
    """Verify, load the weights into `model`; returns (optimizer state dict, training state), on CPU."""
    verify(ckpt)
    load_weights(ckpt, model)
    try:
        opt_sd = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - verified bytes that still do not unpickle: written by something else
        raise CheckpointError(f"checkpoint {ckpt}: cannot read its state: {e}") from None
    return opt_sd, state
