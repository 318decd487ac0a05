"""Train GPT-2 from scratch: one process, one node with N GPUs, or N nodes.

    # 1 process (CPU or one GPU)
    python -m trainer.train config.yaml --run-dir run

    # 1 node, 8 GPUs
    torchrun --standalone --nproc_per_node=8 -m trainer.train config.yaml --run-dir run

    # 2 nodes x 8 GPUs: run on EVERY node with its own --node_rank (0 on HOST0, 1 on the other).
    # Static rendezvous on HOST0 (node 0's private address), as the controller launches it
    # (provision/launch.py): node rank 0 always holds global rank 0, the rank that writes.
    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=R --master_addr=HOST0 --master_port=29500 \
        --max_restarts=0 -m trainer.train config.yaml --run-dir run

Options: --set key=value overrides a config key (dotted keys reach into model_overrides);
--stop-at-step N stops after step N with a checkpoint, as a preemption would (no DONE file);
a file RUN_DIR/STOP (the service's budget) stops after the current step with a checkpoint, a
`stopped` metrics line and DONE saying "stopped" (trainer.control);
--resume-from URI (a committed checkpoint folder in a file:// or s3:// store) is pulled into the
run directory and resumed from, unless the run directory already holds a checkpoint as new.
A run directory that holds checkpoints/latest is resumed from it, exactly: same batches, same
RNG streams, same optimizer state, so the loss trajectory matches a run that never stopped.

With `artifact_uri` set, rank 0 uploads every committed checkpoint to `<artifact_uri>/<folder>`
on a background thread (trainer.upload) and, before DONE, waits for the uploads: a run whose last
checkpoint could not be stored fails (FAILED, non-zero exit) rather than finish without it.

DDP runs on NCCL (CUDA) or gloo (CPU). Every rank reads its own windows of the prepared data;
only rank 0 writes (run dir, metrics, checkpoints). See docs/trainer-contract.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer import checkpoint
from trainer import config as config_mod
from trainer.artifacts import ArtifactError, split_uri
from trainer.control import stop_asked, stop_reason
from trainer.data import SplitTokens, TrainBatches, eval_windows
from trainer.errors import ConfigError, DataError, TrainerError
from trainer.evaluate import cross_entropy_sum
from trainer.metrics import Metrics, format_progress, peak_flops, peak_memory_bytes, write_json_atomic
from trainer.model import GPT
from trainer.recipe import autocast, backward, clip_and_step, make_optimizer, make_scaler
from trainer.resume import load_resume
from trainer.runtime import all_sum, autotune_micro_batch, init_distributed, rng_state, seed_rank, set_rng_state
from trainer.schema import resolved_dtype
from trainer.upload import CheckpointUploader

# ---------------------------------------------------------------- schedule


def lr_at(tokens: int, tokens_per_step: int, warmup_tokens: int, end_tokens: int, cfg: config_mod.TrainConfig) -> float:
    """LR for the step that starts at `tokens` seen: linear warm-up, then cosine or constant.

    Measured in tokens rather than steps so a run resumed with another world size or micro-batch
    continues the same curve.
    """
    if tokens < warmup_tokens:
        return cfg.lr * (tokens + tokens_per_step) / warmup_tokens
    if cfg.schedule == "constant":
        return cfg.lr
    ratio = min(1.0, (tokens - warmup_tokens) / max(1, end_tokens - warmup_tokens))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


# ---------------------------------------------------------------- the run


def train(
    cfg: config_mod.TrainConfig, run_dir: Path, stop_at_step: int | None = None, resume_from: str | None = None
) -> int:
    rank, local_rank, world, device = init_distributed(cfg.device)
    master = rank == 0
    dtype = resolved_dtype(cfg.dtype, cfg.recipe, device.type == "cuda")
    amp = autocast(dtype, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- data, checked before any model is built: a wrong budget fails in seconds
    train_tokens = SplitTokens(cfg.data_dir, "train")
    val_tokens = SplitTokens(cfg.data_dir, "val") if cfg.eval_every > 0 else None
    target = cfg.target_tokens()
    if target > len(train_tokens) - 1:
        raise DataError(
            f"max_tokens={cfg.max_tokens} ({target:,} tokens) is more than the "
            f"{len(train_tokens) - 1:,} training tokens available in {cfg.data_dir} "
            f"(one epoch, no repeats); lower max_tokens or prepare more data"
        )
    val_windows = []
    if val_tokens is not None:
        val_windows = [w for w in eval_windows(len(val_tokens), cfg.seq_len, cfg.eval_tokens) if w[1] == cfg.seq_len]
        if not val_windows:
            raise DataError(
                f"the val split of {cfg.data_dir} has {len(val_tokens)} tokens, fewer than "
                f"one window of seq_len + 1 = {cfg.seq_len + 1}; set eval_every: 0 or "
                f"prepare more data"
            )

    # ---- model: identical init on every rank (DDP also broadcasts rank 0's weights)
    torch.manual_seed(cfg.seed)
    mcfg = cfg.model_config()
    raw_model = GPT(mcfg).to(device)
    n_params = raw_model.num_params()

    micro_batch = cfg.micro_batch
    if micro_batch == "auto":  # on CPU too (with a small limit): a probe on a CPU node searches as on a GPU
        micro_batch = autotune_micro_batch(raw_model, cfg.seq_len, device, amp)
        if dist.is_initialized():  # every rank runs the smallest value any rank found
            t = torch.tensor([micro_batch], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            micro_batch = int(t.item())

    batches = TrainBatches(train_tokens, cfg.seq_len, micro_batch, cfg.grad_accum, world, rank, device)
    tps = batches.tokens_per_step
    optimizer = make_optimizer(raw_model, cfg, device)
    scaler = make_scaler(dtype, device)  # fp16 (recipe book on a GPU) only

    # ---- resume from RUN_DIR/checkpoints/latest, if there is one
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.clean_stale(run_dir)
        (run_dir / "FAILED").unlink(missing_ok=True)
    step, offset, warmup_tokens, resumed_from = 0, 0, cfg.warmup_steps * tps, None
    last_val, resumed_from_uri = None, None
    resume = load_resume(run_dir, raw_model, optimizer, master, resume_from)
    if resume is not None:
        state = resume["state"]
        resumed_from_uri = resume.get("pulled_from")
        step, offset, resumed_from = state["step"], state["data_offset"], state["step"]
        warmup_tokens, last_val = state["warmup_tokens"], state.get("val_loss")
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if state["world_size"] == world and len(state["rng"]) == world:
            set_rng_state(state["rng"][rank], device)
        else:  # another world size: per-rank streams cannot carry over, derive fresh ones
            seed_rank(cfg.seed, rank, step)
    else:
        seed_rank(cfg.seed, rank)
    tokens_seen = offset  # one epoch from the start of the train split: offset = tokens consumed

    remaining = max(0, (target - tokens_seen) // tps)
    if tokens_seen == 0 and remaining == 0:
        raise ConfigError(
            f"max_tokens={cfg.max_tokens} is smaller than one step of {tps:,} tokens "
            f"(seq_len x micro_batch x grad_accum x world size)"
        )
    if batches.steps_available(offset) < remaining:
        raise DataError(
            f"the train split has {len(train_tokens):,} tokens: too few for "
            f"{remaining} more steps of {tps:,} tokens from offset {offset:,}"
        )
    total_steps = step + remaining
    end_tokens = tokens_seen + remaining * tps

    model = torch.compile(raw_model) if cfg.compile else raw_model
    if dist.is_initialized():
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)

    flops_tok = raw_model.flops_per_token(cfg.seq_len)
    peak = peak_flops(device, dtype, cfg.peak_flops)
    resolved = {
        **cfg.to_dict(),
        "micro_batch": micro_batch,
        "dtype": dtype,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": world,
        "tokens_per_step": tps,
        "target_tokens": target,
        "total_steps": total_steps,
        "params": n_params,
        "model_config": vars(mcfg),
        "flops_per_token": flops_tok,
        "peak_flops": peak,
        "eval_windows": len(val_windows),
        "train_tokens_available": len(train_tokens),
        "train_sha256": train_tokens.sha256,
        "resumed_from_step": resumed_from,
        "resumed_from_uri": resumed_from_uri,
        "torch": torch.__version__,
    }
    metrics = Metrics(run_dir, active=master)
    metrics.step = step
    if master:
        write_json_atomic(run_dir / "config.resolved.json", resolved)
    metrics.log(
        "start",
        world_size=world,
        params=n_params,
        target_tokens=target,
        resumed_from_step=resumed_from,
        resumed_from_uri=resumed_from_uri,
        micro_batch=micro_batch,
        grad_accum=cfg.grad_accum,
        tokens_per_step=tps,
        total_steps=total_steps,
        device=device.type,
        dtype=dtype,
        flops_per_token=flops_tok,
        peak_flops=peak,
    )
    metrics.progress(
        f"training {cfg.model} ({n_params:,} params) on {world} x {device.type}, "
        f"{tps:,} tokens/step, steps {step}->{total_steps}"
        + (f", resumed from step {resumed_from}" if resumed_from is not None else "")
    )

    uploader = None
    if master and cfg.artifact_uri:
        uploader = CheckpointUploader(cfg.artifact_uri, metrics.log, metrics.progress)
        if resume is not None:  # a no-op when the store already holds it, byte for byte
            resumed = run_dir / "checkpoints" / resume["checkpoint"]
            files = json.loads((resumed / checkpoint.MANIFEST).read_text())["files"]  # verified above
            uploader.submit(
                resumed, state["step"], state["tokens"], state.get("val_loss"), sum(f["bytes"] for f in files.values())
            )
    try:

        def run_eval() -> float:
            mine = val_windows[rank::world]
            nats, count, _ = cross_entropy_sum(raw_model, val_tokens, mine, micro_batch, device, amp)
            nats, count = all_sum([nats, count], device)
            return nats / count

        def save(val_loss, last_train) -> None:
            rngs = [None] * world
            if dist.is_initialized():
                dist.all_gather_object(rngs, rng_state(device))
            else:
                rngs = [rng_state(device)]
            if not master:
                return
            state = {
                "step": step,
                "tokens": tokens_seen,
                "data_offset": offset,
                "world_size": world,
                "tokens_per_step": tps,
                "warmup_tokens": warmup_tokens,
                "rng": rngs,
                "val_loss": val_loss,
                "scaler": scaler.state_dict() if scaler is not None else None,
            }
            cfg_json = {"model": vars(mcfg), "train": resolved}
            path, size = checkpoint.save(
                run_dir,
                step,
                tokens_seen,
                raw_model,
                optimizer,
                state,
                cfg_json,
                {"step": step, "tokens": tokens_seen, "train_loss": last_train, "val_loss": val_loss},
                cfg.keep_last,
                uploader.pending() if uploader else (),
            )
            metrics.log(
                "checkpoint",
                step=step,
                tokens=tokens_seen,
                path=str(path.relative_to(run_dir)),
                bytes=size,
                val_loss=val_loss,
            )
            if uploader is not None:
                uploader.submit(path, step, tokens_seen, val_loss, size)

        t_start = time.time()
        if cfg.eval_every > 0 and resumed_from is None:
            last_val = run_eval()
            metrics.log("val", step=step, tokens=tokens_seen, val_loss=last_val)
            metrics.progress(f"step {step}: val loss {last_val:.4f}")

        last_train, saved_step, asked = None, resumed_from, False
        interval_t, interval_steps, loss_sum = time.time(), 0, torch.zeros((), device=device)
        model.train()
        while step < total_steps and (stop_at_step is None or step < stop_at_step) and not asked:
            lr = lr_at(tokens_seen, tps, warmup_tokens, end_tokens, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(cfg.grad_accum):
                x, y = batches.get(offset, micro)  # (B, T), (B, T)
                # gradients are all-reduced only on the last micro-step of the accumulation
                sync = micro == cfg.grad_accum - 1 or not isinstance(model, DDP)
                with contextlib.nullcontext() if sync else model.no_sync():
                    with amp:
                        _, loss = model(x, y)
                    backward(loss / cfg.grad_accum, scaler)
                loss_sum += loss.detach() / cfg.grad_accum
            clip_and_step(model, optimizer, scaler, cfg.grad_clip)
            optimizer.zero_grad(set_to_none=True)
            step, offset, tokens_seen = step + 1, offset + tps, tokens_seen + tps
            interval_steps += 1
            metrics.step = step

            if step % cfg.log_every == 0 or step == total_steps:
                last_train = all_sum([loss_sum.item()], device)[0] / world / interval_steps
                dt = time.time() - interval_t
                tok_s = interval_steps * tps / dt
                mfu = flops_tok * tok_s / (peak * world) if peak else None
                metrics.log(
                    "train",
                    step=step,
                    tokens=tokens_seen,
                    train_loss=last_train,
                    lr=lr,
                    tokens_per_s=tok_s,
                    mfu=mfu,
                    peak_mem_bytes=peak_memory_bytes(device),
                    wall_s=time.time() - t_start,
                )
                metrics.progress(
                    format_progress(step, total_steps, last_train, lr, tok_s, mfu, (total_steps - step) * tps / tok_s)
                )
                interval_steps, loss_sum = 0, torch.zeros((), device=device)
            paused = time.time()
            asked = stop_asked(run_dir, master, device)  # every rank, every step: all stop at one step
            stopping = asked or (stop_at_step is not None and step >= stop_at_step)
            if cfg.eval_every > 0 and (step % cfg.eval_every == 0 or step == total_steps):
                last_val = run_eval()
                metrics.log("val", step=step, tokens=tokens_seen, val_loss=last_val)
                metrics.progress(f"step {step}: val loss {last_val:.4f}")
            if step % cfg.checkpoint_every == 0 or step == total_steps or stopping:
                save(last_val, last_train)
                saved_step = step
            if interval_steps == 0:
                interval_t = time.time()
            else:  # eval and checkpoint time do not count against throughput
                interval_t += time.time() - paused

        if step >= total_steps and saved_step != step:  # resumed from the final checkpoint: no save
            save(last_val, last_train)
        if uploader is not None:
            # the last checkpoint must be in the store before this process ends: the node may be
            # terminated as soon as DONE appears (or, after a stop, as a preemption would)
            waiting = len(uploader.pending())
            if waiting:
                metrics.progress(f"waiting for {waiting} checkpoint upload(s) to {cfg.artifact_uri}")
            uploader.drain()
            uploader.require_stored(step)
            checkpoint.prune(run_dir / "checkpoints", cfg.keep_last)  # those kept for the uploads
        if step < total_steps and asked:  # the service's STOP: a final checkpoint, then DONE
            reason = stop_reason(run_dir) if master else ""
            metrics.log("stopped", step=step, tokens=tokens_seen, reason=reason, wall_s=time.time() - t_start)
            if master:
                done = {"step": step, "tokens": tokens_seen, "stopped": True, "reason": reason}
                write_json_atomic(run_dir / "DONE", done)
            metrics.progress(f"stopped at step {step}: {reason}; remove STOP and DONE, then re-run to resume")
        elif step < total_steps:
            metrics.progress(f"stopped at step {step} as asked (--stop-at-step); re-run to resume")
        else:
            metrics.log("done", step=step, tokens=tokens_seen, wall_s=time.time() - t_start)
            if master:
                write_json_atomic(run_dir / "DONE", {"step": step, "tokens": tokens_seen})
            metrics.progress(f"done: step {step}, {tokens_seen:,} tokens, val loss {last_val}")
        metrics.close()
        return 0
    finally:
        if uploader is not None:
            uploader.close()  # on a failure too: the committed checkpoints still reach the store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m trainer.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("config", help="YAML or JSON train config")
    ap.add_argument("--run-dir", default="run")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--stop-at-step",
        type=int,
        default=None,
        help="stop after this step with a checkpoint (no DONE); re-run to resume",
    )
    ap.add_argument(
        "--resume-from",
        default=None,
        metavar="URI",
        help="a committed checkpoint folder in a store (file:// or s3://): pulled and "
        "resumed from unless the run dir holds a checkpoint at least as new",
    )
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    rank = int(os.environ.get("RANK", 0))
    try:
        cfg = config_mod.load(args.config, args.overrides)
        if args.resume_from is not None:
            try:
                split_uri(args.resume_from)
            except ArtifactError as e:
                raise ConfigError(f"--resume-from: {e}") from None
        return train(cfg, run_dir, args.stop_at_step, args.resume_from)
    except TrainerError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        _record_failure(run_dir, rank, str(e), e.exit_code, type(e).__name__)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - any other failure is recorded for the controller, exit 1
        traceback.print_exc()
        _record_failure(run_dir, rank, f"{type(e).__name__}: {e}", 1, type(e).__name__)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _record_failure(run_dir: Path, rank: int, message: str, code: int, kind: str) -> None:
    """RUN_DIR/FAILED tells the service why, since torchrun turns every failure into exit 1."""
    if rank != 0:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            run_dir / "FAILED", {"time": round(time.time(), 3), "error": message, "exit_code": code, "kind": kind}
        )
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
