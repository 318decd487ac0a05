"""A checkpoint as a Hugging Face GPT-2 folder that `transformers` loads as it is.

    python -m trainer.export run/checkpoints/step_001000 --format hf --out models/my-gpt2
    python -m trainer.export run --out models/my-gpt2                 # the run folder's latest
    python -m trainer.export s3://bucket/p/runs/r1/checkpoints/step_001000 --out models/my-gpt2
    python -m trainer.export run --out models/my-gpt2 --card card.json --name my-gpt2

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("models/my-gpt2")
    tokenizer = AutoTokenizer.from_pretrained("models/my-gpt2")

CHECKPOINT is a checkpoint folder, a run or checkpoints folder (its `latest`), or a store URI
(file:// or s3://, pulled and verified first; S3 endpoint from AWS_ENDPOINT_URL_S3). The folder is
written as `.tmp-<name>` beside --out and renamed into place when complete; --out must not exist.

    config.json             GPT2LMHeadModel: n_layer, n_head, n_embd, n_positions = the context,
                            gelu_new, layer_norm_epsilon 1e-5, dropouts = the trained dropout
    model.safetensors       our weights under HF's names; the Linear weights of c_attn, c_proj and
                            c_fc transposed into HF's Conv1D layout (in, out)
    vocab.json, merges.txt  GPT-2's BPE files (the same bytes trainer.tokenizer checks),
    tokenizer_config.json   with <|endoftext|> as bos/eos/unk, so AutoTokenizer loads GPT2Tokenizer
    special_tokens_map.json
    README.md               the model card: architecture, step and tokens trained, validation loss,
                            and what --card adds (run, data, test loss, IFT score, cost)

How our options map onto Hugging Face's GPT-2:
- untied output head (the book's default): `tie_word_embeddings: false` with `lm_head.weight`
  stored; GPT2LMHeadModel then keeps a head of its own (checked against the installed
  transformers by tests/trainer/test_trainer_export.py). A tied head: `true`, stored once.
- no QKV bias (the book's default): HF's Conv1D always has a bias, so zeros are stored: adding
  zero changes nothing, the logits are ours.
- refused, with the reason: a vocabulary smaller than GPT-2's 50257 ids (the tokenizer would give
  ids the model does not have), or a model option trainer.model does not know.

--card FILE: a JSON object with any of CARD_KEYS (`trainyard export` fills it from the service);
an unknown key is refused. Prints one JSON summary line on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer import checkpoint, tokenizer
from trainer.artifacts import ArtifactError, TransferError, split_uri
from trainer.errors import CheckpointError, ConfigError, run_cli
from trainer.model import GPT, GPTConfig, to_hf_state_dict
from trainer.upload import open_artifact_store

FORMATS = ("hf",)
#: what --card may say about the run, each optional
CARD_KEYS = {
    "run_id": str,
    "run_name": str,
    "data": str,  # the run spec's data source
    "test_loss": float,
    "bits_per_byte": float,
    "test_loss_step": int,  # the checkpoint step the test loss was measured on
    "ift_score": float,  # the LLM judge's mean score (0-100) of the run's IFT answers
    "ift_ci_low": float,
    "ift_ci_high": float,
    "ift_comparison": str,
    "cost_usd": float,  # the whole run's cost
}


def hf_config(cfg: GPTConfig, dropout: float) -> dict:
    """config.json of GPT2LMHeadModel for our architecture (refuses what HF's GPT-2 cannot hold)."""
    if cfg.vocab_size < tokenizer.N_VOCAB:
        raise CheckpointError(
            f"the model has a vocabulary of {cfg.vocab_size} ids, fewer than GPT-2's tokenizer "
            f"({tokenizer.N_VOCAB}): the exported tokenizer would give ids the model does not have"
        )
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,  # 4 x n_embd, as ours
        "activation_function": "gelu_new",  # tanh GELU, as ours
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_weights,
        "bos_token_id": tokenizer.EOT,
        "eos_token_id": tokenizer.EOT,
        "use_cache": True,
    }


def hf_weights(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights as GPT2LMHeadModel's state dict: a tied head stored once (as wte), a missing
    QKV bias stored as zeros (HF's Conv1D always adds one)."""
    weights = {k: v.detach().cpu().contiguous() for k, v in to_hf_state_dict(model).items()}
    if model.config.tie_weights:
        del weights["lm_head.weight"]  # the same tensor as transformer.wte.weight
    if not model.config.qkv_bias:
        for i in range(model.config.n_layer):
            weights[f"transformer.h.{i}.attn.c_attn.bias"] = torch.zeros(3 * model.config.n_embd)
    return weights


def load_checkpoint(path: Path) -> tuple[GPT, dict, dict]:
    """(our GPT, the checkpoint's config.json with its metrics.json under "metrics", its
    manifest), verified; refuses model options that have no HF GPT-2 counterpart before building
    anything."""
    ckpt = checkpoint.resolve(path)
    manifest = checkpoint.verify(ckpt)
    config = checkpoint.read_config(ckpt)
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(config.get("model", {})) - known)
    if unknown:
        raise CheckpointError(
            f"checkpoint {ckpt}: model option(s) {', '.join(unknown)} have no Hugging Face GPT-2 "
            f"counterpart (trainer.model knows {', '.join(sorted(known))})"
        )
    model = GPT(GPTConfig(**{**config["model"], "dropout": 0.0}))
    checkpoint.load_weights(ckpt, model)
    metrics = json.loads((ckpt / "metrics.json").read_text())  # verified with the rest
    return model.eval(), {**config, "metrics": metrics if isinstance(metrics, dict) else {}}, manifest


def read_card(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        card = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--card {path}: {e}") from None
    if not isinstance(card, dict):
        raise ConfigError(f"--card {path}: expected a JSON object")
    for key, value in card.items():
        if key not in CARD_KEYS:
            raise ConfigError(f"--card {path}: unknown key {key!r} (known: {', '.join(CARD_KEYS)})")
        want = CARD_KEYS[key]
        ok = value is None or isinstance(value, want) or (want is float and isinstance(value, int))
        if not ok or isinstance(value, bool):
            raise ConfigError(f"--card {path}: {key} must be {want.__name__}, got {value!r}")
    return {k: v for k, v in card.items() if v is not None}


def model_card(name: str, model: GPT, config: dict, manifest: dict, card: dict) -> str:
    """README.md: what the model is, what it was trained on and how good it is, and how to load it."""
    cfg, train = model.config, config.get("train") or {}
    step, tokens = manifest.get("step"), manifest.get("tokens")
    metrics_val = (config.get("metrics") or {}).get("val_loss")
    rows = [("checkpoint", f"step {step:,}" if isinstance(step, int) else "-")]
    if "run_id" in card:
        rows.append(("run", card["run_id"] + (f" ({card['run_name']})" if "run_name" in card else "")))
    rows.append(("training data", f"`{card['data']}`" if "data" in card else "not recorded"))
    rows.append(("tokens trained", f"{tokens:,}" if isinstance(tokens, int) else "not recorded"))
    if train.get("seq_len"):
        rows.append(("trained sequence length", str(train["seq_len"])))
    if metrics_val is not None:
        rows.append(("validation loss at this step", f"{metrics_val:.4f} nats"))
    rows.append(("test loss", _test_loss(card, step)))
    rows.append(("IFT score", _ift(card)))
    rows.append(("cost", f"US${card['cost_usd']:,.2f} (the whole run)" if "cost_usd" in card else "not recorded"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    head = "tied to the token embedding" if cfg.tie_weights else "its own (untied, as in the book's GPT-2)"
    bias = "trained" if cfg.qkv_bias else "none in training; stored as zeros, since HF's Conv1D always has one"
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- gpt2
- trainyard
---

# {name}

A GPT-2 of {model.num_params():,} parameters ({cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd}
wide, a context of {cfg.block_size} tokens) trained with trainyard, exported from its checkpoint.

| | |
|---|---|
{table}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")
model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")
ids = tokenizer("The train yard", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=40, do_sample=True)[0]))
```

## How it maps onto Hugging Face's GPT-2

- Output head: {head} (`tie_word_embeddings: {str(cfg.tie_weights).lower()}`).
- Bias of the attention's query/key/value projection: {bias}.
- The tokenizer is GPT-2's BPE, the same ids as in training. In training data a literal
  `<|endoftext|>` in a text was plain text and the end of every document was token 50256; this
  tokenizer reads a literal `<|endoftext|>` as token 50256, as GPT-2's does.
"""


def _test_loss(card: dict, step: int | None) -> str:
    if "test_loss" not in card:
        return "not measured"
    text = f"{card['test_loss']:.4f} nats"
    if "bits_per_byte" in card:
        text += f", {card['bits_per_byte']:.4f} bits per byte"
    measured = card.get("test_loss_step")
    if measured is not None and measured != step:
        text += f" (measured on the checkpoint of step {measured:,}, not this one)"
    return text


def _ift(card: dict) -> str:
    if "ift_score" not in card:
        return "not judged"
    text = f"{card['ift_score']:.1f} / 100"
    if "ift_ci_low" in card and "ift_ci_high" in card:
        text += f" (95% CI {card['ift_ci_low']:.1f} to {card['ift_ci_high']:.1f})"
    where = f" in comparison {card['ift_comparison']}" if "ift_comparison" in card else ""
    return text + f": the LLM judge's score of the run's instruction-fine-tuned answers{where}"


def _write_tokenizer(folder: Path, context: int) -> None:
    data = tokenizer._data_dir()
    # the same files, checked against the same hashes, that trainer.tokenizer builds its encoding from
    shutil.copyfile(tokenizer._checked(data / "encoder.json", tokenizer.ENCODER_JSON_SHA256), folder / "vocab.json")
    shutil.copyfile(tokenizer._checked(data / "vocab.bpe", tokenizer.VOCAB_BPE_SHA256), folder / "merges.txt")
    special = {"bos_token": tokenizer.ENDOFTEXT, "eos_token": tokenizer.ENDOFTEXT, "unk_token": tokenizer.ENDOFTEXT}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": context,
        "add_prefix_space": False,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        **special,
    }
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", special)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def export_hf(source: str, out: str | Path, card: dict | None = None, name: str | None = None) -> dict:
    """Write the Hugging Face folder `out` from a checkpoint (folder, run folder or store URI)."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} already exists; choose a new folder")
    card = card or {}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent if out.parent.exists() else None) as pulled:
        model, config, manifest = load_checkpoint(_local_checkpoint(source, Path(pulled)))
        hf = hf_config(model.config, float(config["model"].get("dropout", 0.0)))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".tmp-{out.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _write_json(tmp / "config.json", hf)
            save_file(hf_weights(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
            _write_tokenizer(tmp, model.config.block_size)
            title = name or card.get("run_name") or out.name
            (tmp / "README.md").write_text(model_card(title, model, config, manifest, card))
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {
        "out": str(out),
        "format": "hf",
        "step": manifest.get("step"),
        "tokens": manifest.get("tokens"),
        "params": model.num_params(),
        "tie_word_embeddings": model.config.tie_weights,
        "qkv_bias": "trained" if model.config.qkv_bias else "zeros",
        "files": sorted(p.name for p in out.iterdir()),
    }


def _local_checkpoint(source: str, scratch: Path) -> Path:
    """A local checkpoint path for `source`; a store URI is pulled (verified) into `scratch`."""
    if "://" not in source:
        return Path(source)
    try:
        split_uri(source)
        store = open_artifact_store(source)
        dest = scratch / (source.rstrip("/").rpartition("/")[2] or "checkpoint")
        store.get_checkpoint("", dest)
    except TransferError:
        raise  # the store unreachable after retries: exit 1, worth trying again
    except ArtifactError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m trainer.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint", help="checkpoint folder, run folder (its latest), or file:// / s3:// store URI")
    ap.add_argument("--format", default="hf", choices=FORMATS, help="hf: a Hugging Face GPT-2 folder")
    ap.add_argument("--out", required=True, help="the folder to create")
    ap.add_argument(
        "--card", default=None, metavar="FILE", help=f"JSON facts for the model card: {', '.join(CARD_KEYS)}"
    )
    ap.add_argument("--name", default=None, help="the model card's title (default: the run name, else --out's name)")
    args = ap.parse_args(argv)
    print(json.dumps(export_hf(args.checkpoint, args.out, read_card(args.card), args.name)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
