"""trainer.export: a checkpoint as a Hugging Face GPT-2 folder, checked with the real transformers:
it loads with AutoModelForCausalLM and gives our logits for every combination of our options,
AutoTokenizer gives our tokenizer's ids, what HF's GPT-2 cannot hold is refused with the reason,
and the model card says what the run measured."""

from __future__ import annotations

import json

import pytest
import torch

from trainer import checkpoint, tokenizer
from trainer.errors import CheckpointError, ConfigError
from trainer.export import export_hf, main
from trainer.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")


def _trained_like_checkpoint(
    run_dir, tie: bool = False, qkv_bias: bool = False, model_extra: dict | None = None, vocab_size: int = 50257
):
    """A committed checkpoint of a 2-layer model whose every weight, LayerNorms and biases
    included, is random (a swapped or untransposed tensor changes the logits). No optimizer step:
    the first one costs seconds of torch's lazy imports."""
    torch.manual_seed(int(tie) * 2 + int(qkv_bias))
    cfg = GPTConfig(
        vocab_size=vocab_size,
        block_size=32,
        n_layer=2,
        n_head=2,
        n_embd=32,
        dropout=0.1,
        qkv_bias=qkv_bias,
        tie_weights=tie,
    )
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    opt = torch.optim.AdamW(model.parameters())
    config = {"model": {**vars(cfg), **(model_extra or {})}, "train": {"seq_len": 16}}
    metrics = {"step": 40, "tokens": 40 * 512, "train_loss": 5.1, "val_loss": 5.25}
    path, _ = checkpoint.save(run_dir, 40, 40 * 512, model, opt, {"step": 40}, config, metrics, keep_last=1)
    return path, model.eval()


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("qkv_bias", [False, True], ids=["no-qkv-bias", "qkv-bias"])
def test_transformers_loads_the_export_with_our_logits(tmp_path, tie, qkv_bias):
    ckpt, ours = _trained_like_checkpoint(tmp_path / "run", tie, qkv_bias)
    summary = export_hf(str(tmp_path / "run"), tmp_path / "hf")  # the run folder: its latest
    assert summary["step"] == 40 and summary["tie_word_embeddings"] is tie
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    # an untied head stays untied in the installed transformers (tie_word_embeddings honoured)
    assert (hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()) is tie
    x = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        diff = (ours(x)[0] - hf(x).logits).abs().max().item()
    assert diff < 1e-4
    assert hf.config.n_positions == 32 and hf.config.attn_pdrop == 0.1  # context and trained dropout
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".export-*"))


def test_autotokenizer_gives_our_ids_and_the_card_says_what_the_run_measured(tmp_path):
    _trained_like_checkpoint(tmp_path / "run")
    card = {"run_id": "r-42", "run_name": "book-small", "data": "hf:HuggingFaceFW/fineweb:sample-10BT"}
    card |= {"test_loss": 3.3127, "bits_per_byte": 1.0921, "test_loss_step": 40, "cost_usd": 12.5}
    card |= {"ift_score": 61.5, "ift_ci_low": 55.25, "ift_ci_high": 67.75, "ift_comparison": "c-1"}
    (tmp_path / "card.json").write_text(json.dumps(card))
    ckpt = str(tmp_path / "run" / "checkpoints" / "step_000040")
    assert main([ckpt, "--format", "hf", "--out", str(tmp_path / "hf"), "--card", str(tmp_path / "card.json")]) == 0

    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ("Hello world!", "  two spaces,\ttabs\nand lines 12345", "Grüße, naïve café — 東京 🙂", "don't you've"):
        assert tok(text)["input_ids"] == tokenizer.encode(text)
    assert tok.eos_token_id == tokenizer.EOT and tok.model_max_length == 32

    readme = (tmp_path / "hf" / "README.md").read_text()
    for fact in (
        "# book-small",
        "| run | r-42 (book-small) |",
        "| training data | `hf:HuggingFaceFW/fineweb:sample-10BT` |",
        "| tokens trained | 20,480 |",
        "| validation loss at this step | 5.2500 nats |",
        "| test loss | 3.3127 nats, 1.0921 bits per byte |",
        "| IFT score | 61.5 / 100 (95% CI 55.2 to 67.8)",
        "| cost | US$12.50 (the whole run) |",
        "`tie_word_embeddings: false`",
        "stored as zeros",
    ):
        assert fact in readme, fact
    # a test loss measured on another checkpoint is not passed off as this one's
    (tmp_path / "card.json").write_text(json.dumps({"test_loss": 3.5, "test_loss_step": 80}))
    main([ckpt, "--out", str(tmp_path / "hf2"), "--card", str(tmp_path / "card.json")])
    assert (
        "3.5000 nats (measured on the checkpoint of step 80, not this one)"
        in (tmp_path / "hf2" / "README.md").read_text()
    )


def test_what_hf_gpt2_cannot_hold_is_refused_with_the_reason(tmp_path):
    _trained_like_checkpoint(tmp_path / "small-vocab", vocab_size=1000)
    with pytest.raises(CheckpointError, match=r"vocabulary of 1000 ids, fewer than GPT-2's tokenizer \(50257\)"):
        export_hf(str(tmp_path / "small-vocab"), tmp_path / "a")
    _trained_like_checkpoint(tmp_path / "future", model_extra={"rotary": True})
    with pytest.raises(CheckpointError, match=r"model option\(s\) rotary have no Hugging Face GPT-2 counterpart"):
        export_hf(str(tmp_path / "future"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not list(tmp_path.glob(".tmp-*"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        export_hf(str(tmp_path / "future"), tmp_path / "taken")
    (tmp_path / "card.json").write_text('{"test_los": 3.1}')
    with pytest.raises(ConfigError, match=r"unknown key 'test_los'"):
        main([str(tmp_path / "future"), "--out", str(tmp_path / "c"), "--card", str(tmp_path / "card.json")])


def test_a_checkpoint_in_a_store_is_pulled_verified_and_exported(tmp_path):
    from trainer.artifacts import open_store

    ckpt, _ = _trained_like_checkpoint(tmp_path / "run")
    store_uri = (tmp_path / "store").as_uri()
    open_store(store_uri).put_checkpoint(ckpt, "checkpoints/step_000040")
    summary = export_hf(f"{store_uri}/checkpoints/step_000040", tmp_path / "hf")
    assert summary["step"] == 40 and "model.safetensors" in summary["files"]
    with pytest.raises(CheckpointError, match="not a committed checkpoint"):
        export_hf(f"{store_uri}/checkpoints/step_000009", tmp_path / "none")
