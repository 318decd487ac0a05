"""Test loss and bits per byte of a checkpoint (or OpenAI's GPT-2) on a fixed test set.

    python -m trainer.evaluate run/checkpoints/step_001000 --test-set data/fineweb
    python -m trainer.evaluate run --test-set data/fineweb --expect-sha256 5ffe...   # run's latest
    python -m trainer.evaluate hf:gpt2 --hf-dir models/gpt2 --test-set data/fineweb  # OpenAI weights
    python -m trainer.evaluate hf:gpt2 --test-set data/fineweb      # fetched once, then cached
    python -m trainer.evaluate run --test-set data/fineweb --loss-mean book   # the book's number

`hf:NAME` without --hf-dir downloads config.json + model.safetensors of HF_REPOS[NAME] from
HF_ENDPOINT (default https://huggingface.co) into TRAINYARD_HF_CACHE (default
~/.cache/trainyard/hf), see trainer.hf_download; later calls reuse them without a request.

The test set is the `test` split of a prepared folder (or one .bin shard of it), identified by the
SHA-256 of its bytes and its token count; --expect-sha256 refuses any other. It is cut into
consecutive windows of `window` tokens: --seq-len, else the seq_len the checkpoint was trained at
(recorded in its config.json), else (hf: models) the model's context; positions a model was never
trained at are not scored. Every token but the first is predicted exactly once.

    --loss-mean token (default)  test_loss = sum of CE (nats) / predicted tokens, over the whole
                                 split including the last, shorter window
    --loss-mean book             the book's calc_loss_loader: the mean over batches of each batch's
                                 mean CE, over full windows only (the book's dataset makes no
                                 shorter one), batches of --batch-size windows in order, the last
                                 batch possibly smaller

bits_per_byte is always sum(CE) / ln 2 / (UTF-8 bytes of the scored text). --precision fp32 (the
default, on every device) or bf16 (autocast) says how the forward pass runs; the window, the
precision and the mean are recorded in the result, one JSON object printed on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer import checkpoint, hf_download, tokenizer
from trainer.data import DTYPE, SplitTokens, eval_windows, load_manifest
from trainer.errors import CheckpointError, ConfigError, DataError, run_cli
from trainer.model import GPT, GPTConfig, from_hf_pretrained
from trainer.recipe import autocast

HF_REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}


#: how the forward pass of an evaluation runs: fp32, or bf16 autocast (faster on a GPU, and about
#: 0.004 nats away from fp32: a test loss is only compared with one of the same precision)
PRECISIONS = ("fp32", "bf16")
#: the test loss as a token-weighted mean, or as the book's mean of per-batch means
LOSS_MEANS = ("token", "book")


@torch.no_grad()
def cross_entropy_batches(
    model: GPT, tokens, windows: list[tuple[int, int]], batch_size: int, device: torch.device, amp
) -> list[tuple[float, int, int]]:
    """(sum of CE in nats, predicted tokens, their UTF-8 bytes) of each batch, in order. A batch
    is up to batch_size consecutive windows of one length (the last, shorter window alone)."""
    was_training = model.training
    model.eval()
    byte_len = tokenizer.token_byte_lengths()
    out = []
    i = 0
    while i < len(windows):
        length = windows[i][1]
        group = [w for w in windows[i : i + batch_size] if w[1] == length]  # same-length batch
        i += len(group)
        buf = np.stack([tokens.read(s, length + 1) for s, _ in group])  # (B, T+1)
        x = torch.from_numpy(buf[:, :-1]).to(device)  # (B, T)
        y = torch.from_numpy(buf[:, 1:]).to(device)  # (B, T)
        with amp:
            logits, _ = model(x)  # (B, T, V)
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        out.append((nats, y.numel(), int(byte_len[buf[:, 1:]].sum())))
    model.train(was_training)
    return out


def cross_entropy_sum(
    model: GPT, tokens, windows: list[tuple[int, int]], batch_size: int, device: torch.device, amp
) -> tuple[float, int, int]:
    """(sum of CE in nats, number of predicted tokens, their UTF-8 bytes) over the windows."""
    batches = cross_entropy_batches(model, tokens, windows, batch_size, device, amp)
    return sum(b[0] for b in batches), sum(b[1] for b in batches), sum(b[2] for b in batches)


class _ShardTokens:
    """A single .bin shard as a test set (when --test-set names a file)."""

    def __init__(self, path: Path):
        data = path.read_bytes()
        if len(data) % DTYPE.itemsize:
            raise DataError(f"{path} is not a uint16 token shard ({len(data)} bytes)")
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.array = np.frombuffer(data, dtype=DTYPE)

    def __len__(self) -> int:
        return len(self.array)

    def read(self, start: int, n: int) -> np.ndarray:
        return self.array[start : start + n].astype(np.int64)


def open_test_set(path: str | Path):
    p = Path(path)
    if p.is_file():
        return _ShardTokens(p)
    load_manifest(p)  # a clear error when the folder is not prepared data
    return SplitTokens(p, "test", verify_hash=True)


def load_model(spec: str, hf_dir: str | None) -> tuple[GPT, dict]:
    """Our GPT from a checkpoint folder / run folder, or OpenAI's weights for `hf:NAME`.
    info: checkpoint, step, and train_seq_len (the seq_len it was trained at; None when unknown)."""
    if spec.startswith("hf:"):
        name = spec[3:]
        folder = hf_dir
        if folder is None:
            if name not in HF_REPOS:
                raise CheckpointError(
                    f"unknown Hugging Face model {name!r} (known: {', '.join(HF_REPOS)}); pass --hf-dir"
                )
            folder = hf_download.fetch_repo(HF_REPOS[name])
        return from_hf_pretrained(folder), {"checkpoint": spec, "step": None, "train_seq_len": None}
    ckpt = checkpoint.resolve(spec)
    manifest = checkpoint.verify(ckpt)  # before anything is read
    config = checkpoint.read_config(ckpt)
    cfg = GPTConfig(**config["model"])
    cfg.dropout = 0.0
    model = GPT(cfg)
    checkpoint.load_weights(ckpt, model)
    seq_len = (config.get("train") or {}).get("seq_len")
    return model, {
        "checkpoint": str(ckpt),
        "step": manifest["step"],
        "train_seq_len": seq_len if isinstance(seq_len, int) and seq_len > 0 else None,
    }


def _window(seq_len: int | None, info: dict, model: GPT) -> int:
    """--seq-len, else the training seq_len, else the model's context; never past the context."""
    window = seq_len or info["train_seq_len"] or model.config.block_size
    if not 1 <= window <= model.config.block_size:
        raise ConfigError(f"--seq-len {window} must be between 1 and the model's context of {model.config.block_size}")
    return window


def evaluate(
    spec: str,
    test_set: str,
    expect_sha256: str | None = None,
    max_tokens: int | None = None,
    hf_dir: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    seq_len: int | None = None,
    precision: str = "fp32",
    loss_mean: str = "token",
) -> dict:
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if loss_mean not in LOSS_MEANS:
        raise ConfigError(f"--loss-mean must be one of {', '.join(LOSS_MEANS)}, got {loss_mean!r}")
    tokens = open_test_set(test_set)
    if expect_sha256 and tokens.sha256 != expect_sha256.lower():
        raise DataError(
            f"test set {test_set} has sha256 {tokens.sha256}, expected {expect_sha256}: not the same test set"
        )
    if len(tokens) < 2:
        raise DataError(f"test set {test_set} holds {len(tokens)} tokens; nothing to evaluate")
    model, info = load_model(spec, hf_dir)
    window = _window(seq_len, info, model)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    model.to(dev)
    amp = autocast(precision, dev)
    windows = eval_windows(len(tokens), window, max_tokens)
    if loss_mean == "book":
        windows = [w for w in windows if w[1] == window]
        if not windows:
            raise DataError(f"test set {test_set} holds no full window of {window + 1} tokens to score")
    batches = cross_entropy_batches(model, tokens, windows, batch_size, dev, amp)
    nats, count, n_bytes = (sum(b[i] for b in batches) for i in range(3))
    # book: the mean of per-batch means (every batch weighted alike); token: every token alike
    book_mean = sum(b[0] / b[1] for b in batches) / len(batches)
    test_loss = book_mean if loss_mean == "book" else nats / count
    return {
        **info,
        "test_loss": test_loss,
        "loss_mean": loss_mean,
        "window": window,
        "precision": precision,
        "bits_per_byte": nats / math.log(2) / n_bytes,
        "tokens": count,
        "bytes": n_bytes,
        "batch_size": batch_size,
        "test_set": str(test_set),
        "test_set_sha256": tokens.sha256,
        "test_set_tokens": len(tokens),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m trainer.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint", help="checkpoint folder, run folder (its latest), or hf:gpt2 / hf:gpt2-medium")
    ap.add_argument("--test-set", required=True, help="prepared data folder (its test split) or a .bin shard")
    ap.add_argument("--expect-sha256", default=None)
    ap.add_argument("--max-tokens", type=int, default=None, help="score only the first N predictions")
    ap.add_argument(
        "--hf-dir",
        default=None,
        help="local Hugging Face folder for hf: models (default: downloaded from HF_ENDPOINT into TRAINYARD_HF_CACHE)",
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="window length (default: the seq_len the checkpoint was trained at; hf: models, their context)",
    )
    ap.add_argument(
        "--precision", default="fp32", choices=PRECISIONS, help="fp32 (default) or bf16 autocast forward passes"
    )
    ap.add_argument(
        "--loss-mean",
        default="token",
        choices=LOSS_MEANS,
        help="token: token-weighted mean over the whole split (default); book: mean of per-batch means, full windows",
    )
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    args = ap.parse_args(argv)
    result = evaluate(
        args.checkpoint,
        args.test_set,
        args.expect_sha256,
        args.max_tokens,
        args.hf_dir,
        args.batch_size,
        args.device,
        args.seq_len,
        args.precision,
        args.loss_mean,
    )
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
