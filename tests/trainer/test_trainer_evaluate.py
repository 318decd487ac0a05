"""Evaluation: test loss and bits per byte over a fixed, hash-identified test set."""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from trainer import tokenizer
from trainer.data import SplitTokens, eval_windows, load_manifest
from trainer.evaluate import evaluate
from trainer.prepare import prepare


def test_checkpoint_evaluation_reports_loss_bpb_and_test_set_identity(tmp_path, corpus_dir, make_checkpoint):
    path = make_checkpoint(tmp_path / "run", step=5)
    r = evaluate(str(tmp_path / "run"), str(corpus_dir), max_tokens=4096)  # run dir -> its latest
    test = load_manifest(corpus_dir)["splits"]["test"]
    assert r["checkpoint"] == str(path) and r["step"] == 5
    assert r["tokens"] == 4096 and r["test_set_tokens"] == test["tokens"]
    assert r["test_set_sha256"] == test["sha256"]
    assert abs(r["test_loss"] - math.log(50257)) < 0.3  # an untrained model is near uniform
    assert r["bits_per_byte"] == r["test_loss"] * r["tokens"] / math.log(2) / r["bytes"]
    assert r["tokens"] > 3 and r["bytes"] > r["tokens"]  # English: ~3.6 bytes per GPT-2 token


def test_full_test_split_scores_every_token_once(tmp_path, make_checkpoint):
    small = tmp_path / "small"
    prepare("builtin:corpus", small, test_fraction=0.1, max_tokens=20_000)
    make_checkpoint(tmp_path / "run")
    r = evaluate(str(tmp_path / "run"), str(small), batch_size=16)
    test = load_manifest(small)["splits"]["test"]
    assert r["tokens"] == test["tokens"] - 1  # every token but the first is predicted
    # the predicted text is the split's text less the first token's bytes
    first = SplitTokens(small, "test").read(0, 1)
    assert r["bytes"] == test["bytes"] - int(tokenizer.token_byte_lengths()[first].sum())


def test_cli_checks_the_expected_hash(tmp_path, corpus_dir, make_checkpoint, run_module):
    path = make_checkpoint(tmp_path / "run")
    sha = load_manifest(corpus_dir)["splits"]["test"]["sha256"]
    wrong = "0" * 64
    r = run_module(
        "trainer.evaluate", str(path), "--test-set", str(corpus_dir), "--expect-sha256", wrong, "--max-tokens", "256"
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: test set")
    assert sha in lines[0] and wrong in lines[0]
    out = tmp_path / "result.json"
    r = run_module(
        "trainer.evaluate",
        str(path),
        "--test-set",
        str(corpus_dir),
        "--expect-sha256",
        sha,
        "--max-tokens",
        "256",
        "--out",
        str(out),
        "--seq-len",
        "32",
        "--precision",
        "bf16",
        "--loss-mean",
        "book",
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert json.loads(out.read_text()) == result and result["tokens"] == 256
    assert (result["window"], result["precision"], result["loss_mean"]) == (32, "bf16", "book")


def test_cli_refuses_a_corrupt_checkpoint(tmp_path, corpus_dir, make_checkpoint, run_module):
    path = make_checkpoint(tmp_path / "run")
    with open(path / "model.safetensors", "r+b") as f:
        f.seek(2000)
        f.write(b"\x00\x01\x02\x03")
    r = run_module("trainer.evaluate", str(path), "--test-set", str(corpus_dir))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: checkpoint {path}: model.safetensors does not match its sha256 (corrupt)"
    assert r.stdout == ""


def test_openai_style_hf_weights_are_scored_like_transformers_does(tmp_path, corpus_dir):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_positions=64, n_embd=64, n_layer=2, n_head=4)).eval()
    hf.save_pretrained(tmp_path / "gpt2")
    r = evaluate("hf:gpt2", str(corpus_dir), hf_dir=str(tmp_path / "gpt2"), max_tokens=1024)
    tokens = SplitTokens(corpus_dir, "test")
    nats = 0.0
    with torch.no_grad():
        for start, length in eval_windows(len(tokens), 64, 1024):
            w = torch.from_numpy(tokens.read(start, length + 1))[None]  # (1, T+1)
            logits = hf(w[:, :-1]).logits  # (1, T, V)
            nats += F.cross_entropy(logits[0], w[0, 1:], reduction="sum").item()
    assert r["tokens"] == 1024
    assert abs(r["test_loss"] - nats / 1024) < 1e-4


def test_a_single_shard_can_be_the_test_set(tmp_path, corpus_dir, make_checkpoint):
    make_checkpoint(tmp_path / "run")
    shard = corpus_dir / load_manifest(corpus_dir)["splits"]["test"]["shards"][0]["file"]
    by_file = evaluate(str(tmp_path / "run"), str(shard), max_tokens=512)
    by_dir = evaluate(str(tmp_path / "run"), str(corpus_dir), max_tokens=512)
    assert by_file["test_loss"] == by_dir["test_loss"]
    assert by_file["test_set_sha256"] == by_dir["test_set_sha256"]  # one shard: same bytes


def test_a_checkpoint_is_scored_at_the_seq_len_it_was_trained_at(tmp_path, corpus_dir, make_checkpoint):
    # gpt2-tiny's defaults: context 256, trained at seq_len 128; positions 128-255 never trained
    make_checkpoint(tmp_path / "run", block_size=256, train={"seq_len": 128})
    default = evaluate(str(tmp_path / "run"), str(corpus_dir), max_tokens=1024)
    at_128 = evaluate(str(tmp_path / "run"), str(corpus_dir), max_tokens=1024, seq_len=128)
    at_256 = evaluate(str(tmp_path / "run"), str(corpus_dir), max_tokens=1024, seq_len=256)
    assert (default["window"], at_128["window"], at_256["window"]) == (128, 128, 256)
    assert default["test_loss"] == at_128["test_loss"] and default["tokens"] == 1024
    assert at_256["test_loss"] != at_128["test_loss"]  # the same tokens, scored with other contexts


def test_precision_is_an_option_and_recorded(tmp_path, corpus_dir, make_checkpoint):
    make_checkpoint(tmp_path / "run")
    fp32 = evaluate(str(tmp_path / "run"), str(corpus_dir), max_tokens=512)
    bf16 = evaluate(str(tmp_path / "run"), str(corpus_dir), max_tokens=512, precision="bf16")
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")  # fp32 unless asked
    assert bf16["test_loss"] != fp32["test_loss"] and abs(bf16["test_loss"] - fp32["test_loss"]) < 0.05


def _books_calc_loss_loader(model, token_ids: torch.Tensor, max_length: int, batch_size: int) -> float:
    """The book's test loss, written from its definitions (ch. 2 GPTDatasetV1 with stride =
    max_length, a DataLoader without shuffling that drops no batch, ch. 5 calc_loss_loader)."""
    inputs, targets = [], []
    for i in range(0, len(token_ids) - max_length, max_length):  # GPTDatasetV1
        inputs.append(token_ids[i : i + max_length])
        targets.append(token_ids[i + 1 : i + max_length + 1])
    dataset = torch.utils.data.TensorDataset(torch.stack(inputs), torch.stack(targets))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False)
    total = 0.0
    with torch.no_grad():
        for input_batch, target_batch in loader:  # calc_loss_batch, summed, then / len(loader)
            logits = model(input_batch)[0]
            total += F.cross_entropy(logits.flatten(0, 1), target_batch.flatten()).item()
    return total / len(loader)


def test_book_loss_mean_is_the_books_calc_loss_loader(tmp_path, corpus_dir, make_checkpoint):
    make_checkpoint(tmp_path / "run")  # context 64
    limit = 21 * 64 + 40  # 21 full windows (batches of 8, 8 and 5) and a short one of 40
    book = evaluate(str(tmp_path / "run"), str(corpus_dir), max_tokens=limit, loss_mean="book")
    token = evaluate(str(tmp_path / "run"), str(corpus_dir), max_tokens=limit)
    ids = torch.from_numpy(SplitTokens(corpus_dir, "test").read(0, limit + 1))
    want = _books_calc_loss_loader(make_checkpoint.last_model.eval(), ids, 64, 8)
    assert (book["loss_mean"], book["tokens"], token["loss_mean"], token["tokens"]) == ("book", 21 * 64, "token", limit)
    assert abs(book["test_loss"] - want) < 1e-5
    assert book["test_loss"] != token["test_loss"]  # not the token-weighted mean
