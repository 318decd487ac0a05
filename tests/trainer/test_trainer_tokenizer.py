"""The tokenizer gives GPT-2's ids, offline."""

from __future__ import annotations

import itertools
import json

from transformers import GPT2Tokenizer

from trainer import corpus, tokenizer


def test_known_gpt2_ids():
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode("The quick brown fox jumps over the lazy dog.") == [
        464,
        2068,
        7586,
        21831,
        18045,
        625,
        262,
        16931,
        3290,
        13,
    ]
    assert tokenizer.get_encoding().n_vocab == 50257
    assert tokenizer.get_encoding().eot_token == tokenizer.EOT == 50256


def test_endoftext_in_text_is_not_the_special_token():
    ids = tokenizer.encode("a <|endoftext|> b")
    assert tokenizer.EOT not in ids
    assert tokenizer.decode(ids) == "a <|endoftext|> b"


def test_same_ids_as_an_independent_gpt2_bpe_on_real_text():
    """Hugging Face's GPT-2 BPE (the Rust `tokenizers`), fed the same two files, agrees token for token."""
    d = tokenizer._data_dir()
    vocab = json.loads((d / "encoder.json").read_text())
    merges = [tuple(m.split()) for m in (d / "vocab.bpe").read_text().split("\n")[1:-1]]
    reference = GPT2Tokenizer(vocab=vocab, merges=merges)
    sample = "\n\n".join(itertools.islice(corpus.documents(), 0, 200, 20))
    sample += "\nUnicode: naïve café, 東京, emoji 🙂, tabs\tand   spaces, numbers 3.14159 and 1,000,000."
    ours = tokenizer.encode(sample)
    assert len(ours) > 5000
    assert ours == reference.encode(sample)
    assert tokenizer.decode(ours) == sample


def test_token_byte_lengths_count_utf8_bytes():
    text = "naïve café 東京"
    assert int(tokenizer.token_byte_lengths()[tokenizer.encode(text)].sum()) == len(text.encode("utf-8"))
    assert tokenizer.token_byte_lengths()[tokenizer.EOT] == 0
