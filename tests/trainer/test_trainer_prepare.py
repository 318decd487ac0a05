"""Prepared data: shards, manifest, splits, sources, and the per-rank reader."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trainer import tokenizer
from trainer.data import SplitTokens, TrainBatches, load_manifest
from trainer.errors import DataError
from trainer.prepare import prepare


def test_builtin_corpus_manifest_describes_the_shards(corpus_dir):
    m = load_manifest(corpus_dir)
    assert m["tokenizer"] == {"name": "gpt2", "n_vocab": 50257, "eot": 50256}
    assert m["source"] == "builtin:corpus" and "python" in m["source_detail"]
    splits = m["splits"]
    assert sum(s["tokens"] for s in splits.values()) == m["tokens"] > 400_000
    assert sum(s["documents"] for s in splits.values()) == m["documents"]
    assert 0.03 < splits["test"]["tokens"] / m["tokens"] < 0.07  # asked for 5%
    for info in splits.values():
        data = b"".join((corpus_dir / s["file"]).read_bytes() for s in info["shards"])
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
        tokens = np.frombuffer(data, dtype="<u2")
        assert len(tokens) == info["tokens"]
        # one <|endoftext|> after every document, the last token included
        assert int((tokens == tokenizer.EOT).sum()) == info["documents"] and tokens[-1] == tokenizer.EOT
        # the recorded UTF-8 bytes are those of the text the tokens encode
        assert int(tokenizer.token_byte_lengths()[tokens].sum()) == info["bytes"]
    text = tokenizer.decode(SplitTokens(corpus_dir, "train").read(0, 2000))
    assert " the " in text  # English prose, not binary noise


def test_prepare_is_deterministic_and_idempotent(tmp_path, corpus_dir):
    again = prepare("builtin:corpus", tmp_path / "again", val_fraction=0.05, test_fraction=0.05)
    first = load_manifest(corpus_dir)
    assert {k: v["sha256"] for k, v in again["splits"].items()} == {k: v["sha256"] for k, v in first["splits"].items()}
    # a second run on the same folder with the same options reuses it
    assert (
        prepare("builtin:corpus", tmp_path / "again", val_fraction=0.05, test_fraction=0.05)["created"]
        == again["created"]
    )
    with pytest.raises(DataError, match="already holds data"):
        prepare("builtin:corpus", tmp_path / "again", val_fraction=0.2)


def test_text_jsonl_and_parquet_sources(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    docs = [f"Document number {i} says hello to the world. " * 5 for i in range(30)]
    (src / "a.txt").write_text(docs[0])
    (src / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[1:15]))
    pq.write_table(pa.table({"text": docs[15:]}), src / "c.parquet")
    m = prepare(str(src), tmp_path / "out", val_fraction=0.1, test_fraction=0.1, shard_tokens=300)
    assert m["documents"] == 30
    assert m["tokens"] == sum(len(tokenizer.encode(d)) + 1 for d in docs)
    train = m["splits"]["train"]
    assert len(train["shards"]) > 1 and all(s["tokens"] <= 300 for s in train["shards"])
    # reading across shard boundaries gives the concatenated stream
    split = SplitTokens(tmp_path / "out", "train", verify_hash=True)
    whole = np.concatenate([np.fromfile(tmp_path / "out" / s["file"], dtype="<u2") for s in train["shards"]])
    assert np.array_equal(split.read(250, 200), whole[250:450])


def test_hf_source_streams_through_datasets(tmp_path):
    """The hf: path for real, offline: `datasets` streaming a local dataset folder of parquet."""
    pytest.importorskip("datasets")
    (tmp_path / "ds" / "data").mkdir(parents=True)
    docs = [f"Streamed document {i} about trains and yards." for i in range(40)]
    pq.write_table(pa.table({"text": docs, "id": list(range(40))}), tmp_path / "ds" / "data" / "train-00000.parquet")
    m = prepare(f"hf:{tmp_path / 'ds'}", tmp_path / "out", val_fraction=0.1, test_fraction=0.1)
    assert m["documents"] == 40
    assert m["tokens"] == sum(len(tokenizer.encode(d)) + 1 for d in docs)
    with pytest.raises(DataError, match=r"has no field 'body' \(fields: text, id\)"):
        prepare(f"hf:{tmp_path / 'ds'}", tmp_path / "out2", field="body")


def test_max_tokens_caps_the_prepared_data(tmp_path):
    m = prepare("builtin:corpus", tmp_path / "capped", max_tokens=20_000)
    assert 15_000 < m["tokens"] <= 20_000


def test_bad_jsonl_line_is_named(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 has no string field 'text'"):
        prepare(str(tmp_path / "bad.jsonl"), tmp_path / "out")


def test_cli_reports_bad_source_in_one_line(tmp_path, run_module):
    r = run_module("trainer.prepare", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: source {tmp_path / 'nope'} does not exist (expected a file, a folder, "
        f"builtin:corpus or hf:NAME[:CONFIG])"
    ]


def test_ranks_read_disjoint_windows_that_depend_only_on_the_offset(corpus_dir):
    tokens = SplitTokens(corpus_dir, "train")
    world, accum, B, T, offset = 2, 2, 3, 16, 1000
    pieces = {}
    for rank in range(world):
        b = TrainBatches(tokens, T, B, accum, world, rank, torch.device("cpu"))
        for micro in range(accum):
            x, y = b.get(offset, micro)
            assert x.shape == y.shape == (B, T)
            assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
            assert torch.equal(x, b.get(offset, micro)[0])  # a pure function of the offset
            pieces[(micro * world + rank)] = x.flatten()
    # in (micro, rank) order the ranks' batches tile the step's tokens exactly once
    flat = torch.cat([pieces[k] for k in sorted(pieces)])
    assert flat.tolist() == tokens.read(offset, b.tokens_per_step).tolist()
