"""Resuming a run: rank 0 reads the latest checkpoint (pulled from the store first when asked) and
hands the optimizer and training state to the other ranks."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from trainer import checkpoint
from trainer.errors import CheckpointError, ConfigError, DataError, TrainerError
from trainer.model import GPT
from trainer.upload import pull_for_resume


def load_resume(run_dir: Path, raw_model: GPT, optimizer, master: bool, resume_from: str | None = None) -> dict | None:
    """Rank 0 reads the latest checkpoint; the other ranks receive it over the process group.

    Only rank 0 touches the run directory, so nodes need no shared disk and N ranks never read
    the same files at once. With `resume_from` (a store URI), rank 0 first pulls that checkpoint
    and makes it `latest` when the run dir has none as new; the other ranks wait in the broadcast.
    The weights reach the other ranks through DDP, which broadcasts rank 0's parameters when it
    wraps the model; the optimizer and training state go through broadcast_object_list here. A
    checkpoint that fails to pull or verify fails every rank the same way.
    """
    payload: list = [None]
    failure: BaseException | None = None
    if master:
        try:
            pulled = pull_for_resume(resume_from, run_dir) if resume_from else None
            latest = checkpoint.latest(run_dir)
            if latest is not None:
                opt_sd, state = checkpoint.load_training(latest, raw_model)
                payload = [
                    {
                        "checkpoint": latest.name,
                        "optimizer": opt_sd,
                        "state": state,
                        "pulled_from": resume_from if pulled is not None else None,
                    }
                ]
        except Exception as e:  # noqa: BLE001 - every rank must learn of it, not hang in the broadcast
            failure = e
            message = str(e) if isinstance(e, TrainerError) else f"{type(e).__name__}: {e}"
            payload = [{"error": message, "kind": type(e).__name__, "exit_code": getattr(e, "exit_code", 1)}]
    if dist.is_initialized():
        dist.broadcast_object_list(payload, src=0)
    if failure is not None:
        raise failure
    resume = payload[0]
    if resume is None:
        return None
    if "error" in resume:
        err = {"ConfigError": ConfigError, "DataError": DataError}.get(resume["kind"], CheckpointError)(resume["error"])
        err.exit_code = resume.get("exit_code", err.exit_code)
        raise err
    try:
        optimizer.load_state_dict(resume["optimizer"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(
            f"checkpoint {resume['checkpoint']}: optimizer state does not fit this model: {e}"
        ) from None
    return resume
