"""End to end on this machine (local provider, the embedded file:// artifact store): checkpoints
leave the run directory for the store while the run trains, are recorded with their step, tokens,
validation loss, size and URI, are thinned by retention, listed and downloaded (verified) by the
CLI; prepared data goes to the store's data cache, and the next run on the same data takes it from
there instead of tokenising again.

The real `trainyard serve` process drives the real trainer; the CLI is run as a user runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from orchestrator.db.models import Checkpoint, Evaluation
from orchestrator_helpers import TERMINAL, tiny_spec
from trainer.artifacts import manifest as mf
from trainer.artifacts import open_store


def test_checkpoints_are_stored_while_training_kept_by_retention_downloaded_and_data_is_cached(make_service, tmp_path):
    svc = make_service().start()
    spec = tiny_spec("e2e-store", train_tokens=24576)  # 48 steps of 512 tokens
    spec["training"].update(checkpoint_every=6, keep_last=2, eval_every=6)
    run_id = svc.submit(spec)

    # a checkpoint is in the store while the run is still training, not only at the end
    seen = svc.wait(
        run_id,
        lambda r: r["status"] == "training" and any(c["state"] == "stored" for c in svc.checkpoints(run_id)),
        what="storing checkpoints",
    )
    assert seen["progress"]["step"] < 48
    run = svc.wait(run_id, lambda r: r["status"] in TERMINAL, what="ended")
    assert run["status"] == "succeeded", run["status_reason"]

    items = svc.checkpoints(run_id)
    assert [c["step"] for c in items] == [6, 12, 18, 24, 30, 36, 42, 48]
    store_root = svc.data_dir / "artifacts" / "runs" / run_id / "checkpoints"
    stored = [c for c in items if c["state"] == "stored"]
    best = min((c for c in items if c["val_loss"] is not None), key=lambda c: c["val_loss"])
    # retention: the last 2 and the best; every other one deleted from the store
    assert {c["step"] for c in stored} == {42, 48, best["step"]}
    assert {c["state"] for c in items if c not in stored} == {"deleted"}
    assert open_store(store_root.as_uri()).list_checkpoints() == sorted(Path(c["uri"]).name for c in stored)
    for c in stored:
        assert c["uri"] == (store_root / f"step_{c['step']:06d}").as_uri()
        assert c["tokens"] == c["step"] * 512 and c["bytes"] > 0
    events = "\n".join(e["message"] for e in svc.events(run_id))
    assert "checkpoint of step 6 stored at file://" in events
    assert "retention deleted the stored checkpoint(s) of step" in events
    with svc.db() as s:  # the test loss is recorded against the checkpoint it measured
        (evaluation,) = s.scalars(select(Evaluation).where(Evaluation.run_id == run_id)).all()
        assert s.get(Checkpoint, evaluation.checkpoint_id).step == 48

    listed = svc.cli("checkpoints", run_id, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "stored" in listed.stdout and "deleted" in listed.stdout and str(store_root.as_uri())[:40] in listed.stdout

    got = svc.cli("checkpoints", "download", run_id, "--format", "json", cwd=tmp_path)  # the newest
    assert got.returncode == 0, got.stderr
    summary = json.loads(got.stdout)
    assert (summary["step"], summary["verified"]) == (48, True)
    folder = tmp_path / summary["path"]
    manifest = mf.verify(folder)  # every file's size and SHA-256 against the manifest
    assert manifest["step"] == 48
    assert (folder / "manifest.json").read_bytes() == (store_root / "step_000048" / "manifest.json").read_bytes()

    again = svc.cli("checkpoints", "download", run_id, str(best["step"]), "--out", "best", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert mf.verify(tmp_path / "best")["step"] == best["step"]
    gone = svc.cli("checkpoints", "download", run_id, "6", cwd=tmp_path)
    assert gone.returncode == 4 and "is deleted, not in the artifact store" in gone.stderr
    assert svc.cli("checkpoints", "download", run_id, "48", "--out", "best", cwd=tmp_path).returncode == 2
    assert not list(tmp_path.glob(".tmp-*"))  # nothing half-downloaded is left

    # the data set went to the store's cache; the next run on the same data takes it from there
    second = svc.submit(tiny_spec("e2e-store-2", train_tokens=2048))
    again = svc.wait(second, lambda r: r["status"] in TERMINAL, what="ended")
    assert again["status"] == "succeeded", again["status_reason"]

    def data_events(rid):
        return [e["message"] for e in svc.events(rid) if e["kind"] == "data"]

    assert data_events(run_id) == [
        f"ty-{run_id}-0: the data was prepared from its source and stored in the data cache for later runs"
    ]
    assert data_events(second) == [
        f"ty-{second}-0: the prepared data came from the store's data cache (nothing was tokenised again)"
    ]
    cached = next((svc.data_dir / "artifacts" / "data").iterdir())
    first_data, second_data = (svc.runs_dir / f"ty-{rid}-0" / "data" for rid in (run_id, second))
    for f in sorted(p.name for p in first_data.iterdir()):  # the same shards, byte for byte
        assert (second_data / f).read_bytes() == (first_data / f).read_bytes() == (cached / f).read_bytes()
    assert again["progress"]["test_loss"] is not None  # on the cached test set, pinned by its hash
