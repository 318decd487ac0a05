"""Prepared data: shards, manifest, splits, sources, and the per-rank reader."""

from __future__ import annotations

import hashlib
import json
import re

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


def _mixed_source(root):
    """A folder of every local format, cut into many pieces of different sizes: JSONL ranges,
    parquet row groups of 7 rows, text files; some documents long, some empty."""
    root.mkdir()
    docs = [f"Document {i}: " + "the yard sorts the trains, " * (1 + (i * 37) % 90) for i in range(240)]
    (root / "a.txt").write_text(docs[0])
    (root / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[1:120]) + '{"text": ""}\n')
    pq.write_table(pa.table({"text": docs[120:239] + [""]}), root / "c.parquet", row_group_size=7)
    (root / "d.md").write_text(docs[239])
    return docs


def _prepared_bytes(out) -> dict:
    """Every shard's bytes and the manifest but its creation time."""
    files = {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["created"]
    return {**files, "manifest.json": json.dumps(manifest, sort_keys=True)}


def test_one_or_two_workers_write_the_same_bytes(tmp_path, monkeypatch):
    from trainer import sources

    monkeypatch.setattr(sources, "PIECE_CHARS", 3000)  # many JSONL pieces, finishing out of order
    docs = _mixed_source(tmp_path / "src")
    options = dict(val_fraction=0.1, test_fraction=0.1, shard_tokens=5000)
    one = prepare(str(tmp_path / "src"), tmp_path / "w1", workers=1, **options)
    prepare(str(tmp_path / "src"), tmp_path / "w2", workers=2, **options)
    assert one["documents"] == 241  # the JSONL's empty text is a document, parquet's is not
    assert one["tokens"] == sum(len(tokenizer.encode(d)) + 1 for d in docs) + 1
    assert len(one["splits"]["train"]["shards"]) > 3
    assert _prepared_bytes(tmp_path / "w1") == _prepared_bytes(tmp_path / "w2")
    # --max-tokens cuts the stream at the same document whatever the worker count
    capped = dict(options, max_tokens=one["tokens"] // 2)
    prepare(str(tmp_path / "src"), tmp_path / "c1", workers=1, **capped)
    prepare(str(tmp_path / "src"), tmp_path / "c2", workers=2, **capped)
    assert _prepared_bytes(tmp_path / "c1") == _prepared_bytes(tmp_path / "c2")
    assert one["tokens"] // 2 - 2000 < json.loads((tmp_path / "c1" / "manifest.json").read_text())["tokens"]


def test_a_bad_jsonl_line_is_named_by_a_worker_too(tmp_path, monkeypatch):
    from trainer import sources

    monkeypatch.setattr(sources, "PIECE_CHARS", 50)
    lines = [json.dumps({"text": f"line {i} " * 5}) for i in range(40)]
    lines[29] = '{"text": "cut off'
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:30 is not valid JSON"):
        prepare(str(tmp_path / "bad.jsonl"), tmp_path / "out", workers=2)


def test_progress_lines_show_documents_tokens_rate_and_eta(tmp_path, monkeypatch):
    from trainer import sources

    monkeypatch.setattr(sources, "PIECE_CHARS", 3000)
    _mixed_source(tmp_path / "src")
    lines: list[str] = []
    m = prepare(str(tmp_path / "src"), tmp_path / "out", workers=2, log=lines.append, progress_every_s=0)
    *running, done = lines
    assert len(running) > 5 and all(line.startswith("prepare: ") for line in lines)
    # the size of local files is known: a share of it and an ETA, rising to 100%
    pattern = r"prepare: ([\d,]+) documents, ([\d,]+) tokens, [\d.]+[KMG]? tokens/s, (\d+)%(, ETA \S+)?$"
    seen = [re.match(pattern, line) for line in running]
    assert all(seen), running
    documents = [int(s.group(1).replace(",", "")) for s in seen]
    percents = [int(s.group(3)) for s in seen]
    assert documents == sorted(documents) and percents == sorted(percents) and percents[-1] == 100
    assert seen[0].group(4) is not None  # an ETA while not done
    assert re.fullmatch(
        rf"prepare: done: 241 documents, {m['tokens']:,} tokens in [\d.]+ s, [\d.]+[KMG]? tokens/s, 2 workers", done
    )


def test_cli_workers_and_progress_options(tmp_path, capsys):
    from trainer.prepare import main

    (tmp_path / "a.txt").write_text("A short text about a train yard. " * 50)
    assert main(["--source", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), "--workers", "2"]) == 0
    assert re.search(r"^prepare: done: 1 documents, [\d,]+ tokens in .*, 2 workers$", capsys.readouterr().err, re.M)
    with pytest.raises(DataError, match=r"^--workers must be at least 1, got 0$"):
        main(["--source", "builtin:corpus", "--out", str(tmp_path / "x"), "--workers", "0"])
