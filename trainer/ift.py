"""Instruction fine-tuning (Raschka's book, chapter 7) of a checkpoint, then greedy answers to the test set.

    python -m trainer.ift run/checkpoints/step_001000 --out ift-out
    python -m trainer.ift hf:gpt2-medium --hf-dir models/gpt2-medium --data instruction-data.json --out ift-out
    python -m trainer.ift hf:gpt2-medium --out ift-out     # weights fetched from HF_ENDPOINT, then cached
    python -m trainer.ift run --out ift-out --store s3://bucket/runs/r1/ift   # weights kept in a store

The model is loaded by trainer.evaluate.load_model: a checkpoint, or `hf:NAME` from --hf-dir or
downloaded once (trainer.hf_download: HF_ENDPOINT, TRAINYARD_HF_CACHE).

The data is a JSON list of Alpaca entries {instruction, input, output} (default: the book's
instruction-data.json, downloaded). It is split as the book does, in file order: the first 85%
train, the next 10% test, the rest validation. Each entry becomes the Alpaca prompt plus its
response; batches are padded with <|endoftext|> (50256) and every target but the first
end-of-text is masked with -100, so the model learns to stop but is not trained on padding.

Fine-tuning is AdamW (lr 5e-5, weight decay 0.1), batch 8; validation loss is measured after
every epoch, training stops once it has not fallen for --patience epochs, and the weights of the
best epoch are restored. Then every test item gets a greedy answer (at most --max-new-tokens new
tokens, stopping at end-of-text). Written atomically into OUT_DIR:

    answers.json   [{instruction, input, output (the reference), model_response}], one per test item
    ift_step_N/    the fine-tuned weights (best epoch) as a committed checkpoint of their own
                   (trainer.checkpoint: manifest with SHA-256s written last), N the base
                   checkpoint's step (0 for hf:), so trainer.evaluate and `trainyard checkpoints
                   download` take it like any other; it holds no optimizer state (empty
                   optimizer.pt): it is a result, not a point to resume fine-tuning from
    ift.json       best_epoch, val/train loss per epoch, item counts, checkpoint, seed, settings,
                   and `fine_tuned` {name, path, step, tokens, bytes, uri}: that checkpoint

With --store URI (a file:// or s3:// folder) the checkpoint is uploaded to URI/ift_step_N
(ArtifactStore.put_checkpoint: every file checked, the manifest last) before ift.json is written;
a failed upload fails the command, as a training whose last checkpoint cannot be stored does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import urllib.request
from pathlib import Path
from typing import Callable

import torch

from trainer import checkpoint, tokenizer
from trainer.artifacts import ArtifactError, split_uri
from trainer.errors import ConfigError, DataError, run_cli
from trainer.evaluate import load_model
from trainer.metrics import write_json_atomic
from trainer.model import GPT
from trainer.upload import open_artifact_store

BOOK_DATA_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"
)
KEYS = ("instruction", "input", "output")
PAD = tokenizer.EOT  # the book pads with <|endoftext|> ...
IGNORE = -100  # ... and masks padding targets with cross_entropy's default ignore_index
DOWNLOAD_TIMEOUT_S = 60


# ---- data --------------------------------------------------------------------------------------


def format_input(entry: dict) -> str:
    """The book's Alpaca prompt, without the response; the input section only when there is input."""
    text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    if entry["input"]:
        text += f"\n\n### Input:\n{entry['input']}"
    return text


def format_example(entry: dict) -> str:
    """Prompt plus response: the text the model is fine-tuned on."""
    return format_input(entry) + f"\n\n### Response:\n{entry['output']}"


def read_data(source: str) -> tuple[list[dict], str]:
    """The entries of a local file or an http(s) URL, validated; also the SHA-256 of the bytes."""
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=DOWNLOAD_TIMEOUT_S) as r:
                raw = r.read()
        except OSError as e:
            raise DataError(f"cannot download {source}: {e}") from None
    else:
        try:
            raw = Path(source).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {source}: {e.strerror}") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{source} is not JSON: {e}") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{source} must be a non-empty JSON list of {{instruction, input, output}}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DataError(f"{source}: entry {i} is not an object")
        for key in KEYS:
            if key not in entry:
                raise DataError(f"{source}: entry {i} lacks key {key!r}")
            if not isinstance(entry[key], str):
                raise DataError(f"{source}: entry {i} key {key!r} is not a string")
    return data, hashlib.sha256(raw).hexdigest()


def split_data(data: list) -> tuple[list, list, list]:
    """(train, test, val) in file order, as the book: 85% / 10% / the rest (1,100 -> 935/110/55)."""
    n_train = int(len(data) * 0.85)
    n_test = int(len(data) * 0.1)
    return data[:n_train], data[n_train : n_train + n_test], data[n_train + n_test :]


def collate(batch: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's custom_collate_fn: token lists -> (inputs, targets), each (B, T), T <= max_len.

    Every item gets one end-of-text appended and is padded with more of them to the longest item
    + 1; targets are inputs shifted left by one. All end-of-text targets but the first are masked,
    so the model learns where a response ends without being trained to predict padding.
    """
    longest = max(len(ids) + 1 for ids in batch)
    inputs, targets = [], []
    for ids in batch:
        padded = ids + [PAD] * (longest - len(ids))  # at least one end-of-text
        x = torch.tensor(padded[:-1])  # (longest - 1,)
        y = torch.tensor(padded[1:])  # (longest - 1,)
        pads = torch.nonzero(y == PAD).squeeze(1)
        y[pads[1:]] = IGNORE
        inputs.append(x[:max_len])
        targets.append(y[:max_len])
    return torch.stack(inputs), torch.stack(targets)


def batches(items: list[list[int]], batch_size: int, max_len: int, generator: torch.Generator | None = None):
    """(inputs, targets) batches; shuffled with `generator`, in order without one."""
    order = (
        torch.randperm(len(items), generator=generator).tolist() if generator is not None else list(range(len(items)))
    )
    for i in range(0, len(order), batch_size):
        yield collate([items[j] for j in order[i : i + batch_size]], max_len)


# ---- fine-tuning -------------------------------------------------------------------------------


def snapshot_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights that later training cannot touch.

    model.state_dict() returns references to the live parameter tensors, and optimizer.step()
    updates those in place: a "best" state dict kept without cloning silently follows training,
    and load_state_dict() at the end "restores" the last epoch instead of the best one. That is
    exactly how the user's restore-the-best-epoch failed. Hence detach().clone() of every tensor.
    """
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def mean_loss(model: GPT, items: list[list[int]], batch_size: int, device: torch.device) -> float:
    """The book's calc_loss_loader: mean over batches of the mean masked cross-entropy, in eval mode."""
    was_training = model.training
    model.eval()
    losses = []
    for x, y in batches(items, batch_size, model.config.block_size):
        losses.append(model(x.to(device), y.to(device))[1].item())
    model.train(was_training)
    return sum(losses) / len(losses)


def finetune(
    model: GPT,
    train: list[list[int]],
    val: list[list[int]],
    *,
    epochs_max: int,
    patience: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    val_loss_fn: Callable[[GPT, int], float] | None = None,
    on_epoch: Callable[[int, GPT], None] | None = None,
) -> dict:
    """Train until validation loss has not fallen for `patience` epochs; leave the best epoch loaded.

    val_loss_fn(model, epoch) replaces the measured validation loss (tests use it to script a
    loss curve); on_epoch(epoch, model) is called after each epoch's validation.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)
    best = {"loss": math.inf, "epoch": 0, "state": snapshot_state(model)}
    train_losses, val_losses, stale = [], [], 0
    model.train()
    for epoch in range(1, epochs_max + 1):
        losses = []
        for x, y in batches(train, batch_size, model.config.block_size, generator):
            _, loss = model(x.to(device), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        train_losses.append(sum(losses) / len(losses))
        val_loss = val_loss_fn(model, epoch) if val_loss_fn is not None else mean_loss(model, val, batch_size, device)
        val_losses.append(val_loss)
        print(f"epoch {epoch}: train loss {train_losses[-1]:.4f}, val loss {val_loss:.4f}", flush=True)
        if on_epoch is not None:
            on_epoch(epoch, model)
        if val_loss < best["loss"]:
            best = {"loss": val_loss, "epoch": epoch, "state": snapshot_state(model)}
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best["state"])
    model.eval()
    return {
        "best_epoch": best["epoch"],
        "best_val_loss": best["loss"],
        "epochs_run": len(val_losses),
        "val_losses": val_losses,
        "train_losses": train_losses,
    }


# ---- generation --------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    ids: list[int],
    max_new_tokens: int,
    eos_id: int = tokenizer.EOT,
    device: torch.device | str = "cpu",
) -> list[int]:
    """Greedy decoding: the new token ids (the end-of-text that stops it is not included)."""
    context = model.config.block_size
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -context:])  # (1, T, V): the last `context` tokens, as the book
        next_id = int(logits[0, -1].argmax())
        if next_id == eos_id:
            break
        new.append(next_id)
        idx = torch.cat([idx, torch.tensor([[next_id]], device=device)], dim=1)  # (1, T + 1)
    return new


def answer(model: GPT, entry: dict, max_new_tokens: int, device: torch.device) -> str:
    """The model's response to one entry, extracted as the book does.

    The book prompts with the instruction (and input) only and lets the model write the
    "### Response:" header itself, which it has learned in fine-tuning; the header is removed.
    """
    new = generate(model, tokenizer.encode(format_input(entry)), max_new_tokens, device=device)
    return tokenizer.decode(new).replace("### Response:", "").strip()


# ---- the fine-tuned weights ---------------------------------------------------------------------


def save_fine_tuned(model: GPT, info: dict, settings: dict, out: Path, store: str | None) -> dict:
    """Commit the fine-tuned weights as OUT/ift_step_N (uploaded to STORE/ift_step_N when a store
    is given); returns the `fine_tuned` record of ift.json."""
    step, tokens, base_train = 0, 0, {}
    if info["step"] is not None:  # a checkpoint of ours: keep its step, tokens and train config
        base = Path(info["checkpoint"])
        step, tokens = info["step"], json.loads((base / checkpoint.MANIFEST).read_text())["tokens"]
        base_train = checkpoint.read_config(base).get("train") or {}
    name = f"ift_{checkpoint.step_dir_name(step)}"
    folder = out / name
    config = {"model": vars(model.config), "train": base_train, "ift": {**settings, "base": info["checkpoint"]}}
    metrics = {"step": step, "tokens": tokens, **{k: settings[k] for k in ("best_epoch", "best_val_loss")}}
    state = {"step": step, "tokens": tokens, "ift": True}
    size = checkpoint.commit(folder, step, tokens, model, {}, state, config, metrics)
    uri = None
    if store is not None:
        target = open_artifact_store(store)
        target.put_checkpoint(folder, name)
        uri = target.uri_of(name)
    return {"name": name, "path": str(folder.resolve()), "step": step, "tokens": tokens, "bytes": size, "uri": uri}


# ---- command line ------------------------------------------------------------------------------


def run(
    spec: str,
    data: str,
    out: str | Path,
    *,
    epochs_max: int = 10,
    patience: int = 1,
    batch_size: int = 8,
    lr: float = 5e-5,
    max_new_tokens: int = 256,
    limit_test: int | None = None,
    seed: int = 123,
    hf_dir: str | None = None,
    device: str = "auto",
    store: str | None = None,
    val_loss_fn: Callable[[GPT, int], float] | None = None,
    on_epoch: Callable[[int, GPT], None] | None = None,
) -> dict:
    """Fine-tune, answer the test items, write answers.json, the fine-tuned checkpoint (to
    `store` too) and ift.json; returns the summary."""
    for name, value in (
        ("epochs-max", epochs_max),
        ("patience", patience),
        ("batch-size", batch_size),
        ("max-new-tokens", max_new_tokens),
    ):
        if value < 1:
            raise ConfigError(f"--{name} must be at least 1, got {value}")
    if limit_test is not None and limit_test < 0:
        raise ConfigError(f"--limit-test must be at least 0, got {limit_test}")
    if store is not None:
        try:
            split_uri(store)
        except ArtifactError as e:
            raise ConfigError(f"--store: {e}") from None
    entries, data_sha256 = read_data(data)
    train, test, val = split_data(entries)
    if not train or not val:
        raise DataError(
            f"{data} holds {len(entries)} entries: too few for a train and a validation "
            f"split ({len(train)} train, {len(val)} val)"
        )
    if limit_test is not None:
        test = test[:limit_test]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    model, info = load_model(spec, hf_dir)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    model.to(dev)
    train_ids = [tokenizer.encode(format_example(e)) for e in train]
    val_ids = [tokenizer.encode(format_example(e)) for e in val]
    result = finetune(
        model,
        train_ids,
        val_ids,
        epochs_max=epochs_max,
        patience=patience,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=dev,
        val_loss_fn=val_loss_fn,
        on_epoch=on_epoch,
    )

    answers = [{**{k: e[k] for k in KEYS}, "model_response": answer(model, e, max_new_tokens, dev)} for e in test]
    write_json_atomic(out / "answers.json", answers)
    summary = {
        **result,
        "checkpoint": info["checkpoint"],
        "step": info["step"],
        "data": data,
        "data_sha256": data_sha256,
        "train_items": len(train),
        "val_items": len(val),
        "test_items": len(test),
        "seed": seed,
        "lr": lr,
        "weight_decay": 0.1,
        "batch_size": batch_size,
        "epochs_max": epochs_max,
        "patience": patience,
        "max_new_tokens": max_new_tokens,
    }
    summary["fine_tuned"] = save_fine_tuned(model, info, summary, out, store)
    write_json_atomic(out / "ift.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m trainer.ift", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint", help="checkpoint folder, run folder (its latest), or hf:gpt2 / hf:gpt2-medium")
    ap.add_argument(
        "--data",
        default=BOOK_DATA_URL,
        help="instruction JSON file or http(s) URL (default: the book's instruction-data.json)",
    )
    ap.add_argument("--out", required=True, help="folder for answers.json and ift.json")
    ap.add_argument("--epochs-max", type=int, default=10)
    ap.add_argument("--patience", type=int, default=1, help="epochs without a lower val loss before stopping")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--limit-test", type=int, default=None, help="answer only the first N test items")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument(
        "--hf-dir",
        default=None,
        help="local Hugging Face folder for hf: models (default: downloaded from HF_ENDPOINT into TRAINYARD_HF_CACHE)",
    )
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument(
        "--store",
        default=None,
        metavar="URI",
        help="a file:// or s3:// folder: the fine-tuned checkpoint is uploaded to URI/<its folder name>",
    )
    args = ap.parse_args(argv)
    summary = run(
        args.checkpoint,
        args.data,
        args.out,
        epochs_max=args.epochs_max,
        patience=args.patience,
        batch_size=args.batch_size,
        lr=args.lr,
        max_new_tokens=args.max_new_tokens,
        limit_test=args.limit_test,
        seed=args.seed,
        hf_dir=args.hf_dir,
        device=args.device,
        store=args.store,
    )
    print(json.dumps({k: summary[k] for k in ("best_epoch", "val_losses", "train_items", "test_items")}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
